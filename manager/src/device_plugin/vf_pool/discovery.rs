//! Reading VFs and their health from sysfs. The root is `/sys` on a node
//! ([`DEFAULT_SYSFS_ROOT`]; the device-plugin container mounts the host's `/sys` read-only)
//! and a directory of the same shape in tests ([`fixture`]).
//!
//! A PF is a PCI device with `virtfnN` links (`N` below its `sriov_numvfs` when that file is
//! there); each link names a VF. Of a VF we read `vendor`, `device`, the `driver` link,
//! `numa_node` (the PF's when the VF has none; `-1` is unknown) and the `iommu_group` link;
//! of its PF the first netdev under `net/`. Path and link helpers are heddle-cni's
//! ([`heddle_cni::sriov::sysfs`]), shared with the CNI's own VF lookup.

use std::path::Path;

use heddle_cni::sriov::sysfs::{device_dir, link_name, netdevs, valid_pci_address};

use super::types::{DeviceType, VfError};

/// Where sysfs is mounted on a node.
pub const DEFAULT_SYSFS_ROOT: &str = "/sys";

/// The netdev flag "administratively up" (`IFF_UP` in `net/<name>/flags`).
const IFF_UP: u64 = 0x1;

/// A VF as sysfs shows it to the device plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vf {
    /// The VF's PCI address, `dddd:bb:dd.f`: its device id in the pool.
    pub pci: String,
    /// Its PF's PCI address (what `rootDevices` selects).
    pub pf_pci: String,
    /// Its PF's netdev (what `pfNames` selects); `None` when the PF has none.
    pub pf_name: Option<String>,
    /// The VF's index on its PF (the `N` of the PF's `virtfnN` link).
    pub index: u32,
    /// PCI vendor id, four lowercase hex digits (`8086`).
    pub vendor: Option<String>,
    /// PCI device id, four lowercase hex digits (`154c`).
    pub device: Option<String>,
    /// The bound driver (`iavf`, `mlx5_core`, `vfio-pci`); `None` when unbound.
    pub driver: Option<String>,
    /// NUMA node; `None` when sysfs says `-1` or nothing.
    pub numa_node: Option<u32>,
    /// IOMMU group (the `/dev/vfio/<group>` a vfio-pci VF is opened through).
    pub iommu_group: Option<u32>,
}

impl Vf {
    /// The device type the VF serves as: `vfio-pci` when bound to vfio-pci, `netdevice` when
    /// bound to a kernel network driver, `None` when unbound or held by another userspace
    /// driver (`igb_uio`, `uio_pci_generic`).
    pub fn device_type(&self) -> Option<DeviceType> {
        device_type_of(self.driver.as_deref())
    }
}

fn device_type_of(driver: Option<&str>) -> Option<DeviceType> {
    match driver? {
        "vfio-pci" => Some(DeviceType::VfioPci),
        d if heddle_cni::sriov::sysfs::USERSPACE_DRIVERS.contains(&d) => None,
        _ => Some(DeviceType::Netdevice),
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// `0x8086` -> `8086`.
fn read_pci_id(path: &Path) -> Option<String> {
    let s = read_trimmed(path)?;
    let digits = s.strip_prefix("0x").unwrap_or(&s);
    (digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| digits.to_ascii_lowercase())
}

fn read_numa(dir: &Path) -> Option<Option<u32>> {
    let n: i64 = read_trimmed(&dir.join("numa_node"))?.parse().ok()?;
    Some(u32::try_from(n).ok())
}

/// Every VF of every PF under `sysfs_root`, ordered by PCI address. Fails only when the PCI
/// device list itself cannot be read; a device that vanishes during the scan is skipped.
pub fn discover_vfs(sysfs_root: &Path) -> Result<Vec<Vf>, VfError> {
    let devices = sysfs_root.join("bus/pci/devices");
    let entries = std::fs::read_dir(&devices).map_err(|source| VfError::Sysfs {
        path: devices.clone(),
        source,
    })?;
    let mut vfs = Vec::new();
    for entry in entries.flatten() {
        let pf_pci = entry.file_name().to_string_lossy().into_owned();
        let pf_dir = device_dir(sysfs_root, &pf_pci);
        let numvfs: Option<u32> =
            read_trimmed(&pf_dir.join("sriov_numvfs")).and_then(|s| s.parse().ok());
        let links: Vec<(u32, String)> = std::fs::read_dir(&pf_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let n: u32 = name.strip_prefix("virtfn")?.parse().ok()?;
                let vf = link_name(&e.path())?;
                (numvfs.map_or(true, |max| n < max) && valid_pci_address(&vf)).then_some((n, vf))
            })
            .collect();
        if links.is_empty() {
            continue;
        }
        let pf_name = netdevs(sysfs_root, &pf_pci).into_iter().next();
        let pf_numa = read_numa(&pf_dir).flatten();
        for (index, pci) in links {
            let dir = device_dir(sysfs_root, &pci);
            if !dir.is_dir() {
                continue;
            }
            vfs.push(Vf {
                vendor: read_pci_id(&dir.join("vendor")),
                device: read_pci_id(&dir.join("device")),
                driver: link_name(&dir.join("driver")),
                numa_node: read_numa(&dir).unwrap_or(pf_numa),
                iommu_group: link_name(&dir.join("iommu_group")).and_then(|g| g.parse().ok()),
                pci,
                pf_pci: pf_pci.clone(),
                pf_name: pf_name.clone(),
                index,
            });
        }
    }
    vfs.sort_by(|a, b| a.pci.cmp(&b.pci));
    Ok(vfs)
}

/// A VF's health as `ListAndWatch` reports it, with the reason when it is unhealthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VfHealth {
    /// The kubelet may hand the VF out.
    Healthy,
    /// The kubelet must not hand the VF out; the sentence says why.
    Unhealthy(String),
}

