//! Replays the committed corpora of the cargo-fuzz targets in `manager/fuzz` through the
//! functions they call, on the stable toolchain and without libFuzzer
//! (docs/contributing.md, "Fuzzing").

use std::path::{Path, PathBuf};

/// A fuzz target's entry point.
type Target = fn(&[u8]);

/// Every target in `fuzz/Cargo.toml` and the function it calls.
const TARGETS: &[(&str, Target)] = &[
    ("ipam_stdin", heddle_manager::fuzz::fuzz_ipam_stdin),
    (
        "device_plugin_config",
        heddle_manager::fuzz::fuzz_device_plugin_config,
    ),
];

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
fn every_fuzz_target_has_a_corpus_and_every_file_passes() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml"))
            .unwrap();
    let declared = manifest.matches("[[bin]]").count();
    assert_eq!(
        declared,
        TARGETS.len(),
        "fuzz/Cargo.toml targets vs. TARGETS"
    );
    let mut files = 0;
    for (name, run) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} is not in fuzz/Cargo.toml"
        );
        let corpus = corpus(name);
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} is empty");
        for path in corpus {
            let data = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                panic!("{name}: {} fails its target", path.display());
            }
            files += 1;
        }
    }
    eprintln!("replayed {files} corpus files");
}
