//! VF pools against sysfs-shaped directories: two SR-IOV PFs on different NUMA nodes with VFs
//! on kernel drivers, vfio-pci and none, plus a PF whose NUMA node is unknown.

use super::fixture::{self, FixtureVf, Pf};
use super::*;

const PF_A: &str = "0000:3b:00.0";
const PF_B: &str = "0000:af:00.0";
const PF_C: &str = "0000:d8:00.0";

fn vf<'a>(
    pci: &'a str,
    netdev: Option<&'a str>,
    driver: Option<&'a str>,
    iommu_group: Option<u32>,
) -> FixtureVf<'a> {
    FixtureVf {
        pci,
        netdev,
        driver,
        iommu_group,
    }
}

/// PF A `ens1f0` (Intel, NUMA 0): VFs 0-1 on iavf, 2-3 on vfio-pci, 4 unbound.
/// PF B `ens2f0` (Mellanox, NUMA 1): VFs 0-1 on mlx5_core, 2-3 on vfio-pci sharing IOMMU
/// group 72. PF C `ens3f0` (Intel E810, NUMA unknown): VF 0 on iavf. Plus a PCI device that
/// is no PF.
fn node() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixture::create(
        root,
        &Pf {
            pci: PF_A,
            netdev: "ens1f0",
            numa_node: 0,
            vendor: "0x8086",
            vf_device: "0x154c",
            vfs: vec![
                vf("0000:3b:02.0", Some("ens1f0v0"), Some("iavf"), Some(40)),
                vf("0000:3b:02.1", Some("ens1f0v1"), Some("iavf"), Some(41)),
                vf("0000:3b:02.2", None, Some("vfio-pci"), Some(42)),
                vf("0000:3b:02.3", None, Some("vfio-pci"), Some(43)),
                vf("0000:3b:02.4", None, None, Some(44)),
            ],
        },
    )
    .unwrap();
    fixture::create(
        root,
        &Pf {
            pci: PF_B,
            netdev: "ens2f0",
            numa_node: 1,
            vendor: "0x15b3",
            vf_device: "0x101e",
            vfs: vec![
                vf(
                    "0000:af:00.2",
                    Some("ens2f0v0"),
                    Some("mlx5_core"),
                    Some(70),
                ),
                vf(
                    "0000:af:00.3",
                    Some("ens2f0v1"),
                    Some("mlx5_core"),
                    Some(71),
                ),
                vf("0000:af:00.4", None, Some("vfio-pci"), Some(72)),
                vf("0000:af:00.5", None, Some("vfio-pci"), Some(72)),
            ],
        },
    )
    .unwrap();
    fixture::create(
        root,
        &Pf {
            pci: PF_C,
            netdev: "ens3f0",
            numa_node: -1,
            vendor: "0x8086",
            vf_device: "0x1889",
            vfs: vec![vf("0000:d8:01.0", Some("ens3f0v0"), Some("iavf"), None)],
        },
    )
    .unwrap();
    let other = root.join("bus/pci/devices/0000:00:1f.0");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("vendor"), "0x8086\n").unwrap();
    dir
}

fn pool(yaml: &str) -> VfPool {
    serde_yaml::from_str(yaml).unwrap()
}