impl VfHealth {
    /// `Healthy` or `Unhealthy`, the strings of the device plugin API.
    pub fn as_str(&self) -> &'static str {
        match self {
            VfHealth::Healthy => heddle_kubelet_api::deviceplugin::HEALTHY,
            VfHealth::Unhealthy(_) => heddle_kubelet_api::deviceplugin::UNHEALTHY,
        }
    }
}

/// Is the netdev whose sysfs directory is `dir` up? `operstate` decides when it says `up` or
/// a down state; when it says `unknown` (drivers without carrier reporting) or is missing,
/// the `IFF_UP` bit of `flags` does. With neither file nothing says it is down.
fn netdev_up(dir: &Path) -> bool {
    match read_trimmed(&dir.join("operstate")).as_deref() {
        Some("up") => true,
        Some("unknown") | None => read_trimmed(&dir.join("flags"))
            .and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
            .map_or(true, |flags| flags & IFF_UP != 0),
        Some(_) => false,
    }
}

/// The health of `vf` now, for a pool of `device_type`: Unhealthy when its PF or the VF
/// itself is gone, its PF's netdev is gone or down, it is no longer bound to a driver of
/// `device_type`, or (vfio-pci) it has no IOMMU group; Healthy otherwise.
pub fn health(sysfs_root: &Path, vf: &Vf, device_type: DeviceType) -> VfHealth {
    let pf_dir = device_dir(sysfs_root, &vf.pf_pci);
    if !pf_dir.is_dir() {
        return VfHealth::Unhealthy(format!("its PF {} is gone", vf.pf_pci));
    }
    let dir = device_dir(sysfs_root, &vf.pci);
    if !dir.is_dir() {
        return VfHealth::Unhealthy(format!(
            "VF {} is gone (sriov_numvfs of PF {} was lowered?)",
            vf.pci, vf.pf_pci
        ));
    }
    if let Some(was) = &vf.pf_name {
        match netdevs(sysfs_root, &vf.pf_pci).into_iter().next() {
            None => {
                return VfHealth::Unhealthy(format!(
                    "its PF {} no longer has a netdev (it was {was})",
                    vf.pf_pci
                ))
            }
            Some(name) if !netdev_up(&pf_dir.join("net").join(&name)) => {
                return VfHealth::Unhealthy(format!("its PF netdev {name} is down"))
            }
            Some(_) => {}
        }
    }
    let driver = link_name(&dir.join("driver"));
    if device_type_of(driver.as_deref()) != Some(device_type) {
        return VfHealth::Unhealthy(format!(
            "VF {} is bound to {}, not to a {} driver",
            vf.pci,
            driver.as_deref().unwrap_or("no driver"),
            device_type.as_str()
        ));
    }
    if device_type == DeviceType::VfioPci && vf.iommu_group.is_none() {
        return VfHealth::Unhealthy(format!(
            "VF {} has no IOMMU group: enable the IOMMU on the kernel command line (intel_iommu=on or amd_iommu=on, iommu=pt)",
            vf.pci
        ));
    }
    VfHealth::Healthy
}

