//! The pool's error and device type, below discovery and the pool that use them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything that can go wrong with a VF pool.
#[derive(Debug, thiserror::Error)]
pub enum VfError {
    /// A pool's config is wrong; each problem is a sentence naming the fix.
    #[error("VF pool {resource:?}: {}", problems.join("; "))]
    InvalidPool {
        /// The pool's `resourceName` (as written).
        resource: String,
        /// What is wrong, one sentence each.
        problems: Vec<String>,
    },
    /// Two pools share a `resourceName`.
    #[error("resourceName {0:?} is used by more than one VF pool: give each pool its own name")]
    DuplicateResource(String),
    /// sysfs could not be read.
    #[error("cannot read {}: {source}; mount the host's /sys into the device-plugin container (read-only)", path.display())]
    Sysfs {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The kubelet named a device the pool does not have.
    #[error("{id} is not a VF of pool {resource}: the kubelet may only allocate devices the plugin listed")]
    NotInPool {
        /// The pool.
        resource: String,
        /// The unknown device id.
        id: String,
    },
    /// An allocation request that cannot be served as asked.
    #[error("pool {resource}: {reason}")]
    BadRequest {
        /// The pool.
        resource: String,
        /// What is wrong with the request.
        reason: String,
    },
    /// A vfio-pci VF without an IOMMU group cannot be opened through `/dev/vfio`.
    #[error("VF {id} is bound to vfio-pci but has no IOMMU group: enable the IOMMU on the kernel command line (intel_iommu=on or amd_iommu=on, iommu=pt)")]
    NoIommuGroup {
        /// The VF.
        id: String,
    },
}

/// How a pool's VFs reach the pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceType {
    /// A VF bound to its kernel driver: heddle-cni moves its netdev into the pod.
    #[default]
    Netdevice,
    /// A VF bound to vfio-pci: the pod drives it from userspace (DPDK) through `/dev/vfio`.
    VfioPci,
}

impl DeviceType {
    /// `netdevice` or `vfio-pci`, as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceType::Netdevice => "netdevice",
            DeviceType::VfioPci => "vfio-pci",
        }
    }
}

impl TryFrom<String> for DeviceType {
    type Error = String;
    fn try_from(s: String) -> Result<DeviceType, String> {
        match s.as_str() {
            "netdevice" => Ok(DeviceType::Netdevice),
            "vfio-pci" => Ok(DeviceType::VfioPci),
            _ => Err(format!(
                "deviceType {s:?} is unknown: use netdevice (VFs bound to their kernel driver) or vfio-pci (VFs bound to vfio-pci, for DPDK in the pod)"
            )),
        }
    }
}

impl From<DeviceType> for String {
    fn from(t: DeviceType) -> String {
        t.as_str().to_owned()
    }
}
