//! What heddle-cni saves of a host netdev to put it back later (an SR-IOV VF's name, MAC,
//! MTU and up/down state before its first pod). A plain value: [`crate::netlink`] reads it,
//! [`crate::sriov::alloc`] stores it.

use serde::{Deserialize, Serialize};

/// A netdev's state, saved to be put back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetdevState {
    /// Name in the host namespace.
    pub name: String,
    /// MAC.
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
}