/// Test and demo support: sysfs-shaped trees of SR-IOV PFs and VFs, on top of heddle-cni's
/// [`heddle_cni::sriov::sysfs::fixture`] (which lays out the PF, VF, `physfn`, `virtfnN`,
/// `driver` and `net/` entries) plus what the device plugin reads.
pub mod fixture {
    use std::os::unix::fs::symlink;
    use std::path::Path;

    use heddle_cni::sriov::sysfs::device_dir;

    /// One VF of a [`Pf`].
    #[derive(Debug, Clone, Copy)]
    pub struct FixtureVf<'a> {
        /// PCI address.
        pub pci: &'a str,
        /// Its netdev in the host namespace, if any.
        pub netdev: Option<&'a str>,
        /// The driver it is bound to (`None`: unbound).
        pub driver: Option<&'a str>,
        /// IOMMU group, if any.
        pub iommu_group: Option<u32>,
    }

    /// A PF and its VFs (VF `N` of the list is the PF's `virtfnN`).
    #[derive(Debug, Clone)]
    pub struct Pf<'a> {
        /// PCI address.
        pub pci: &'a str,
        /// Its netdev (created with `operstate` `up` and `flags` `0x1003`).
        pub netdev: &'a str,
        /// `numa_node` of the PF and its VFs (`-1`: unknown).
        pub numa_node: i32,
        /// PCI vendor id of PF and VFs, as sysfs writes it (`0x8086`).
        pub vendor: &'a str,
        /// PCI device id of the VFs (`0x154c`).
        pub vf_device: &'a str,
        /// The VFs.
        pub vfs: Vec<FixtureVf<'a>>,
    }

    /// Writes `pf` under `root` (`bus/pci/devices/...`, `bus/pci/drivers/...`,
    /// `kernel/iommu_groups/...`), with `sriov_numvfs` the number of VFs.
    pub fn create(root: &Path, pf: &Pf<'_>) -> std::io::Result<()> {
        const UNBOUND: &str = "fixture-unbound";
        let vfs: Vec<(&str, Option<&str>, &str)> = pf
            .vfs
            .iter()
            .map(|v| (v.pci, v.netdev, v.driver.unwrap_or(UNBOUND)))
            .collect();
        heddle_cni::sriov::sysfs::fixture::create(root, pf.pci, pf.netdev, &vfs)?;
        let pf_dir = device_dir(root, pf.pci);
        std::fs::write(pf_dir.join("sriov_numvfs"), format!("{}\n", pf.vfs.len()))?;
        std::fs::write(pf_dir.join("sriov_totalvfs"), "64\n")?;
        std::fs::write(pf_dir.join("vendor"), format!("{}\n", pf.vendor))?;
        std::fs::write(pf_dir.join("numa_node"), format!("{}\n", pf.numa_node))?;
        set_netdev_state(root, pf.pci, pf.netdev, "up", 0x1003)?;
        for vf in &pf.vfs {
            let dir = device_dir(root, vf.pci);
            std::fs::write(dir.join("vendor"), format!("{}\n", pf.vendor))?;
            std::fs::write(dir.join("device"), format!("{}\n", pf.vf_device))?;
            std::fs::write(dir.join("numa_node"), format!("{}\n", pf.numa_node))?;
            if vf.driver.is_none() {
                std::fs::remove_file(dir.join("driver"))?;
            }
            if let Some(g) = vf.iommu_group {
                std::fs::create_dir_all(root.join("kernel/iommu_groups").join(g.to_string()))?;
                symlink(
                    format!("../../../../kernel/iommu_groups/{g}"),
                    dir.join("iommu_group"),
                )?;
            }
        }
        Ok(())
    }

    /// Writes `operstate` and `flags` (hex) of netdev `netdev` of PCI device `pci`.
    pub fn set_netdev_state(
        root: &Path,
        pci: &str,
        netdev: &str,
        operstate: &str,
        flags: u64,
    ) -> std::io::Result<()> {
        let dir = device_dir(root, pci).join("net").join(netdev);
        std::fs::write(dir.join("operstate"), format!("{operstate}\n"))?;
        std::fs::write(dir.join("flags"), format!("{flags:#x}\n"))
    }

    /// Re-binds the VF at `pci` to `driver` (replaces its `driver` link).
    pub fn bind(root: &Path, pci: &str, driver: &str) -> std::io::Result<()> {
        let link = device_dir(root, pci).join("driver");
        match std::fs::remove_file(&link) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(root.join("bus/pci/drivers").join(driver))?;
        symlink(format!("../../drivers/{driver}"), link)
    }
}
