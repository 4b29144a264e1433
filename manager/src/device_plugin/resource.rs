//! One device-plugin resource: what it lists, what `Allocate` answers, which devices it
//! prefers. A [`Resource`] is either a set of socket devices (vhost-user or memif,
//! [`SocketResource`]) or an SR-IOV VF pool ([`VfPoolResource`], on top of
//! [`super::vf_pool`]); the gRPC service ([`super::service`]) only talks to this enum.

use std::collections::HashSet;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use heddle_cni::devices::{self, DeviceKind};
use heddle_kubelet_api::deviceplugin::{
    ContainerAllocateResponse, Device, Mount, NumaNode, TopologyInfo, HEALTHY, UNHEALTHY,
};

use super::switch_view::SwitchView;
use super::vf_pool::{PoolDevices, VfPool};

/// Mode of a device directory: root writes (the switch creates the socket there), the pod
/// reads and searches it to reach the socket.
pub const DEVICE_DIR_MODE: u32 = 0o755;

/// A resource the plugin serves.
pub enum Resource {
    /// vhost-user or memif sockets.
    Sockets(SocketResource),
    /// SR-IOV VFs (boxed: the pool's config and discovered VFs are much larger).
    VfPool(Box<VfPoolResource>),
}

impl Resource {
    /// The extended resource name.
    pub fn name(&self) -> &str {
        match self {
            Resource::Sockets(s) => &s.name,
            Resource::VfPool(p) => &p.pool.resource_name,
        }
    }

    /// The device list `ListAndWatch` sends, given the switch as last seen.
    pub fn devices(&self, switch: &SwitchView) -> Vec<Device> {
        match self {
            Resource::Sockets(s) => s.devices(switch),
            Resource::VfPool(p) => p.devices(),
        }
    }

    /// `Allocate` for one container.
    pub fn allocate(&self, ids: &[String]) -> Result<ContainerAllocateResponse, String> {
        match self {
            Resource::Sockets(s) => s.allocate(ids),
            Resource::VfPool(p) => p.allocate(ids),
        }
    }

    /// `GetPreferredAllocation` for one container: `must_include` first, then devices on the
    /// NUMA node(s) of the switch's PMD cores.
    pub fn preferred(
        &self,
        available: &[String],
        must_include: &[String],
        size: usize,
        switch: &SwitchView,
    ) -> Result<Vec<String>, String> {
        let pmd: Vec<i64> = switch.pmd_numa_nodes.iter().copied().collect();
        match self {
            Resource::Sockets(s) => s.preferred(available, must_include, size),
            Resource::VfPool(p) => p
                .current()
                .preferred_allocation(available, must_include, size, &pmd)
                .map_err(|e| e.to_string()),
        }
    }
}

/// `count` vhost-user or memif devices, `<kind>-0` .. `<kind>-<count-1>`, each a directory
/// under the device root (the contract of [`heddle_cni::devices`]).
pub struct SocketResource {
    name: String,
    kind: DeviceKind,
    count: u32,
    device_root: PathBuf,
}

impl SocketResource {
    /// A resource of `count` devices of `kind`, their directories under `device_root`.
    pub fn new(name: &str, kind: DeviceKind, count: u32, device_root: &Path) -> SocketResource {
        SocketResource {
            name: name.to_owned(),
            kind,
            count,
            device_root: device_root.to_owned(),
        }
    }

