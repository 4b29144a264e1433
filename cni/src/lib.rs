//! `heddle-cni`: the CNI 1.1 plugin that gives pods Heddle interfaces.
//!
//! A call is parse -> pure decision -> effects -> reply:
//! - [`invocation`]: the `CNI_*` environment, checked (code 4);
//! - [`config`]: the network config on stdin, decoded (code 6) and checked (codes 1, 7);
//! - [`plan`]: every name, path and switch port spec, computed without touching the system;
//! - [`plugin`]: ADD, DEL, CHECK, STATUS, GC, VERSION, doing the effects under a node-wide
//!   lock with a [`record`] per attachment written before the first effect;
//! - [`switch`], [`netlink`], [`ipam`]: the node daemon, the kernel and delegated IPAM;
//! - [`sriov`]: SR-IOV VFs (sysfs discovery, PF-side settings, per-VF allocation);
//! - [`handoff`]: which device-plugin device a vhost-user / memif socket goes into;
//! - [`devices`]: where a device-plugin device (a socket directory) lives on the host and in a
//!   container, shared with the device plugin;
//! - [`owner`]: socket owner, group and mode from the config;
//! - [`fuzz`]: the fuzzing entry point for the environment and stdin together;
//! - [`result`] and [`error`]: what goes to stdout, per CNI version.
//!
//! Only the JSON reply goes to stdout; diagnostics go to stderr.

#![deny(missing_docs)]

pub mod config;
pub mod devices;
pub mod error;
pub mod fuzz;
pub mod handoff;
pub mod invocation;
pub mod ipam;
pub mod netlink;
pub mod owner;
pub mod plan;
pub mod plugin;
pub mod record;
pub mod result;
pub mod sriov;
pub mod switch;

pub use error::CniError;
pub use invocation::{Command, Invocation};

#[cfg(test)]
mod tests;
