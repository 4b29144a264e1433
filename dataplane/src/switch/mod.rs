//! The VLAN-aware learning bridge: parsing, FDB, forwarding decisions, batching.
//! Pure Rust over the [`io`] traits; nothing here touches DPDK directly.

pub mod io;
