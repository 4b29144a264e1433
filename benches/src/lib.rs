//! Helpers for the end-to-end harness in `src/bin/loopback.rs`: peers that are not DPDK
//! test programs (OVS-DPDK).

pub mod ovs;
