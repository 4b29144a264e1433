//! SR-IOV VF pools: which VFs of a node a device-plugin resource offers, and what a container
//! that was given some of them gets.
//!
//! A pool ([`VfPool`], the `vfPools` entries of the device-plugin config) is selected the way
//! the SR-IOV device plugin's users already write it: `vendors`, `devices`, `drivers`,
//! `pfNames` (with VF ranges, `ens1f0#0-7`, `ens1f0#0,3,5-6`) and `rootDevices` (PF PCI
//! addresses). Every selector that is given must match (an empty one matches any VF); within
//! one selector any entry may match. `deviceType` picks VFs by driver: `netdevice` takes VFs
//! bound to a kernel network driver, `vfio-pci` those bound to vfio-pci.
//!
//! Use: [`validate_pools`] the config; [`discover_pools`] on sysfs (a VF goes to the first
//! pool that selects it, so two resources never offer the same VF); then per pool
//! [`PoolDevices::devices`] for `ListAndWatch` (device id = the VF's PCI address, health,
//! NUMA node), [`PoolDevices::preferred_allocation`] for `GetPreferredAllocation`, and
//! [`PoolDevices::allocate`] for `Allocate`: the `PCIDEVICE_<RESOURCE>` variable (PCI
//! addresses, comma-separated) and, for vfio-pci, `/dev/vfio/vfio` and `/dev/vfio/<group>`.
//! Re-run discovery to pick up VFs that appeared or were re-bound.

mod discovery;
mod selector;
mod types;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use heddle_kubelet_api::deviceplugin::{
    ContainerAllocateResponse, Device, DeviceSpec, NumaNode, TopologyInfo,
};
use serde::{Deserialize, Serialize};

pub use discovery::{discover_vfs, fixture, health, Vf, VfHealth, DEFAULT_SYSFS_ROOT};
pub use selector::{check_resource_name, PfNameSelector};
pub use types::{DeviceType, VfError};

/// Which VFs a pool takes. Every non-empty list must match; an empty list matches any VF.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selectors {
    /// PCI vendor ids (`8086`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vendors: Vec<String>,
    /// PCI device ids of the VFs (`154c`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// Drivers the VFs are bound to (`iavf`, `mlx5_core`, `vfio-pci`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drivers: Vec<String>,
    /// PF netdevs, optionally with VF indexes: `ens1f0`, `ens1f0#0-7`, `ens1f0#0,3,5-6`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pf_names: Vec<String>,
    /// PF PCI addresses (`0000:3b:00.0`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub root_devices: Vec<String>,
}

/// One `vfPools` entry of the device-plugin config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VfPool {
    /// The extended resource pods request (`heddle.dev/sriov_n3`).
    pub resource_name: String,
    /// `netdevice` (default) or `vfio-pci`.
    #[serde(default)]
    pub device_type: DeviceType,
    /// Which VFs.
    #[serde(default)]
    pub selectors: Selectors,
}

/// A pool's selectors, parsed.
#[derive(Debug, Clone)]
struct Matcher {
    device_type: DeviceType,
    vendors: Vec<String>,
    devices: Vec<String>,
    drivers: Vec<String>,
    pf_names: Vec<PfNameSelector>,
    root_devices: Vec<String>,
}

impl Matcher {
    fn matches(&self, vf: &Vf) -> bool {
        let any = |list: &[String], v: &Option<String>| {
            list.is_empty() || v.as_ref().is_some_and(|v| list.contains(v))
        };
        vf.device_type() == Some(self.device_type)
            && any(&self.vendors, &vf.vendor)
            && any(&self.devices, &vf.device)
            && any(&self.drivers, &vf.driver)
            && (self.root_devices.is_empty() || self.root_devices.contains(&vf.pf_pci))
            && (self.pf_names.is_empty()
                || vf
                    .pf_name
                    .as_ref()
                    .is_some_and(|pf| self.pf_names.iter().any(|s| s.matches(pf, vf.index))))
    }
}

impl VfPool {
    /// Checks the pool; every problem found is a sentence naming the fix.
    pub fn validate(&self) -> Result<(), VfError> {
        self.matcher().map(|_| ())
    }