    /// The device ids, in index order. Derived from the config alone, so they are the same
    /// after every restart of the plugin (the kubelet's checkpoint refers to them).
    pub fn ids(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.count).map(|i| devices::device_id(self.kind, i))
    }

    /// True when `id` is one of this resource's devices.
    pub fn has(&self, id: &str) -> bool {
        DeviceKind::of_device(id) == Some(self.kind)
            && id[self.kind.as_str().len() + 1..]
                .parse::<u32>()
                .is_ok_and(|i| i < self.count && devices::device_id(self.kind, i) == id)
    }

    /// Every device: healthy while the switch takes ports, all unhealthy otherwise; the
    /// topology is the NUMA node(s) of the switch's PMD cores (which poll the socket's port).
    pub fn devices(&self, switch: &SwitchView) -> Vec<Device> {
        let health = if switch.takes_ports() {
            HEALTHY
        } else {
            UNHEALTHY
        };
        let topology = (!switch.pmd_numa_nodes.is_empty()).then(|| TopologyInfo {
            nodes: switch
                .pmd_numa_nodes
                .iter()
                .map(|&id| NumaNode { id })
                .collect(),
        });
        self.ids()
            .map(|id| Device {
                id,
                health: health.to_owned(),
                topology: topology.clone(),
            })
            .collect()
    }

    /// The names of the environment variables a container gets for this kind:
    /// `HEDDLE_VHOST_USER_SOCKETS` / `HEDDLE_VHOST_USER_DEVICES`, `HEDDLE_MEMIF_SOCKETS` /
    /// `HEDDLE_MEMIF_DEVICES`.
    pub fn env_names(kind: DeviceKind) -> (String, String) {
        let k = kind.as_str().to_ascii_uppercase().replace('-', "_");
        (format!("HEDDLE_{k}_SOCKETS"), format!("HEDDLE_{k}_DEVICES"))
    }

    /// `Allocate` for one container: each device's host directory is created when missing
    /// (an existing one is left as it is: it may hold a pod's socket) and mounted read-write
    /// at `/run/heddle/devices/<id>`; the environment names the container-side socket paths
    /// and the device ids, comma-separated, in the order asked.
    pub fn allocate(&self, ids: &[String]) -> Result<ContainerAllocateResponse, String> {
        if ids.is_empty() {
            return Err(format!("{}: Allocate named no device", self.name));
        }
        let mut seen = HashSet::new();
        for id in ids {
            if !self.has(id) {
                return Err(format!(
                    "{id} is not a device of {}: the kubelet may only allocate devices the plugin listed",
                    self.name
                ));
            }
            if !seen.insert(id) {
                return Err(format!("{}: Allocate named {id} twice", self.name));
            }
        }
        let mut resp = ContainerAllocateResponse::default();
        let mut sockets = Vec::with_capacity(ids.len());
        for id in ids {
            let host = devices::host_dir(&self.device_root, id);
            ensure_device_dir(&host)?;
            let container = devices::container_dir(id);
            sockets.push(
                container
                    .join(devices::socket_name(self.kind))
                    .display()
                    .to_string(),
            );
            resp.mounts.push(Mount {
                container_path: container.display().to_string(),
                host_path: host.display().to_string(),
                read_only: false,
            });
        }
        let (sockets_var, devices_var) = Self::env_names(self.kind);
        resp.envs.insert(sockets_var, sockets.join(","));
        resp.envs.insert(devices_var, ids.join(","));
        Ok(resp)
    }

    fn preferred(
        &self,
        available: &[String],
        must_include: &[String],
        size: usize,
    ) -> Result<Vec<String>, String> {
        if let Some(id) = available
            .iter()
            .chain(must_include)
            .find(|id| !self.has(id))
        {
            return Err(format!(
                "{id} is not a device of {}: the kubelet may only offer devices the plugin listed",
                self.name
            ));
        }
        let distinct: HashSet<&String> = available.iter().chain(must_include).collect();
        let must: HashSet<&String> = must_include.iter().collect();
        if size < must.len() || size > distinct.len() {
            return Err(format!(
                "{}: a preferred allocation of {size} cannot be made from {} available devices with {} that must be included",
                self.name,
                distinct.len(),
                must.len()
            ));
        }
        // Every socket device sits on the PMD cores' node(s) (see `devices`), so all are on
        // the preferred node; among them the lowest indexes go first, keeping the devices in
        // use packed at the start of the range.
        let mut out: Vec<String> = Vec::with_capacity(size);
        for id in must_include {
            if !out.contains(id) {
                out.push(id.clone());
            }
        }
        let mut rest: Vec<(u32, &String)> = available
            .iter()
            .filter(|id| !out.contains(id))
            .filter_map(|id| Some((id[self.kind.as_str().len() + 1..].parse().ok()?, id)))
            .collect();
        rest.sort();
        rest.dedup();
        let room = size.saturating_sub(out.len());
        out.extend(rest.into_iter().take(room).map(|(_, id)| id.clone()));
        Ok(out)
    }
}

