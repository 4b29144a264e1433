//! Per-attachment records on disk (`<stateDir>/<container id>-<ifname>.json`), so DEL, CHECK
//! and GC know what ADD did, and a lock that serialises heddle-cni processes on one node.
//!
//! ADD writes the record (incomplete) *before* its first effect, so a crash part-way leaves a
//! record that the runtime's DEL or a GC cleans up.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{code, CniError};
use crate::key::AttachmentKey;
use crate::lock::lock_file;
use crate::result::CniResult;

/// What one ADD created.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// Network (config `name`), for GC.
    pub network: String,
    /// Interface kind.
    pub kind: String,
    /// The node daemon socket the port lives behind.
    pub switch_socket: PathBuf,
    /// Switch port name.
    #[serde(default)]
    pub port_name: Option<String>,
    /// vhost-user / memif socket.
    #[serde(default)]
    pub socket_path: Option<PathBuf>,
    /// The pod's socket directory (removed when empty). Absent for a device-plugin device,
    /// whose directory belongs to the device plugin.
    #[serde(default)]
    pub socket_dir: Option<PathBuf>,
    /// The device-plugin device (`vhost-user-3`, [`crate::devices`]) whose directory holds
    /// the socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// NPWG device-info file written.
    #[serde(default)]
    pub device_info_file: Option<PathBuf>,
    /// Host end of the veth.
    #[serde(default)]
    pub host_veth: Option<String>,
    /// PCI address of the SR-IOV VF (its allocation says what to restore).
    #[serde(default)]
    pub vf_pci: Option<String>,
    /// Network config as received (replayed to the IPAM plugin on DEL).
    #[serde(default)]
    pub ipam_conf: Option<Value>,
    /// `CNI_PATH` at ADD.
    #[serde(default)]
    pub cni_path: Vec<PathBuf>,
    /// The result ADD returned (absent while ADD runs).
    #[serde(default)]
    pub result: Option<CniResult>,
}

impl Record {
    /// The attachment's key.
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// Holds the node-wide lock until dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Store {
    /// The store in `dir` (created on first use, mode 0700).
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_owned(),
        }
    }

    fn ensure_dir(&self) -> Result<(), CniError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| CniError::io("creating the state directory", &self.dir, e))
    }

    /// Takes the node-wide lock (`flock` on `<dir>/.lock`); waits for other heddle-cni calls.
    pub fn lock(&self) -> Result<Lock, CniError> {
        self.ensure_dir()?;
        Ok(Lock {
            _file: lock_file(&self.dir.join(".lock"))?,
        })
    }

    fn path(&self, key: &AttachmentKey) -> PathBuf {
        self.dir.join(key.record_file())
    }

    /// The record of `key`, if any.
    pub fn read(&self, key: &AttachmentKey) -> Result<Option<Record>, CniError> {
        let path = self.path(key);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                CniError::new(
                    code::DECODING_FAILURE,
                    format!(
                        "the record {} is corrupt: remove it by hand",
                        path.display()
                    ),
                    e.to_string(),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CniError::io("reading", &path, e)),
        }
    }

    /// Writes (atomically: temp file, fsync, rename) the record.
    pub fn write(&self, r: &Record) -> Result<(), CniError> {
        self.ensure_dir()?;
        let path = self.path(&r.key());
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(r).expect("records always serialise");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| CniError::io("writing the record", &path, e))
    }

    /// Removes the record of `key` (no error when it is already gone).
    pub fn remove(&self, key: &AttachmentKey) -> Result<(), CniError> {
        let path = self.path(key);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CniError::io("removing the record", &path, e))
            }
            _ => Ok(()),
        }
    }

    /// Every record in the store.
    pub fn list(&self) -> Result<Vec<Record>, CniError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(CniError::io("listing", &self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "json") {
                if let Ok(r) = std::fs::read(&p)
                    .map_err(|_| ())
                    .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|_| ()))
                {
                    out.push(r);
                }
            }
        }
        out.sort_by_key(Record::key);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(&dir.path().join("state"));
        let _l = store.lock().unwrap();
        let r = Record {
            container_id: "c1".into(),
            ifname: "net1".into(),
            network: "n3".into(),
            ..Default::default()
        };
        assert_eq!(store.read(&r.key()).unwrap(), None);
        store.write(&r).unwrap();
        assert_eq!(store.read(&r.key()).unwrap(), Some(r.clone()));
        assert_eq!(store.list().unwrap(), vec![r.clone()]);
        store.remove(&r.key()).unwrap();
        store.remove(&r.key()).unwrap();
        assert!(store.list().unwrap().is_empty());
    }
}
