//! Arbitrary bytes as the switch's YAML config, through `DaemonConfig::parse`; see
//! `heddle_dataplane::daemon::fuzz::fuzz_config` for the properties it checks.
//!
//! `cargo fuzz run config` from `dataplane/` (docs/contributing.md, "Fuzzing").

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    heddle_dataplane::daemon::fuzz::fuzz_config(data);
});