    fn matcher(&self) -> Result<Matcher, VfError> {
        let mut problems = Vec::new();
        if let Err(e) = check_resource_name(&self.resource_name) {
            problems.push(e);
        }
        let s = &self.selectors;
        let mut ids = |field: &str, list: &[String]| -> Vec<String> {
            list.iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    selector::hex_id(field, i, v)
                        .map_err(|e| problems.push(e))
                        .ok()
                })
                .collect()
        };
        let vendors = ids("vendors", &s.vendors);
        let devices = ids("devices", &s.devices);
        for (i, d) in s.drivers.iter().enumerate() {
            if d.is_empty() || d.contains('/') || d.contains(char::is_whitespace) {
                problems.push(format!(
                    "drivers[{i}] {d:?} is not a driver name: write it as `ls /sys/bus/pci/drivers` shows it, e.g. \"iavf\" or \"vfio-pci\""
                ));
            }
        }
        let userspace =
            |d: &String| heddle_cni::sriov::sysfs::USERSPACE_DRIVERS.contains(&d.as_str());
        match self.device_type {
            DeviceType::VfioPci => {
                if let Some(d) = s.drivers.iter().find(|d| d.as_str() != "vfio-pci") {
                    problems.push(format!(
                        "deviceType vfio-pci takes only VFs bound to vfio-pci, so drivers entry {d:?} can never match: drop it, or use deviceType netdevice for kernel-driver VFs"
                    ));
                }
            }
            DeviceType::Netdevice => {
                if let Some(d) = s.drivers.iter().find(|d| userspace(d)) {
                    problems.push(format!(
                        "deviceType netdevice takes only VFs bound to a kernel network driver, so drivers entry {d:?} can never match: use deviceType vfio-pci for vfio-pci VFs"
                    ));
                }
            }
        }
        let pf_names: Vec<PfNameSelector> = s
            .pf_names
            .iter()
            .filter_map(|e| PfNameSelector::parse(e).map_err(|e| problems.push(e)).ok())
            .collect();
        let mut root_devices = Vec::new();
        for (i, r) in s.root_devices.iter().enumerate() {
            let lower = r.to_ascii_lowercase();
            if heddle_cni::sriov::sysfs::valid_pci_address(&lower) {
                root_devices.push(lower);
            } else {
                problems.push(format!(
                    "rootDevices[{i}] {r:?} is not a PCI address: write the PF's full address as `lspci -D` shows it, e.g. \"0000:3b:00.0\""
                ));
            }
        }
        if !problems.is_empty() {
            return Err(VfError::InvalidPool {
                resource: self.resource_name.clone(),
                problems,
            });
        }
        Ok(Matcher {
            device_type: self.device_type,
            vendors,
            devices,
            drivers: s.drivers.clone(),
            pf_names,
            root_devices,
        })
    }

    /// The VFs of `vfs` this pool selects, in the order given.
    pub fn select(&self, vfs: &[Vf]) -> Result<Vec<Vf>, VfError> {
        let m = self.matcher()?;
        Ok(vfs.iter().filter(|vf| m.matches(vf)).cloned().collect())
    }

    /// The `PCIDEVICE_*` variable of this pool (`heddle.dev/sriov_n3` ->
    /// `PCIDEVICE_HEDDLE_DEV_SRIOV_N3`): the name heddle-cni and SR-IOV-aware apps read.
    pub fn env_name(&self) -> String {
        heddle_cni::sriov::conf::pcidevice_var(&self.resource_name)
    }
}

/// Validates every pool and that no two share a `resourceName`.
pub fn validate_pools(pools: &[VfPool]) -> Result<(), VfError> {
    let mut seen = HashSet::new();
    for p in pools {
        p.validate()?;
        if !seen.insert(p.resource_name.as_str()) {
            return Err(VfError::DuplicateResource(p.resource_name.clone()));
        }
    }
    Ok(())
}

