//! Helpers for the end-to-end harness in `src/bin/loopback.rs`: peers that are not DPDK
//! test programs (OVS-DPDK), the rounds file, and the paired statistics.

pub mod ovs;
pub mod paired;
pub mod rounds;
