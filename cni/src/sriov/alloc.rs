//! Who holds a VF: `<stateDir>/sriov/<pci>.json` (the allocation) under `flock` on
//! `<stateDir>/sriov/<pci>.lock`. The allocation also keeps the VF's state from before its
//! first pod, so a pod that takes over a VF from a dead one still restores the original.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::settings::VfSettings;
use crate::error::{code, CniError};
use crate::lock::lock_file;
use crate::netdev::NetdevState;

/// The attachment holding a VF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holder {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_NETNS` at ADD.
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

impl Holder {
    /// The holder's pod is gone: its netns file no longer exists.
    pub fn is_gone(&self) -> bool {
        !matches!(&self.netns, Some(p) if p.exists())
    }
}

/// One VF's allocation record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// The VF's PCI address.
    pub pci: String,
    /// PF netdev.
    pub pf: String,
    /// VF index on the PF.
    pub vf_index: u32,
    /// Who holds it.
    pub holder: Holder,
    /// The netdev's host state before the first pod (absent for a userspace-driver VF).
    #[serde(default)]
    pub netdev: Option<NetdevState>,
    /// PF-side settings before the first pod (only those a pod changed).
    #[serde(default)]
    pub pf_settings: VfSettings,
    /// Temporary host name while the netdev moves (`hv<12 hex>`).
    pub tmp_name: String,
}

/// The allocation records of one state directory.
#[derive(Debug, Clone)]
pub struct Allocations {
    dir: PathBuf,
}

/// Holds one VF's lock until dropped.
#[derive(Debug)]
pub struct VfLock {
    _file: File,
}

impl Allocations {
    /// The records under `<state_dir>/sriov`.
    pub fn new(state_dir: &Path) -> Allocations {
        Allocations {
            dir: state_dir.join("sriov"),
        }
    }

    /// Takes the lock of VF `pci` (waits for another heddle-cni working on it).
    pub fn lock(&self, pci: &str) -> Result<VfLock, CniError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| CniError::io("creating", &self.dir, e))?;
        let file = lock_file(&self.dir.join(format!("{pci}.lock")))?;
        Ok(VfLock { _file: file })
    }

    fn path(&self, pci: &str) -> PathBuf {
        self.dir.join(format!("{pci}.json"))
    }

    /// The allocation of `pci`, if any. Call with its lock held.
    pub fn read(&self, pci: &str, _lock: &VfLock) -> Result<Option<Allocation>, CniError> {
        let path = self.path(pci);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                CniError::new(
                    code::DECODING_FAILURE,
                    format!(
                        "the VF allocation {} is corrupt: remove it by hand",
                        path.display()
                    ),
                    e.to_string(),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CniError::io("reading", &path, e)),
        }
    }

    /// Writes the allocation atomically. Call with its lock held.
    pub fn write(&self, a: &Allocation, _lock: &VfLock) -> Result<(), CniError> {
        let path = self.path(&a.pci);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(a).expect("allocations serialise");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| CniError::io("writing the VF allocation", &path, e))
    }

    /// Removes the allocation. Call with its lock held. The lock file stays: unlinking it
    /// while another call waits on it would let two calls lock different files.
    pub fn remove(&self, pci: &str, _lock: &VfLock) -> Result<(), CniError> {
        let path = self.path(pci);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CniError::io("removing the VF allocation", &path, e))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_remove_under_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let allocs = Allocations::new(dir.path());
        let lock = allocs.lock("0000:03:02.0").unwrap();
        assert_eq!(allocs.read("0000:03:02.0", &lock).unwrap(), None);
        let a = Allocation {
            pci: "0000:03:02.0".into(),
            pf: "ens1f0".into(),
            vf_index: 0,
            holder: Holder {
                container_id: "c1".into(),
                ifname: "net1".into(),
                netns: Some("/nonexistent/ns".into()),
            },
            netdev: Some(NetdevState {
                name: "ens1f0v0".into(),
                mac: [2, 0, 0, 0, 0, 1],
                mtu: 1500,
                up: false,
            }),
            pf_settings: VfSettings {
                vlan: Some(0),
                ..Default::default()
            },
            tmp_name: "hv0123456789ab".into(),
        };
        allocs.write(&a, &lock).unwrap();
        let back = allocs.read("0000:03:02.0", &lock).unwrap().unwrap();
        assert_eq!(back, a);
        assert!(back.holder.is_gone());
        allocs.remove("0000:03:02.0", &lock).unwrap();
        allocs.remove("0000:03:02.0", &lock).unwrap();
        assert_eq!(allocs.read("0000:03:02.0", &lock).unwrap(), None);
    }
}