/// Discovers the VFs under `sysfs_root` and hands each to the first of `pools` that selects
/// it (a VF two pools select is offered only by the first, so it never reaches two pods).
/// The result has one entry per pool, in order.
pub fn discover_pools(pools: &[VfPool], sysfs_root: &Path) -> Result<Vec<PoolDevices>, VfError> {
    validate_pools(pools)?;
    let matchers: Vec<Matcher> = pools
        .iter()
        .map(VfPool::matcher)
        .collect::<Result<_, _>>()?;
    let mut out: Vec<PoolDevices> = pools
        .iter()
        .map(|p| PoolDevices {
            pool: p.clone(),
            vfs: BTreeMap::new(),
            gone: BTreeSet::new(),
        })
        .collect();
    for vf in discover_vfs(sysfs_root)? {
        let mut takers = matchers.iter().enumerate().filter(|(_, m)| m.matches(&vf));
        if let Some((i, _)) = takers.next() {
            for (j, _) in takers {
                tracing::warn!(
                    vf = %vf.pci,
                    offered_by = %pools[i].resource_name,
                    not_by = %pools[j].resource_name,
                    "a VF is selected by two VF pools; only the first offers it: narrow the selectors"
                );
            }
            out[i].vfs.insert(vf.pci.clone(), vf);
        }
    }
    Ok(out)
}

/// The VFs one pool offers on this node, keyed by device id (the VF's PCI address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDevices {
    pool: VfPool,
    vfs: BTreeMap<String, Vf>,
    /// VFs an earlier discovery found that the latest one did not (see
    /// [`PoolDevices::keeping_gone`]): still listed, always unhealthy.
    gone: BTreeSet<String>,
}

impl PoolDevices {
    /// A pool's devices from VFs already discovered (keeps those the pool selects).
    pub fn new(pool: &VfPool, vfs: &[Vf]) -> Result<PoolDevices, VfError> {
        Ok(PoolDevices {
            pool: pool.clone(),
            vfs: pool
                .select(vfs)?
                .into_iter()
                .map(|vf| (vf.pci.clone(), vf))
                .collect(),
            gone: BTreeSet::new(),
        })
    }

    /// This (fresh) discovery, plus every VF `before` listed that it no longer finds (its PF
    /// or the VF was removed, or it was re-bound or changed so the pool no longer selects
    /// it). Those stay in the list as `Unhealthy` rather than vanish from it, so the kubelet
    /// sees a VF whose PF is gone as unhealthy for as long as the plugin runs; one that
    /// discovery finds again is listed as discovered, its health read from sysfs again.
    pub fn keeping_gone(mut self, before: &PoolDevices) -> PoolDevices {
        for (id, vf) in &before.vfs {
            if !self.vfs.contains_key(id) {
                self.vfs.insert(id.clone(), vf.clone());
                self.gone.insert(id.clone());
            }
        }
        self
    }

    /// The pool's config.
    pub fn pool(&self) -> &VfPool {
        &self.pool
    }

    /// The pool's resource name.
    pub fn resource_name(&self) -> &str {
        &self.pool.resource_name
    }

    /// The pool's VFs, by PCI address.
    pub fn vfs(&self) -> impl Iterator<Item = &Vf> {
        self.vfs.values()
    }

    /// The VF with device id `id`.
    pub fn get(&self, id: &str) -> Option<&Vf> {
        self.vfs.get(id)
    }

    /// The `ListAndWatch` devices: id (PCI address), health read from sysfs now (see
    /// [`health`]; always unhealthy for a VF the latest discovery no longer found) and NUMA
    /// node (no topology when sysfs does not know it).
    pub fn devices(&self, sysfs_root: &Path) -> Vec<Device> {
        self.vfs
            .values()
            .map(|vf| Device {
                id: vf.pci.clone(),
                health: if self.gone.contains(&vf.pci) {
                    heddle_kubelet_api::deviceplugin::UNHEALTHY.to_owned()
                } else {
                    health(sysfs_root, vf, self.pool.device_type)
                        .as_str()
                        .to_owned()
                },
                topology: vf.numa_node.map(|n| TopologyInfo {
                    nodes: vec![NumaNode { id: i64::from(n) }],
                }),
            })
            .collect()
    }

