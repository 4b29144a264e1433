//! Heddle's dataplane: safe DPDK wrappers, the DPDK side of the switch's I/O, PMD workers
//! and the node daemon behind `heddle-switch`. The switch pipeline and the vhost-user device
//! live in the DPDK-free `heddle-core` crate, re-exported here as [`switch`] and [`vhost`].

pub mod daemon;
pub mod dpdk;

/// The switching core ([`heddle_core`]), re-exported so `heddle_dataplane::switch` and
/// `heddle_dataplane::vhost` keep naming it.
pub use heddle_core::{memif, switch, vhost};
