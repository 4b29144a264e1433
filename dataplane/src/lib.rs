//! Heddle's dataplane: safe DPDK wrappers, the switch pipeline, PMD workers and the node
//! daemon behind `heddle-switch`.

pub mod daemon;
pub mod dpdk;
pub mod switch;
pub mod sync;
pub mod vhost;