/// Creates a device directory (mode [`DEVICE_DIR_MODE`], whatever the umask) unless it
/// exists; refuses a path that exists but is not a directory (a symlink included).
pub fn ensure_device_dir(dir: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(format!(
                "{} exists and is not a directory: remove it so the device can be allocated",
                dir.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot inspect {}: {e}", dir.display())),
    }
    let created = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DEVICE_DIR_MODE)
        .create(dir)
        .and_then(|()| {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DEVICE_DIR_MODE))
        });
    created.map_err(|e| {
        format!(
            "cannot create device directory {}: {e}: make deviceRoot writable by the device plugin (it runs as root)",
            dir.display()
        )
    })
}

/// The VFs of one pool, re-discovered from sysfs now and then.
pub struct VfPoolResource {
    pool: VfPool,
    sysfs_root: PathBuf,
    devices: RwLock<PoolDevices>,
}

impl VfPoolResource {
    /// A pool with the VFs discovery found for it.
    pub fn new(devices: PoolDevices, sysfs_root: &Path) -> VfPoolResource {
        VfPoolResource {
            pool: devices.pool().clone(),
            sysfs_root: sysfs_root.to_owned(),
            devices: RwLock::new(devices),
        }
    }

    /// The pool's config.
    pub fn pool(&self) -> &VfPool {
        &self.pool
    }