    /// The container part of `Allocate` for the VFs `ids`: `PCIDEVICE_<RESOURCE>` = the PCI
    /// addresses in the order given, comma-separated; for vfio-pci also the device nodes
    /// `/dev/vfio/vfio` and `/dev/vfio/<group>` of each VF's IOMMU group (permissions `rw`,
    /// same path in the container). Refuses an empty list, a repeated id and an id not in
    /// the pool.
    pub fn allocate(&self, ids: &[String]) -> Result<ContainerAllocateResponse, VfError> {
        let bad = |reason: String| VfError::BadRequest {
            resource: self.pool.resource_name.clone(),
            reason,
        };
        if ids.is_empty() {
            return Err(bad("Allocate named no device".into()));
        }
        let mut seen = HashSet::new();
        let mut vfs = Vec::with_capacity(ids.len());
        for id in ids {
            let vf = self.vfs.get(id).ok_or_else(|| VfError::NotInPool {
                resource: self.pool.resource_name.clone(),
                id: id.clone(),
            })?;
            if !seen.insert(id) {
                return Err(bad(format!("Allocate named {id} twice")));
            }
            vfs.push(vf);
        }
        let mut resp = ContainerAllocateResponse::default();
        resp.envs.insert(self.pool.env_name(), ids.join(","));
        if self.pool.device_type == DeviceType::VfioPci {
            let node = |path: String| DeviceSpec {
                container_path: path.clone(),
                host_path: path,
                permissions: "rw".into(),
            };
            resp.devices.push(node("/dev/vfio/vfio".into()));
            let mut groups = HashSet::new();
            for vf in vfs {
                let g = vf
                    .iommu_group
                    .ok_or_else(|| VfError::NoIommuGroup { id: vf.pci.clone() })?;
                if groups.insert(g) {
                    resp.devices.push(node(format!("/dev/vfio/{g}")));
                }
            }
        }
        Ok(resp)
    }

    /// `GetPreferredAllocation` for this pool: [`preferred_allocation`] with the VFs' NUMA
    /// nodes. Refuses ids not in the pool, and a size below the must-include count or above
    /// the available count.
    pub fn preferred_allocation(
        &self,
        available: &[String],
        must_include: &[String],
        size: usize,
        preferred_numa: &[i64],
    ) -> Result<Vec<String>, VfError> {
        if let Some(id) = available
            .iter()
            .chain(must_include)
            .find(|id| !self.vfs.contains_key(*id))
        {
            return Err(VfError::NotInPool {
                resource: self.pool.resource_name.clone(),
                id: id.clone(),
            });
        }
        let distinct: HashSet<&String> = available.iter().chain(must_include).collect();
        let must: HashSet<&String> = must_include.iter().collect();
        if size < must.len() || size > distinct.len() {
            return Err(VfError::BadRequest {
                resource: self.pool.resource_name.clone(),
                reason: format!(
                    "a preferred allocation of {size} cannot be made from {} available devices with {} that must be included",
                    distinct.len(),
                    must.len()
                ),
            });
        }
        Ok(preferred_allocation(
            |id| self.vfs.get(id).and_then(|vf| vf.numa_node).map(i64::from),
            available,
            must_include,
            size,
            preferred_numa,
        ))
    }
}

/// The preferred `size` devices: `must_include` first (in the order given), then devices on
/// a `preferred_numa` node (earlier nodes first), then the rest grouped by NUMA node (unknown
/// last) so a container's devices stay together; ties by id. With no `preferred_numa`, the
/// nodes of the `must_include` devices are preferred. Deterministic for the same input;
/// never more than `size` unless `must_include` alone is longer.
pub fn preferred_allocation(
    numa_of: impl Fn(&str) -> Option<i64>,
    available: &[String],
    must_include: &[String],
    size: usize,
    preferred_numa: &[i64],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(size);
    for id in must_include {
        if !out.contains(id) {
            out.push(id.clone());
        }
    }
    let preferred: Vec<i64> = if preferred_numa.is_empty() {
        let mut nodes: Vec<i64> = Vec::new();
        for n in out.iter().filter_map(|id| numa_of(id)) {
            if !nodes.contains(&n) {
                nodes.push(n);
            }
        }
        nodes
    } else {
        preferred_numa.to_vec()
    };
    let mut rest: Vec<(usize, i64, &String)> = available
        .iter()
        .filter(|id| !out.contains(id))
        .map(|id| {
            let numa = numa_of(id);
            let rank = numa
                .and_then(|n| preferred.iter().position(|p| *p == n))
                .unwrap_or(usize::MAX);
            (rank, numa.unwrap_or(i64::MAX), id)
        })
        .collect();
    rest.sort();
    rest.dedup_by(|a, b| a.2 == b.2);
    let room = size.saturating_sub(out.len());
    out.extend(rest.into_iter().take(room).map(|(_, _, id)| id.clone()));
    out
}

#[cfg(test)]
mod tests;
