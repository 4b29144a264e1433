//! Arbitrary bytes from a memif slave, through the control-message parser into Heddle's
//! memif session, and the rings a `CONNECT` yields run over memory the input shaped; see
//! `heddle_dataplane::memif::fuzz::fuzz_protocol`.
//!
//! `cargo fuzz run memif_protocol` from `dataplane/` (docs/contributing.md, "Fuzzing").

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    heddle_dataplane::memif::fuzz::fuzz_protocol(data);
});
