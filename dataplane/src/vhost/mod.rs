//! Native vhost-user ports: Heddle's own backend for virtio-net frontends (DPDK virtio-user,
//! QEMU guests).
//!
//! - [`memory`]: the frontend's memory table, mapped into the switch, with bounds-checked
//!   translation of guest-physical and frontend-virtual addresses.
//! - [`virtq`]: the poll-mode split-ring fast path: dequeue (guest TX into switch packets)
//!   and enqueue (switch packets into guest RX buffers), hardened against hostile rings.
//! - [`testing`]: an in-process virtio driver, a heap packet pool and the ring fuzzer, for
//!   tests, fuzzing and benches.
//! - `backend`: the vhost-user protocol (through the `vhost` crate), one thread per
//!   connection, publishing ring setups to the PMD workers without a lock on their side.
//! - `port`: a port's socket in server or client role, with reconnect.

pub mod memory;
pub mod testing;
pub mod virtq;

#[cfg(test)]
mod tests;
