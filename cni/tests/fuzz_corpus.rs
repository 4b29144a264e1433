//! Replays the committed corpus of the cargo-fuzz target in `cni/fuzz` through the function
//! it calls, on the stable toolchain and without libFuzzer (docs/contributing.md,
//! "Fuzzing").

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_call_corpus_file_passes_the_fuzz_checks() {
    let files = corpus("call");
    assert!(!files.is_empty(), "cni/fuzz/corpus/call is empty");
    for path in &files {
        let data = std::fs::read(path).unwrap();
        if std::panic::catch_unwind(|| heddle_cni::fuzz::fuzz_call(&data)).is_err() {
            panic!("{} fails fuzz_call", path.display());
        }
    }
    eprintln!("replayed {} corpus files", files.len());
}
