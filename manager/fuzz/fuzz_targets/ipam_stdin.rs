//! Arbitrary bytes as heddle-ipam's stdin; see `heddle_manager::fuzz::fuzz_ipam_stdin` for
//! the properties it checks.
//!
//! `cargo fuzz run ipam_stdin` from `manager/` (docs/contributing.md, "Fuzzing").

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    heddle_manager::fuzz::fuzz_ipam_stdin(data);
});
