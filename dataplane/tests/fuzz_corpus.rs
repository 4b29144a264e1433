//! Replays the committed corpus of every cargo-fuzz target in `dataplane/fuzz` through the
//! function the target calls, on the stable toolchain and without libFuzzer: seeds, and the
//! reproducers of everything the fuzzers found (docs/contributing.md, "Fuzzing").

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A fuzz target's entry point.
type Target = fn(&[u8]);

/// Every target in `fuzz/Cargo.toml` and the function it calls.
const TARGETS: &[(&str, Target)] = &[
    (
        "vhost_protocol",
        heddle_dataplane::vhost::fuzz::fuzz_protocol,
    ),
    ("virtq", heddle_dataplane::vhost::testing::fuzz_rings),
    (
        "virtq_packed",
        heddle_dataplane::vhost::packed_testing::fuzz_packed,
    ),
    ("api_body", heddle_dataplane::daemon::fuzz::fuzz_api_body),
    ("config", heddle_dataplane::daemon::fuzz::fuzz_config),
    (
        "memif_protocol",
        heddle_dataplane::memif::fuzz::fuzz_protocol,
    ),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The `[[bin]]` names of the fuzz crate's manifest.
fn declared_targets() -> Vec<String> {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(name) = line.strip_prefix("name = ") {
                out.push(name.trim_matches('"').to_owned());
            }
        }
    }
    out
}

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_fuzz_target_has_a_replayed_corpus() {
    let mut declared = declared_targets();
    declared.sort();
    let mut replayed: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    replayed.sort();
    assert_eq!(
        declared, replayed,
        "fuzz/Cargo.toml targets vs. this test's TARGETS"
    );
    for (name, _) in TARGETS {
        assert!(!corpus(name).is_empty(), "fuzz/corpus/{name} is empty");
    }
}

/// Each file runs on a thread with a deadline, so an input that hangs (as the
/// GET_FEATURES flood once did) fails the test instead of stalling the suite.
#[test]
fn every_corpus_file_passes_its_target() {
    let mut files = 0;
    for (name, run) in TARGETS {
        for path in corpus(name) {
            let data = std::fs::read(&path).unwrap();
            let (tx, rx) = mpsc::channel();
            let run = *run;
            let started = Instant::now();
            std::thread::spawn(move || {
                let outcome = std::panic::catch_unwind(|| run(&data));
                let _ = tx.send(outcome.is_ok());
            });
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(true) => {}
                Ok(false) => panic!("{name}: {} fails its target", path.display()),
                Err(_) => panic!(
                    "{name}: {} did not finish in {:?}",
                    path.display(),
                    started.elapsed()
                ),
            }
            files += 1;
        }
    }
    eprintln!("replayed {files} corpus files");
}
