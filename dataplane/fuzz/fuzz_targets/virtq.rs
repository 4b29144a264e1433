//! A split virtqueue built from arbitrary bytes (descriptor table, rings, buffers, feature
//! bits) run through dequeue, enqueue and the notification calls; see
//! `heddle_dataplane::vhost::testing::fuzz_rings` for the invariants it checks.
//!
//! `cargo fuzz run virtq` from `dataplane/` (docs/contributing.md, "Fuzzing").

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    heddle_dataplane::vhost::testing::fuzz_rings(data);
});
