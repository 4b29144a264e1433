//! The node daemon's control API: JSON types, a small blocking Unix-socket client, and the
//! `heddlectl` command built on them. Links no DPDK, so the CNI and the CLI stay small.

pub mod client;
pub mod types;

pub use client::{Client, ClientError, DEFAULT_SOCKET};
pub use types::*;
