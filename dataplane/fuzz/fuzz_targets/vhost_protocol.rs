//! Arbitrary bytes from a vhost-user frontend, through the `vhost` crate's message parser
//! into Heddle's device state; see `heddle_dataplane::vhost::fuzz::fuzz_protocol`.
//!
//! `cargo fuzz run vhost_protocol` from `dataplane/` (docs/contributing.md, "Fuzzing").

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    heddle_dataplane::vhost::fuzz::fuzz_protocol(data);
});
