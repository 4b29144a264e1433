//! Native vhost-user ports: Heddle's own backend for virtio-net frontends (DPDK virtio-user,
//! QEMU guests).
//!
//! - [`memory`]: the frontend's memory table, mapped into the switch, with bounds-checked
//!   translation of guest-physical and frontend-virtual addresses.
//! - [`virtq`]: the poll-mode split-ring fast path: dequeue (guest TX into switch packets)
//!   and enqueue (switch packets into guest RX buffers), hardened against hostile rings.
//! - [`packed`]: the packed-ring (virtio 1.1) fast path, same interfaces and rules;
//!   [`queue`]: one running queue in either layout.
//! - [`device`]: the vhost-user protocol state (messages parsed and validated by the `vhost`
//!   crate): features, memory table, when each vring starts and stops.
//! - [`inflight`]: in-flight tracking (`INFLIGHT_SHMFD`): the shared record of descriptors
//!   taken and not yet returned, and how a restarted switch resumes from it.
//! - [`ring`]: how a running vring passes to the PMD workers without a lock on their side.
//! - [`port`]: a port's socket in server or client role, with reconnect, one thread each.
//! - `testing` (feature `testing`): an in-process virtio driver, a heap packet pool and the
//!   ring fuzzer, for tests, fuzzing and benches; `packed_testing` (feature `testing`): the
//!   same for packed rings; `fuzz` (feature `testing`): the protocol fuzzer's entry point.

pub mod device;
#[cfg(any(test, feature = "testing"))]
pub mod fuzz;
pub mod inflight;
pub mod layout;
pub mod memory;
pub mod packed;
#[cfg(any(test, feature = "testing"))]
pub mod packed_testing;
pub mod port;
pub mod queue;
pub mod ring;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod virtq;

#[cfg(test)]
mod packed_tests;
#[cfg(test)]
mod tests;