/// The PCI addresses `pool` selects on `root`.
fn selected(root: &Path, yaml: &str) -> Vec<String> {
    let p = pool(yaml);
    let vfs = discover_vfs(root).unwrap();
    PoolDevices::new(&p, &vfs)
        .unwrap()
        .vfs()
        .map(|v| v.pci.clone())
        .collect()
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn discovery_finds_every_vf_of_every_pf_with_its_attributes() {
    let dir = node();
    let vfs = discover_vfs(dir.path()).unwrap();
    let pcis: Vec<&str> = vfs.iter().map(|v| v.pci.as_str()).collect();
    assert_eq!(
        pcis,
        [
            "0000:3b:02.0",
            "0000:3b:02.1",
            "0000:3b:02.2",
            "0000:3b:02.3",
            "0000:3b:02.4",
            "0000:af:00.2",
            "0000:af:00.3",
            "0000:af:00.4",
            "0000:af:00.5",
            "0000:d8:01.0"
        ]
    );
    assert_eq!(
        vfs[6],
        Vf {
            pci: "0000:af:00.3".into(),
            pf_pci: PF_B.into(),
            pf_name: Some("ens2f0".into()),
            index: 1,
            vendor: Some("15b3".into()),
            device: Some("101e".into()),
            driver: Some("mlx5_core".into()),
            numa_node: Some(1),
            iommu_group: Some(71),
        }
    );
    assert_eq!(vfs[2].driver.as_deref(), Some("vfio-pci"));
    assert_eq!(vfs[2].device_type(), Some(DeviceType::VfioPci));
    assert_eq!(vfs[0].device_type(), Some(DeviceType::Netdevice));
    assert_eq!(vfs[4].driver, None, "unbound");
    assert_eq!(vfs[4].device_type(), None);
    assert_eq!(vfs[9].numa_node, None, "numa_node -1 is unknown");
    assert_eq!(vfs[9].iommu_group, None);
}

#[test]
fn discovery_takes_only_virtfn_links_below_sriov_numvfs() {
    let dir = node();
    std::fs::write(
        dir.path()
            .join("bus/pci/devices")
            .join(PF_B)
            .join("sriov_numvfs"),
        "2\n",
    )
    .unwrap();
    let on_b: Vec<String> = discover_vfs(dir.path())
        .unwrap()
        .into_iter()
        .filter(|v| v.pf_pci == PF_B)
        .map(|v| v.pci)
        .collect();
    assert_eq!(on_b, ["0000:af:00.2", "0000:af:00.3"]);
}

#[test]
fn discovery_without_a_pci_device_list_says_to_mount_sys() {
    let dir = tempfile::tempdir().unwrap();
    let e = discover_vfs(dir.path()).unwrap_err();
    assert!(matches!(e, VfError::Sysfs { .. }));
    assert!(
        e.to_string()
            .contains("mount the host's /sys into the device-plugin container"),
        "{e}"
    );
}

#[test]
fn device_type_picks_vfs_by_driver_kind() {
    let dir = node();
    let root = dir.path();
    fixture::bind(root, "0000:3b:02.1", "igb_uio").unwrap();
    assert_eq!(
        selected(root, "resourceName: heddle.dev/net"),
        [
            "0000:3b:02.0",
            "0000:af:00.2",
            "0000:af:00.3",
            "0000:d8:01.0"
        ],
        "netdevice: kernel drivers only (not igb_uio, not unbound)"
    );
    assert_eq!(
        selected(
            root,
            "{resourceName: heddle.dev/dpdk, deviceType: vfio-pci}"
        ),
        [
            "0000:3b:02.2",
            "0000:3b:02.3",
            "0000:af:00.4",
            "0000:af:00.5"
        ]
    );
}

#[test]
fn each_selector_alone() {
    let dir = node();
    let root = dir.path();
    let sel = |s: &str| {
        selected(
            root,
            &format!("{{resourceName: heddle.dev/x, selectors: {s}}}"),
        )
    };
    assert_eq!(sel("{vendors: ['15b3']}"), ["0000:af:00.2", "0000:af:00.3"]);
    assert_eq!(
        sel("{vendors: ['0x8086']}"),
        ["0000:3b:02.0", "0000:3b:02.1", "0000:d8:01.0"]
    );
    assert_eq!(sel("{devices: ['154C']}"), ["0000:3b:02.0", "0000:3b:02.1"]);
    assert_eq!(
        sel("{drivers: [mlx5_core]}"),
        ["0000:af:00.2", "0000:af:00.3"]
    );
    assert_eq!(
        sel("{drivers: [iavf]}"),
        ["0000:3b:02.0", "0000:3b:02.1", "0000:d8:01.0"]
    );
    assert_eq!(sel("{pfNames: [ens3f0]}"), ["0000:d8:01.0"]);
    assert_eq!(
        sel("{rootDevices: ['0000:af:00.0']}"),
        ["0000:af:00.2", "0000:af:00.3"]
    );
    assert_eq!(
        sel("{vendors: ['1af4']}"),
        Vec::<String>::new(),
        "a vendor nobody has selects nothing"
    );
}

#[test]
fn selectors_combined_must_all_match_and_entries_within_one_may_any() {
    let dir = node();
    let root = dir.path();
    let sel = |s: &str| {
        selected(
            root,
            &format!("{{resourceName: heddle.dev/x, selectors: {s}}}"),
        )
    };
    assert_eq!(
        sel("{vendors: ['8086'], devices: ['154c', '1889'], drivers: [iavf], pfNames: ['ens1f0#1', ens3f0]}"),
        ["0000:3b:02.1", "0000:d8:01.0"]
    );
    assert_eq!(
        sel("{vendors: ['8086'], rootDevices: ['0000:af:00.0']}"),
        Vec::<String>::new(),
        "Intel vendor on the Mellanox PF: nothing"
    );
    assert_eq!(
        sel("{vendors: ['8086', '15b3'], rootDevices: ['0000:3b:00.0', '0000:af:00.0'], pfNames: [ens2f0]}"),
        ["0000:af:00.2", "0000:af:00.3"]
    );
}

#[test]
fn pf_names_with_vf_ranges() {
    let dir = node();
    let root = dir.path();
    let sel = |yaml: &str| selected(root, yaml);
    assert_eq!(
        sel("{resourceName: heddle.dev/x, selectors: {pfNames: ['ens1f0#0-1']}}"),
        ["0000:3b:02.0", "0000:3b:02.1"]
    );
    assert_eq!(
        sel("{resourceName: heddle.dev/x, selectors: {pfNames: ['ens1f0#1-7']}}"),
        ["0000:3b:02.1"]
    );
    assert_eq!(
        sel("{resourceName: heddle.dev/x, deviceType: vfio-pci, selectors: {pfNames: ['ens1f0#0,3', 'ens2f0#3-3']}}"),
        ["0000:3b:02.3", "0000:af:00.5"]
    );
    assert_eq!(
        sel("{resourceName: heddle.dev/x, deviceType: vfio-pci, selectors: {pfNames: ['ens1f0#0,2,5-6']}}"),
        ["0000:3b:02.2"]
    );
}

#[test]
fn root_devices_take_every_vf_of_the_pf_in_any_case() {
    let dir = node();
    assert_eq!(
        selected(
            dir.path(),
            "{resourceName: heddle.dev/x, deviceType: vfio-pci, selectors: {rootDevices: ['0000:AF:00.0']}}"
        ),
        ["0000:af:00.4", "0000:af:00.5"]
    );
}

#[test]
fn a_vf_two_pools_select_is_offered_only_by_the_first() {
    let dir = node();
    let pools: Vec<VfPool> = serde_yaml::from_str(
        "- {resourceName: heddle.dev/n3, selectors: {pfNames: ['ens1f0#0']}}\n\
         - {resourceName: heddle.dev/intel, selectors: {vendors: ['8086']}}\n\
         - {resourceName: heddle.dev/dpdk, deviceType: vfio-pci}\n",
    )
    .unwrap();
    let got = discover_pools(&pools, dir.path()).unwrap();
    let names: Vec<Vec<&str>> = got
        .iter()
        .map(|p| p.vfs().map(|v| v.pci.as_str()).collect())
        .collect();
    assert_eq!(
        names,
        [
            vec!["0000:3b:02.0"],
            vec!["0000:3b:02.1", "0000:d8:01.0"],
            vec![
                "0000:3b:02.2",
                "0000:3b:02.3",
                "0000:af:00.4",
                "0000:af:00.5"
            ],
        ]
    );
    assert_eq!(got[1].resource_name(), "heddle.dev/intel");
}

#[test]
fn devices_report_numa_nodes_and_health() {
    let dir = node();
    let root = dir.path();
    let p = &discover_pools(&[pool("resourceName: heddle.dev/net")], root).unwrap()[0];
    let devs = p.devices(root);
    let by_id = |id: &str| devs.iter().find(|d| d.id == id).unwrap().clone();
    assert_eq!(devs.len(), 5);
    assert!(devs.iter().all(|d| d.health == "Healthy"));
    let numa = |id: &str| by_id(id).topology.map(|t| t.nodes[0].id);
    assert_eq!(numa("0000:3b:02.0"), Some(0));
    assert_eq!(numa("0000:af:00.2"), Some(1));
    assert_eq!(by_id("0000:d8:01.0").topology, None, "unknown NUMA node");
}

#[test]
fn a_pf_netdev_that_is_down_makes_its_vfs_unhealthy() {
    let dir = node();
    let root = dir.path();
    let p = &discover_pools(&[pool("resourceName: heddle.dev/net")], root).unwrap()[0];
    let unhealthy = |root: &Path| -> Vec<String> {
        p.devices(root)
            .into_iter()
            .filter(|d| d.health == "Unhealthy")
            .map(|d| d.id)
            .collect()
    };
    fixture::set_netdev_state(root, PF_A, "ens1f0", "down", 0x1002).unwrap();
    assert_eq!(unhealthy(root), ["0000:3b:02.0", "0000:3b:02.1"]);
    let vf = p.get("0000:3b:02.0").unwrap();
    assert_eq!(
        health(root, vf, DeviceType::Netdevice),
        VfHealth::Unhealthy("its PF netdev ens1f0 is down".into())
    );
    // operstate "unknown" (no carrier reporting): the IFF_UP flag decides.
    fixture::set_netdev_state(root, PF_A, "ens1f0", "unknown", 0x1002).unwrap();
    assert_eq!(unhealthy(root), ["0000:3b:02.0", "0000:3b:02.1"]);
    fixture::set_netdev_state(root, PF_A, "ens1f0", "unknown", 0x1003).unwrap();
    assert!(unhealthy(root).is_empty());
    fixture::set_netdev_state(root, PF_A, "ens1f0", "lowerlayerdown", 0x1003).unwrap();
    assert_eq!(unhealthy(root), ["0000:3b:02.0", "0000:3b:02.1"]);
    fixture::set_netdev_state(root, PF_A, "ens1f0", "up", 0x1003).unwrap();
    assert!(unhealthy(root).is_empty());
}

#[test]
fn a_pf_that_is_gone_makes_its_vfs_unhealthy() {
    let dir = node();
    let root = dir.path();
    let p = &discover_pools(&[pool("resourceName: heddle.dev/net")], root).unwrap()[0];
    std::fs::remove_dir_all(root.join("bus/pci/devices").join(PF_B)).unwrap();
    let devs = p.devices(root);
    let unhealthy: Vec<&str> = devs
        .iter()
        .filter(|d| d.health == "Unhealthy")
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(unhealthy, ["0000:af:00.2", "0000:af:00.3"]);
    assert_eq!(
        health(root, p.get("0000:af:00.2").unwrap(), DeviceType::Netdevice),
        VfHealth::Unhealthy(format!("its PF {PF_B} is gone"))
    );
    // A PF whose netdev disappeared (the driver unbound it) is no better.
    std::fs::remove_dir_all(root.join("bus/pci/devices").join(PF_A).join("net/ens1f0")).unwrap();
    assert!(matches!(
        health(root, p.get("0000:3b:02.0").unwrap(), DeviceType::Netdevice),
        VfHealth::Unhealthy(r) if r.contains("no longer has a netdev")
    ));
}

#[test]
fn a_vf_rebound_away_from_the_pools_driver_kind_is_unhealthy() {
    let dir = node();
    let root = dir.path();
    let p = &discover_pools(&[pool("resourceName: heddle.dev/net")], root).unwrap()[0];
    fixture::bind(root, "0000:3b:02.1", "vfio-pci").unwrap();
    let vf = p.get("0000:3b:02.1").unwrap();
    assert_eq!(
        health(root, vf, DeviceType::Netdevice),
        VfHealth::Unhealthy(
            "VF 0000:3b:02.1 is bound to vfio-pci, not to a netdevice driver".into()
        )
    );
    assert_eq!(
        health(root, p.get("0000:3b:02.0").unwrap(), DeviceType::Netdevice),
        VfHealth::Healthy
    );
}

#[test]
fn allocate_sets_the_pcidevice_variable_in_request_order() {
    let dir = node();
    let p = &discover_pools(&[pool("resourceName: heddle.dev/sriov_n3")], dir.path()).unwrap()[0];
    assert_eq!(p.pool().env_name(), "PCIDEVICE_HEDDLE_DEV_SRIOV_N3");
    let resp = p.allocate(&ids(&["0000:af:00.2", "0000:3b:02.0"])).unwrap();
    assert_eq!(resp.envs.len(), 1);
    assert_eq!(
        resp.envs["PCIDEVICE_HEDDLE_DEV_SRIOV_N3"],
        "0000:af:00.2,0000:3b:02.0"
    );
    assert!(
        resp.devices.is_empty(),
        "a netdevice VF needs no device node"
    );
    assert!(resp.mounts.is_empty());
}

#[test]
fn allocate_refuses_unknown_repeated_and_empty_requests() {
    let dir = node();
    let p = &discover_pools(&[pool("resourceName: heddle.dev/sriov_n3")], dir.path()).unwrap()[0];
    let e = p.allocate(&ids(&["0000:3b:02.2"])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "0000:3b:02.2 is not a VF of pool heddle.dev/sriov_n3: the kubelet may only allocate devices the plugin listed"
    );
    let e = p
        .allocate(&ids(&["0000:3b:02.0", "0000:3b:02.0"]))
        .unwrap_err();
    assert!(e.to_string().contains("named 0000:3b:02.0 twice"), "{e}");
    assert!(matches!(p.allocate(&[]), Err(VfError::BadRequest { .. })));
}

#[test]
fn allocate_of_vfio_vfs_gives_the_vfio_device_nodes() {
    let dir = node();
    let p = &discover_pools(
        &[pool(
            "{resourceName: heddle.dev/dpdk, deviceType: vfio-pci}",
        )],
        dir.path(),
    )
    .unwrap()[0];
    let resp = p
        .allocate(&ids(&["0000:af:00.4", "0000:3b:02.2", "0000:af:00.5"]))
        .unwrap();
    assert_eq!(
        resp.envs["PCIDEVICE_HEDDLE_DEV_DPDK"],
        "0000:af:00.4,0000:3b:02.2,0000:af:00.5"
    );
    let nodes: Vec<(&str, &str, &str)> = resp
        .devices
        .iter()
        .map(|d| {
            (
                d.host_path.as_str(),
                d.container_path.as_str(),
                d.permissions.as_str(),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        [
            ("/dev/vfio/vfio", "/dev/vfio/vfio", "rw"),
            ("/dev/vfio/72", "/dev/vfio/72", "rw"),
            ("/dev/vfio/42", "/dev/vfio/42", "rw"),
        ],
        "the shared group 72 once"
    );
}

#[test]
fn a_vfio_vf_without_an_iommu_group_is_unhealthy_and_not_allocated() {
    let dir = node();
    let root = dir.path();
    std::fs::remove_file(root.join("bus/pci/devices/0000:3b:02.3/iommu_group")).unwrap();
    let p = &discover_pools(
        &[pool(
            "{resourceName: heddle.dev/dpdk, deviceType: vfio-pci}",
        )],
        root,
    )
    .unwrap()[0];
    let dev = p
        .devices(root)
        .into_iter()
        .find(|d| d.id == "0000:3b:02.3")
        .unwrap();
    assert_eq!(dev.health, "Unhealthy");
    let e = p.allocate(&ids(&["0000:3b:02.3"])).unwrap_err();
    assert!(matches!(e, VfError::NoIommuGroup { .. }));
    assert!(e.to_string().contains("intel_iommu=on"), "{e}");
}

#[test]
fn preferred_allocation_takes_must_include_then_the_preferred_numa_node_then_the_rest() {
    let dir = node();
    let p = &discover_pools(&[pool("resourceName: heddle.dev/net")], dir.path()).unwrap()[0];
    let all = ids(&[
        "0000:d8:01.0",
        "0000:af:00.3",
        "0000:3b:02.1",
        "0000:af:00.2",
        "0000:3b:02.0",
    ]);
    // PMD cores on NUMA 1: its VFs first, in id order.
    assert_eq!(
        p.preferred_allocation(&all, &[], 2, &[1]).unwrap(),
        ["0000:af:00.2", "0000:af:00.3"]
    );
    // Must-include comes first even off the preferred node; then NUMA 1; then NUMA 0; the
    // unknown node last.
    assert_eq!(
        p.preferred_allocation(&all, &ids(&["0000:3b:02.1"]), 5, &[1])
            .unwrap(),
        [
            "0000:3b:02.1",
            "0000:af:00.2",
            "0000:af:00.3",
            "0000:3b:02.0",
            "0000:d8:01.0"
        ]
    );
    // No preferred node: stay with the must-include device's node.
    assert_eq!(
        p.preferred_allocation(&all, &ids(&["0000:af:00.3"]), 2, &[])
            .unwrap(),
        ["0000:af:00.3", "0000:af:00.2"]
    );
    // Deterministic: the order of the available list does not matter.
    let mut reversed = all.clone();
    reversed.reverse();
    assert_eq!(
        p.preferred_allocation(&reversed, &[], 3, &[0]).unwrap(),
        p.preferred_allocation(&all, &[], 3, &[0]).unwrap()
    );
    assert_eq!(
        p.preferred_allocation(&all, &[], 3, &[0]).unwrap(),
        ["0000:3b:02.0", "0000:3b:02.1", "0000:af:00.2"]
    );
}

#[test]
fn preferred_allocation_refuses_impossible_requests() {
    let dir = node();
    let p = &discover_pools(&[pool("resourceName: heddle.dev/net")], dir.path()).unwrap()[0];
    let two = ids(&["0000:3b:02.0", "0000:3b:02.1"]);
    assert!(matches!(
        p.preferred_allocation(&two, &[], 3, &[0]),
        Err(VfError::BadRequest { .. })
    ));
    assert!(matches!(
        p.preferred_allocation(&two, &two, 1, &[0]),
        Err(VfError::BadRequest { .. })
    ));
    assert!(matches!(
        p.preferred_allocation(&ids(&["0000:3b:02.2"]), &[], 1, &[0]),
        Err(VfError::NotInPool { .. })
    ));
}

#[test]
fn the_contract_config_parses_and_validates() {
    let p = pool(
        "resourceName: heddle.dev/sriov_n3\n\
         deviceType: netdevice\n\
         selectors: {vendors: ['8086'], devices: ['154c'], drivers: ['iavf'], pfNames: ['ens1f0#0-7'], rootDevices: ['0000:3b:00.0']}\n",
    );
    p.validate().unwrap();
    assert_eq!(p.device_type, DeviceType::Netdevice);
    assert_eq!(p.selectors.pf_names, ["ens1f0#0-7"]);
    assert_eq!(
        pool("resourceName: heddle.dev/a").device_type,
        DeviceType::Netdevice,
        "netdevice is the default"
    );
    // Round trip: what serialises is what parses.
    let back: VfPool = serde_yaml::from_str(&serde_yaml::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
}

#[test]
fn bad_configs_are_refused_with_the_fix() {
    let e = serde_yaml::from_str::<VfPool>("{resourceName: heddle.dev/a, deviceType: dpdk}")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("deviceType \"dpdk\" is unknown: use netdevice (VFs bound to their kernel driver) or vfio-pci"),
        "{e}"
    );
    let e =
        serde_yaml::from_str::<VfPool>("{resourceName: heddle.dev/a, selectors: {pfName: [x]}}")
            .unwrap_err()
            .to_string();
    assert!(e.contains("unknown field `pfName`"), "{e}");

    let problems = |yaml: &str| match pool(yaml).validate() {
        Err(VfError::InvalidPool { problems, .. }) => problems,
        other => panic!("{yaml}: {other:?}"),
    };
    assert_eq!(
        problems("{resourceName: heddle.dev/a, selectors: {rootDevices: ['3b:00.0']}}"),
        ["rootDevices[0] \"3b:00.0\" is not a PCI address: write the PF's full address as `lspci -D` shows it, e.g. \"0000:3b:00.0\""]
    );
    assert_eq!(
        problems("{resourceName: heddle.dev/a, selectors: {pfNames: ['ens1f0#7-0']}}"),
        ["pfNames entry \"ens1f0#7-0\": the range 7-0 runs backwards; write it low-high, 0-7"]
    );
    assert_eq!(
        problems("{resourceName: heddle.dev/a, deviceType: vfio-pci, selectors: {drivers: [iavf]}}"),
        ["deviceType vfio-pci takes only VFs bound to vfio-pci, so drivers entry \"iavf\" can never match: drop it, or use deviceType netdevice for kernel-driver VFs"]
    );
    assert!(
        problems("{resourceName: heddle.dev/a, selectors: {drivers: [vfio-pci]}}")[0]
            .starts_with("deviceType netdevice takes only VFs bound to a kernel network driver")
    );
    assert!(
        problems("{resourceName: heddle.dev/a, selectors: {drivers: ['']}}")[0]
            .starts_with("drivers[0] \"\" is not a driver name")
    );
    // Every problem at once, under the pool's name.
    let e = pool("{resourceName: sriov_n3, selectors: {vendors: ['80866'], devices: ['154c'], pfNames: ['ens1f0#'], rootDevices: ['0000:3b:00.9']}}")
        .validate()
        .unwrap_err();
    let VfError::InvalidPool { resource, problems } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(resource, "sriov_n3");
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert!(problems[0].contains("needs a domain"));
    assert!(problems[1].starts_with("vendors[0] \"80866\" is not a PCI id"));
    assert!(problems[2].contains("list VF indexes after '#'"));
    assert!(problems[3].starts_with("rootDevices[0]"));
    assert!(e
        .to_string()
        .starts_with("VF pool \"sriov_n3\": resourceName \"sriov_n3\" needs a domain"));
}

#[test]
fn duplicate_names_and_bad_pools_are_refused_before_discovery() {
    let dir = node();
    let pools = [
        pool("resourceName: heddle.dev/a"),
        pool("{resourceName: heddle.dev/a, deviceType: vfio-pci}"),
    ];
    let e = validate_pools(&pools).unwrap_err();
    assert_eq!(
        e.to_string(),
        "resourceName \"heddle.dev/a\" is used by more than one VF pool: give each pool its own name"
    );
    assert!(discover_pools(&pools, dir.path()).is_err());
    let bad = [pool(
        "{resourceName: heddle.dev/a, selectors: {vendors: [x]}}",
    )];
    assert!(matches!(
        discover_pools(&bad, dir.path()),
        Err(VfError::InvalidPool { .. })
    ));
}
