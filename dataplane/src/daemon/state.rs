//! The port table on disk: ports added through the API survive a daemon restart.
//!
//! One JSON file, replaced atomically (write a temporary file, fsync, rename, fsync the
//! directory), so a crash at any point leaves either the old or the new table.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use heddle_api::PortSpec;
use serde::{Deserialize, Serialize};

const FILE: &str = "ports.json";

#[derive(Debug, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    ports: Vec<PortSpec>,
}

/// The persisted port table.
#[derive(Debug)]
pub struct PortStore {
    dir: PathBuf,
}

impl PortStore {
    /// A store in `dir`, created (mode 0700) when missing.
    pub fn open(dir: &Path) -> std::io::Result<PortStore> {
        fs::create_dir_all(dir)?;
        Ok(PortStore {
            dir: dir.to_owned(),
        })
    }

    /// The file path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Ports saved last time; none when the file does not exist yet.
    pub fn load(&self) -> Result<Vec<PortSpec>, String> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot read port table {}: {e}", path.display())),
        };
        let disk: OnDisk = serde_json::from_str(&text).map_err(|e| {
            format!(
                "port table {} is corrupt ({e}): move it aside to start without the API-added ports",
                path.display()
            )
        })?;
        Ok(disk.ports)
    }

    /// Replaces the saved table.
    pub fn save(&self, ports: &[PortSpec]) -> std::io::Result<()> {
        let disk = OnDisk {
            version: 1,
            ports: ports.to_vec(),
        };
        let tmp = self.dir.join(format!(".{FILE}.tmp"));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&disk).expect("port specs serialise"))?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.path())?;
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heddle_api::PortMode;

    #[test]
    fn saves_and_loads_and_reports_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = PortStore::open(dir.path()).unwrap();
        assert!(store.load().unwrap().is_empty());
        let spec = PortSpec {
            name: "p".into(),
            devargs: "net_null0".into(),
            mode: PortMode::Access { vlan: 7 },
            mac: None,
            queues: None,
            mtu: None,
        };
        store.save(std::slice::from_ref(&spec)).unwrap();
        assert_eq!(store.load().unwrap(), vec![spec]);
        fs::write(store.path(), "{").unwrap();
        assert!(store.load().unwrap_err().contains("corrupt"));
    }
}
