//! The VLAN-aware learning bridge: parsing, FDB, forwarding decisions, batching.
//! Pure Rust over the [`io`] traits; nothing here touches DPDK directly.

pub mod config;
pub mod counters;
pub mod fdb;
pub mod io;
pub mod pipeline;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod vlan;

#[cfg(test)]
mod tests;
