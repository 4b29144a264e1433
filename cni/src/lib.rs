//! `heddle-cni`: the CNI 1.1 plugin that gives pods Heddle interfaces.
//!
//! A call is parse -> pure decision -> effects -> reply:
//! - [`invocation`]: the `CNI_*` environment, checked (code 4);
//! - [`config`]: the network config on stdin, decoded (code 6) and checked (codes 1, 7);
//! - [`plan`]: what every kind's plan shares (key, MAC, a socket's place), no I/O;
//! - [`attach`]: one module per attachment kind (vhost-user, memif, kernel, sriov), each
//!   behind one interface: plan (pure), apply, undo, check;
//! - [`plugin`]: ADD, DEL, CHECK, STATUS, GC, VERSION, running a kind's effects under a
//!   node-wide lock with a [`record`] per attachment written before the first effect;
//! - [`switch`], [`netlink`], [`ipam`]: the node daemon, the kernel and delegated IPAM;
//! - [`sriov`]: SR-IOV VFs (sysfs discovery, PF-side settings, per-VF allocation);
//! - [`key`], [`netdev`], [`lock`]: the attachment key and names derived from it, a saved
//!   netdev state, lock files;
//! - [`handoff`]: which device-plugin device a vhost-user / memif socket goes into;
//! - [`devices`]: where a device-plugin device (a socket directory) lives on the host and in a
//!   container, shared with the device plugin;
//! - [`owner`]: socket owner, group and mode from the config;
//! - [`fuzz`]: the fuzzing entry point for the environment and stdin together;
//! - [`result`] and [`error`]: what goes to stdout, per CNI version.
//!
//! Only the JSON reply goes to stdout; diagnostics go to stderr.
//!
//! Modules only use modules below them: pure types and parsing (`error`, `key`, `netdev`,
//! `invocation`, `devices`, `result`, `sriov::settings`, `sriov::conf`, `config`, `plan`) at
//! the bottom, I/O above (`lock`, `record`, `netlink`, `switch`, `ipam`, `handoff`, `sriov`),
//! the kinds (`attach`) over those, the commands (`plugin`) on top. The `module_layers` test
//! of heddle-tests fails on an import cycle.

#![deny(missing_docs)]

pub mod attach;
pub mod config;
pub mod devices;
pub mod error;
pub mod fuzz;
pub mod handoff;
pub mod invocation;
pub mod ipam;
pub mod key;
pub mod lock;
pub mod netdev;
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
