//! Heddle's switching core, in pure Rust: nothing here links DPDK, so it builds and tests on
//! any Linux machine with a Rust toolchain alone.
//!
//! - [`switch`]: the VLAN-aware learning bridge (parsing, FDB, forwarding decisions,
//!   batching) over the [`switch::io`] traits.
//! - [`vhost`]: the native vhost-user device, its split virtqueues and the guest memory
//!   they live in, and how running rings pass to the PMD workers.
//! - [`memif`]: native memif ports (switch as master): the control protocol, the peer's
//!   shared memory and its rings, hardened against a hostile peer.
//! - [`prefetch`]: the cache prefetch hints the fast path uses.
//! - [`sync`]: the atomics under the lock-free protocols (loom's in the model-checking build).
//!
//! `heddle-dataplane` puts these over DPDK mbufs and ethdevs and runs them in the
//! `heddle-switch` daemon; it re-exports both modules under its own name.

pub mod handover;
pub mod memif;
pub mod prefetch;
pub mod switch;
pub mod sync;
pub mod vhost;
