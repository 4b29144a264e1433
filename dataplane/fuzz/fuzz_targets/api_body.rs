//! Arbitrary bytes as the body of `POST /v1/ports` and `PUT /v1/ports/{name}/vlans`, through
//! the daemon's decoding and `validate_port`; see
//! `heddle_dataplane::daemon::fuzz::fuzz_api_body` for the properties it checks.
//!
//! `cargo fuzz run api_body` from `dataplane/` (docs/contributing.md, "Fuzzing").

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    heddle_dataplane::daemon::fuzz::fuzz_api_body(data);
});
