//! Arbitrary bytes as a heddle-cni call: `KEY=VALUE` environment lines, a NUL, then stdin;
//! see `heddle_cni::fuzz::fuzz_call` for the properties it checks.
//!
//! `cargo fuzz run call` from `cni/` (docs/contributing.md, "Fuzzing").

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    heddle_cni::fuzz::fuzz_call(data);
});
