//! A packed virtqueue (virtio 1.1) built from arbitrary bytes (descriptor ring with any
//! avail/used flags, ids and wrap counters, the driver event area, buffers, feature bits) run
//! through dequeue, enqueue and the notification calls; see
//! `heddle_dataplane::vhost::packed_testing::fuzz_packed` for the invariants it checks.
//!
//! `cargo fuzz run virtq_packed` from `dataplane/` (docs/contributing.md, "Fuzzing").

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    heddle_dataplane::vhost::packed_testing::fuzz_packed(data);
});
