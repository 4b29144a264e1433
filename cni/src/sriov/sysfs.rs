//! Finding a VF from its PCI address in sysfs: its PF (`physfn`), its index (the PF's
//! `virtfnN` link that points back at it), its netdev (`net/<name>`, none when a userspace
//! driver holds it) and its driver (`driver` link). The root is `/sys` on a node and a
//! directory of the same shape in tests (`HEDDLE_SYSFS_ROOT`).

use std::path::{Path, PathBuf};

use crate::error::CniError;

/// Drivers that take the VF away from the kernel: the pod runs DPDK on it.
pub const USERSPACE_DRIVERS: &[&str] = &["vfio-pci", "uio_pci_generic", "igb_uio"];

/// A VF as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vf {
    /// The VF's PCI address, `dddd:bb:dd.f`.
    pub pci: String,
    /// The PF's PCI address.
    pub pf_pci: String,
    /// The PF's netdev (where VF settings are sent).
    pub pf: String,
    /// The VF's index on the PF (`vf N` in `ip link`).
    pub index: u32,
    /// The VF's netdev in the host namespace, if it has one there.
    pub netdev: Option<String>,
    /// The bound driver (`ixgbevf`, `iavf`, `mlx5_core`, `vfio-pci`, ...).
    pub driver: Option<String>,
}

impl Vf {
    /// A userspace driver (vfio-pci, ...) holds the VF: only PF-side settings apply.
    pub fn is_userspace(&self) -> bool {
        self.driver
            .as_deref()
            .is_some_and(|d| USERSPACE_DRIVERS.contains(&d))
    }
}

/// `dddd:bb:dd.f` in hex, the form device plugins hand over.
pub fn valid_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && hex(0..4)
        && hex(5..7)
        && hex(8..10)
        && (b'0'..=b'7').contains(&b[11])
}

/// The sysfs directory of PCI device `pci` under `root` (`<root>/bus/pci/devices/<pci>`).
pub fn device_dir(root: &Path, pci: &str) -> PathBuf {
    root.join("bus/pci/devices").join(pci)
}

/// The last component of the symlink at `path` (a `driver`, `physfn`, `virtfnN` or
/// `iommu_group` link names its target this way); `None` when it is no symlink.
pub fn link_name(path: &Path) -> Option<String> {
    std::fs::read_link(path)
        .ok()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// The netdevs sysfs lists for the PCI device `pci` (in the namespace sysfs was mounted in).
pub fn netdevs(root: &Path, pci: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(device_dir(root, pci).join("net"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Reads the VF at `pci` under `root` (code 7 when it is not a VF on this node).
pub fn find(root: &Path, pci: &str) -> Result<Vf, CniError> {
    let dir = device_dir(root, pci);
    if !dir.exists() {
        return Err(CniError::config(
            format!("deviceID {pci} is not a PCI device on this node: check the device plugin's resource (sriovdp config) and the pod's resource request"),
            format!("{} does not exist", dir.display()),
        ));
    }
    let pf_pci = link_name(&dir.join("physfn")).ok_or_else(|| {
        CniError::config(
            format!("deviceID {pci} is not an SR-IOV VF (it has no physfn link): hand over a VF, not a PF"),
            format!("{} has no physfn", dir.display()),
        )
    })?;
    let pf_dir = device_dir(root, &pf_pci);
    let index = std::fs::read_dir(&pf_dir)
        .map_err(|e| CniError::io("listing the PF", &pf_dir, e))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u32 = name.strip_prefix("virtfn")?.parse().ok()?;
            (link_name(&e.path())? == pci).then_some(n)
        })
        .next()
        .ok_or_else(|| {
            CniError::config(
                format!("PF {pf_pci} lists no virtfn link to VF {pci}"),
                format!("no virtfnN in {} points at {pci}", pf_dir.display()),
            )
        })?;
    let pf = netdevs(root, &pf_pci).into_iter().next().ok_or_else(|| {
        CniError::config(
            format!("the PF {pf_pci} of VF {pci} has no netdev in the host namespace: VF settings go through the PF's netdev"),
            format!("{} is empty", pf_dir.join("net").display()),
        )
    })?;
    Ok(Vf {
        pci: pci.to_owned(),
        pf_pci,
        pf,
        index,
        netdev: netdevs(root, pci).into_iter().next(),
        driver: link_name(&dir.join("driver")),
    })
}

/// Test and demo support: a sysfs-shaped tree with one PF and its VFs.
pub mod fixture {
    use std::os::unix::fs::symlink;
    use std::path::Path;

    /// Creates `bus/pci/devices/<pf>` with `net/<pf_netdev>` and, for each `(vf address,
    /// netdev or None, driver)`, the VF's directory with `physfn`, `driver`, `net/<netdev>`
    /// and the PF's `virtfnN` link (N in list order).
    pub fn create(
        root: &Path,
        pf: &str,
        pf_netdev: &str,
        vfs: &[(&str, Option<&str>, &str)],
    ) -> std::io::Result<()> {
        let devices = root.join("bus/pci/devices");
        let drivers = root.join("bus/pci/drivers");
        std::fs::create_dir_all(devices.join(pf).join("net").join(pf_netdev))?;
        for (n, (vf, netdev, driver)) in vfs.iter().enumerate() {
            let d = devices.join(vf);
            std::fs::create_dir_all(&d)?;
            std::fs::create_dir_all(drivers.join(driver))?;
            symlink(format!("../{pf}"), d.join("physfn"))?;
            symlink(format!("../../drivers/{driver}"), d.join("driver"))?;
            if let Some(netdev) = netdev {
                std::fs::create_dir_all(d.join("net").join(netdev))?;
            }
            symlink(
                format!("../{vf}"),
                devices.join(pf).join(format!("virtfn{n}")),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vf_is_found_with_its_pf_index_netdev_and_driver() {
        let root = tempfile::tempdir().unwrap();
        fixture::create(
            root.path(),
            "0000:03:00.0",
            "ens1f0",
            &[
                ("0000:03:02.0", Some("ens1f0v0"), "ixgbevf"),
                ("0000:03:02.1", None, "vfio-pci"),
            ],
        )
        .unwrap();
        let vf = find(root.path(), "0000:03:02.1").unwrap();
        assert_eq!(vf.pf, "ens1f0");
        assert_eq!(vf.pf_pci, "0000:03:00.0");
        assert_eq!(vf.index, 1);
        assert_eq!(vf.netdev, None);
        assert!(vf.is_userspace());
        let vf = find(root.path(), "0000:03:02.0").unwrap();
        assert_eq!(
            (vf.index, vf.netdev.as_deref(), vf.is_userspace()),
            (0, Some("ens1f0v0"), false)
        );
        assert_eq!(find(root.path(), "0000:03:00.0").unwrap_err().code, 7);
        assert_eq!(find(root.path(), "0000:09:00.0").unwrap_err().code, 7);
    }

    #[test]
    fn pci_addresses() {
        assert!(valid_pci_address("0000:03:02.1"));
        assert!(valid_pci_address("0000:af:10.7"));
        for bad in [
            "03:02.1",
            "0000:03:02.8",
            "0000:03:02.1/../x",
            "0000-03:02.1",
            "",
        ] {
            assert!(!valid_pci_address(bad), "{bad}");
        }
    }
}