    fn current(&self) -> PoolDevices {
        self.devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the pool's VFs with a fresh discovery's; VFs listed before that it no longer
    /// finds stay listed, unhealthy ([`PoolDevices::keeping_gone`]).
    pub fn replace(&self, devices: PoolDevices) {
        let mut current = self.devices.write().unwrap_or_else(|e| e.into_inner());
        *current = devices.keeping_gone(&current);
    }

    fn devices(&self) -> Vec<Device> {
        self.current().devices(&self.sysfs_root)
    }

    fn allocate(&self, ids: &[String]) -> Result<ContainerAllocateResponse, String> {
        self.current().allocate(ids).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn up(nodes: &[i64]) -> SwitchView {
        SwitchView {
            up: true,
            ports: 1,
            max_ports: 8,
            workers: 1,
            pmd_numa_nodes: nodes.iter().copied().collect::<BTreeSet<_>>(),
            reason: None,
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn socket_devices_follow_the_switch_and_carry_the_pmd_nodes() {
        let r = SocketResource::new(
            "heddle.dev/vhost-user",
            DeviceKind::VhostUser,
            3,
            Path::new("/x"),
        );
        let d = r.devices(&up(&[0, 1]));
        assert_eq!(
            d.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            ["vhost-user-0", "vhost-user-1", "vhost-user-2"]
        );
        assert!(d.iter().all(|d| d.health == HEALTHY));
        assert_eq!(
            d[0].topology.as_ref().unwrap().nodes,
            vec![NumaNode { id: 0 }, NumaNode { id: 1 }]
        );
        let full = SwitchView {
            ports: 8,
            ..up(&[0])
        };
        assert!(r.devices(&full).iter().all(|d| d.health == UNHEALTHY));
        let down = SwitchView::default();
        let d = r.devices(&down);
        assert!(d
            .iter()
            .all(|d| d.health == UNHEALTHY && d.topology.is_none()));
    }

    #[test]
    fn membership_is_exact() {
        let r = SocketResource::new("heddle.dev/memif", DeviceKind::Memif, 2, Path::new("/x"));
        assert!(r.has("memif-0") && r.has("memif-1"));
        for bad in [
            "memif-2",
            "memif-01",
            "vhost-user-0",
            "memif-",
            "../memif-1",
            "memif-1/..",
        ] {
            assert!(!r.has(bad), "{bad}");
        }
    }

    #[test]
    fn allocate_creates_dirs_mounts_them_and_names_the_sockets() {
        let root = tempfile::tempdir().unwrap();
        let r = SocketResource::new(
            "heddle.dev/vhost-user",
            DeviceKind::VhostUser,
            4,
            root.path(),
        );
        // A directory in use keeps what it holds.
        let busy = root.path().join("vhost-user-1");
        std::fs::create_dir(&busy).unwrap();
        std::fs::write(busy.join("vhost-user.sock"), "").unwrap();
        let resp = r.allocate(&ids(&["vhost-user-3", "vhost-user-1"])).unwrap();
        assert_eq!(
            resp.envs["HEDDLE_VHOST_USER_SOCKETS"],
            "/run/heddle/devices/vhost-user-3/vhost-user.sock,/run/heddle/devices/vhost-user-1/vhost-user.sock"
        );
        assert_eq!(
            resp.envs["HEDDLE_VHOST_USER_DEVICES"],
            "vhost-user-3,vhost-user-1"
        );
        assert_eq!(resp.envs.len(), 2);
        assert_eq!(resp.mounts.len(), 2);
        assert_eq!(
            resp.mounts[0].container_path,
            "/run/heddle/devices/vhost-user-3"
        );
        assert_eq!(
            Path::new(&resp.mounts[0].host_path),
            root.path().join("vhost-user-3")
        );
        assert!(!resp.mounts[0].read_only);
        let mode = std::fs::metadata(root.path().join("vhost-user-3"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(busy.join("vhost-user.sock").exists());
        assert!(resp.devices.is_empty());
    }

    #[test]
    fn allocate_refuses_foreign_repeated_and_blocked_devices() {
        let root = tempfile::tempdir().unwrap();
        let r = SocketResource::new("heddle.dev/memif", DeviceKind::Memif, 2, root.path());
        let e = r.allocate(&ids(&["memif-5"])).unwrap_err();
        assert!(
            e.contains("memif-5 is not a device of heddle.dev/memif"),
            "{e}"
        );
        let e = r.allocate(&ids(&["memif-0", "memif-0"])).unwrap_err();
        assert!(e.contains("named memif-0 twice"), "{e}");
        assert!(r.allocate(&[]).is_err());
        std::fs::write(root.path().join("memif-1"), "x").unwrap();
        let e = r.allocate(&ids(&["memif-1"])).unwrap_err();
        assert!(e.contains("is not a directory"), "{e}");
        // Nothing was created for the refused requests.
        assert!(!root.path().join("memif-0").exists());
        let resp = r.allocate(&ids(&["memif-0"])).unwrap();
        assert_eq!(
            resp.envs["HEDDLE_MEMIF_SOCKETS"],
            "/run/heddle/devices/memif-0/memif.sock"
        );
    }

    #[test]
    fn preferred_keeps_must_include_then_lowest_indexes() {
        let r = Resource::Sockets(SocketResource::new(
            "heddle.dev/vhost-user",
            DeviceKind::VhostUser,
            12,
            Path::new("/x"),
        ));
        let avail = ids(&[
            "vhost-user-10",
            "vhost-user-7",
            "vhost-user-2",
            "vhost-user-9",
        ]);
        let got = r
            .preferred(&avail, &ids(&["vhost-user-9"]), 3, &up(&[0]))
            .unwrap();
        assert_eq!(got, ids(&["vhost-user-9", "vhost-user-2", "vhost-user-7"]));
        let e = r.preferred(&avail, &[], 5, &up(&[0])).unwrap_err();
        assert!(e.contains("cannot be made from 4 available"), "{e}");
        let e = r
            .preferred(&ids(&["vhost-user-12"]), &[], 1, &up(&[0]))
            .unwrap_err();
        assert!(e.contains("vhost-user-12 is not a device"), "{e}");
    }

    /// A node with two PFs: `ens1f0` on NUMA node 0 (VFs `0000:3b:02.0`, `.1`) and `ens2f0`
    /// on NUMA node 1 (VFs `0000:af:02.0`, `.1`), all on iavf; one pool takes every VF.
    fn two_numa_pool() -> (tempfile::TempDir, Resource) {
        use super::super::vf_pool::fixture::{self, FixtureVf, Pf};
        let sys = tempfile::tempdir().unwrap();
        for (pci, netdev, numa_node, vfs) in [
            (
                "0000:3b:00.0",
                "ens1f0",
                0,
                ["0000:3b:02.0", "0000:3b:02.1"],
            ),
            (
                "0000:af:00.0",
                "ens2f0",
                1,
                ["0000:af:02.0", "0000:af:02.1"],
            ),
        ] {
            let vfs = vfs
                .iter()
                .map(|&pci| FixtureVf {
                    pci,
                    netdev: None,
                    driver: Some("iavf"),
                    iommu_group: None,
                })
                .collect();
            fixture::create(
                sys.path(),
                &Pf {
                    pci,
                    netdev,
                    numa_node,
                    vendor: "0x8086",
                    vf_device: "0x154c",
                    vfs,
                },
            )
            .unwrap();
        }
        let pool: super::super::vf_pool::VfPool =
            serde_yaml::from_str("resourceName: heddle.dev/sriov_n3").unwrap();
        let found = super::super::vf_pool::discover_pools(&[pool], sys.path())
            .unwrap()
            .remove(0);
        let r = Resource::VfPool(Box::new(VfPoolResource::new(found, sys.path())));
        (sys, r)
    }

    #[test]
    fn vf_preferred_allocation_takes_the_vfs_on_the_numa_node_of_the_switchs_pmd_cores() {
        let (_sys, r) = two_numa_pool();
        let all = ids(&[
            "0000:3b:02.0",
            "0000:3b:02.1",
            "0000:af:02.0",
            "0000:af:02.1",
        ]);
        assert_eq!(
            r.preferred(&all, &[], 2, &up(&[1])).unwrap(),
            ids(&["0000:af:02.0", "0000:af:02.1"])
        );
        assert_eq!(
            r.preferred(&all, &[], 2, &up(&[0])).unwrap(),
            ids(&["0000:3b:02.0", "0000:3b:02.1"])
        );
        // Node 1 has one VF left: it goes first, then the other node's.
        let left = ids(&["0000:3b:02.0", "0000:3b:02.1", "0000:af:02.1"]);
        assert_eq!(
            r.preferred(&left, &[], 2, &up(&[1])).unwrap(),
            ids(&["0000:af:02.1", "0000:3b:02.0"])
        );
    }

    #[test]
    fn vfs_whose_pf_is_gone_stay_listed_unhealthy_after_rediscovery() {
        let (sys, r) = two_numa_pool();
        let Resource::VfPool(pool) = &r else {
            unreachable!()
        };
        let health = |r: &Resource| -> Vec<(String, String)> {
            r.devices(&SwitchView::default())
                .into_iter()
                .map(|d| (d.id, d.health))
                .collect()
        };
        let rediscover = || {
            let found = super::super::vf_pool::discover_pools(&[pool.pool().clone()], sys.path())
                .unwrap()
                .remove(0);
            pool.replace(found);
        };
        let pf_b = sys.path().join("bus/pci/devices/0000:af:00.0");
        let saved = sys.path().join("saved-pf");
        std::fs::rename(&pf_b, &saved).unwrap();
        let want_gone = vec![
            ("0000:3b:02.0".to_owned(), HEALTHY.to_owned()),
            ("0000:3b:02.1".to_owned(), HEALTHY.to_owned()),
            ("0000:af:02.0".to_owned(), UNHEALTHY.to_owned()),
            ("0000:af:02.1".to_owned(), UNHEALTHY.to_owned()),
        ];
        assert_eq!(health(&r), want_gone, "before re-discovery");
        rediscover();
        assert_eq!(
            health(&r),
            want_gone,
            "after re-discovery: listed, unhealthy"
        );
        assert!(
            r.allocate(&ids(&["0000:af:02.0"])).is_ok(),
            "Allocate still knows a VF that is listed"
        );
        // The PF comes back: its VFs are healthy again once discovery finds them.
        std::fs::rename(&saved, &pf_b).unwrap();
        rediscover();
        assert!(
            health(&r).iter().all(|(_, h)| h == HEALTHY),
            "{:?}",
            health(&r)
        );
    }
}
