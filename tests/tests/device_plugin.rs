//! The kubelet device plugin (`heddle-manager device-plugin`) against the test kubelet and a
//! real heddle-switch: registration, ListAndWatch health following the switch, Allocate's
//! answers, re-registration after a kubelet restart, and no device handed out twice across a
//! plugin restart.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use heddle_api::{PortMode, PortSpec};
use heddle_tests::device_plugin::{config_yaml, run_device_plugin, DevicePluginProcess};
use heddle_tests::{config_yaml as switch_yaml, free_file_prefix, SwitchProcess, TestKubelet};

const VHOST: &str = "heddle.dev/vhost-user";
const MEMIF: &str = "heddle.dev/memif";
const RESOURCES: &str = "  - {name: heddle.dev/vhost-user, kind: vhost-user, count: 4}\n  - {name: heddle.dev/memif, kind: memif, count: 2}";
const WAIT: Duration = Duration::from_secs(10);

/// A switch, the test kubelet and the plugin, all in one temporary directory.
struct Node {
    dir: tempfile::TempDir,
    switch_yaml: String,
    switch: Option<SwitchProcess>,
    kubelet: TestKubelet,
    plugin: DevicePluginProcess,
}

impl Node {
    /// `extra_switch_yaml` is appended to the switch config (e.g. `max_ports: 2`).
    fn start(extra_switch_yaml: &str) -> Result<Node> {
        heddle_tests::require_dpdk_peers(256)?;
        let dir = tempfile::tempdir()?;
        let sw = dir.path().join("switch");
        std::fs::create_dir(&sw)?;
        let switch_yaml = format!(
            "{}{extra_switch_yaml}\n",
            switch_yaml(&sw, &free_file_prefix("heddle-dp"), "  []")
        );
        let switch = SwitchProcess::start(&sw, &switch_yaml)?;
        let kubelet = TestKubelet::start(&dir.path().join("kubelet"))?;
        let plugin =
            DevicePluginProcess::start(dir.path(), &Self::plugin_yaml(dir.path(), &kubelet))?;
        Ok(Node {
            switch_yaml,
            switch: Some(switch),
            kubelet,
            plugin,
            dir,
        })
    }

    fn plugin_yaml(dir: &Path, kubelet: &TestKubelet) -> String {
        config_yaml(
            &kubelet.device_plugin_dir(),
            &dir.join("devices"),
            &dir.join("switch").join("switch.sock"),
            RESOURCES,
        )
    }

    fn device_root(&self) -> PathBuf {
        self.dir.path().join("devices")
    }

    fn registered(&mut self, resource: &str, n: usize) -> Result<heddle_tests::Registration> {
        self.plugin.check_running()?;
        self.kubelet
            .wait_registered(resource, n, WAIT)
            .with_context(|| format!("plugin log:\n{}", self.plugin.log()))
    }

    fn switch_client(&self) -> heddle_api::Client {
        self.switch.as_ref().expect("switch running").client()
    }
}

/// NUMA node of a CPU according to sysfs.
fn numa_node_of_cpu(cpu: u32) -> Option<i64> {
    std::fs::read_dir(format!("/sys/devices/system/cpu/cpu{cpu}"))
        .ok()?
        .flatten()
        .find_map(|e| e.file_name().to_str()?.strip_prefix("node")?.parse().ok())
}

#[test]
fn each_resource_registers_and_lists_healthy_devices_on_the_pmd_numa_node() -> Result<()> {
    let mut node = Node::start("")?;
    let t0 = Instant::now();
    let reg = node.registered(VHOST, 1)?;
    node.registered(MEMIF, 1)?;
    println!(
        "both resources registered and listed {:?} after start",
        t0.elapsed()
    );
    assert_eq!(reg.endpoint, "heddle-heddle.dev_vhost-user.sock");
    assert!(reg.options.unwrap().get_preferred_allocation_available);
    assert!(
        node.kubelet
            .options(VHOST)
            .unwrap()
            .get_preferred_allocation_available
    );
    assert!(!node.kubelet.options(VHOST).unwrap().pre_start_required);

    let vhost = node.kubelet.devices(VHOST).unwrap();
    let ids: Vec<&str> = vhost.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "vhost-user-0",
            "vhost-user-1",
            "vhost-user-2",
            "vhost-user-3"
        ]
    );
    assert_eq!(vhost.healthy().len(), 4);
    // The switch's one PMD worker runs on CPU 1 (tests/src/switch.rs).
    let want = numa_node_of_cpu(1).context("sysfs places CPU 1 on no NUMA node")?;
    for d in &vhost.devices {
        let nodes: Vec<i64> = d
            .topology
            .as_ref()
            .unwrap()
            .nodes
            .iter()
            .map(|n| n.id)
            .collect();
        assert_eq!(nodes, vec![want], "{}", d.id);
    }
    assert_eq!(
        node.kubelet.devices(MEMIF).unwrap().healthy(),
        vec!["memif-0", "memif-1"]
    );
    // One list while nothing changes: updates are sent on change only.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        node.kubelet.updates(VHOST).len(),
        1,
        "{:?}",
        node.kubelet.updates(VHOST)
    );

    // SIGTERM: a clean exit that ends the streams and removes the plugin's sockets.
    let t = Instant::now();
    let st = node.plugin.stop()?;
    println!("plugin stopped {:?} after SIGTERM", t.elapsed());
    assert!(st.success(), "{st}\n{}", node.plugin.log());
    assert!(
        !node.plugin.log().contains("did not stop within"),
        "{}",
        node.plugin.log()
    );
    for r in [VHOST, MEMIF] {
        let socket = node
            .kubelet
            .device_plugin_dir()
            .join(node.kubelet.endpoint(r).unwrap());
        assert!(!socket.exists(), "{} left behind", socket.display());
        heddle_tests::wait_until(
            &format!("{r} stream ended"),
            WAIT,
            Duration::from_millis(10),
            || Ok(node.kubelet.stream_ended(r).then_some(())),
        )?;
    }
    Ok(())
}

#[test]
fn allocate_creates_the_device_dirs_and_names_the_container_sockets() -> Result<()> {
    let mut node = Node::start("")?;
    node.registered(VHOST, 1)?;
    node.registered(MEMIF, 1)?;
    let a = node.kubelet.allocate("vnf-a", "telco", "dpdk", VHOST, 2)?;
    // GetPreferredAllocation was asked and chose the lowest free indexes.
    assert_eq!(
        a.preferred.as_deref(),
        Some(&["vhost-user-0".to_owned(), "vhost-user-1".to_owned()][..])
    );
    assert_eq!(
        a.response.envs["HEDDLE_VHOST_USER_SOCKETS"],
        "/run/heddle/devices/vhost-user-0/vhost-user.sock,/run/heddle/devices/vhost-user-1/vhost-user.sock"
    );
    assert_eq!(
        a.response.envs["HEDDLE_VHOST_USER_DEVICES"],
        "vhost-user-0,vhost-user-1"
    );
    assert_eq!(a.response.mounts.len(), 2);
    for (m, id) in a
        .response
        .mounts
        .iter()
        .zip(["vhost-user-0", "vhost-user-1"])
    {
        assert_eq!(m.container_path, format!("/run/heddle/devices/{id}"));
        let host = node.device_root().join(id);
        assert_eq!(Path::new(&m.host_path), host);
        assert!(!m.read_only);
        let meta = std::fs::metadata(&host)
            .with_context(|| format!("{} was not created", host.display()))?;
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    }
    assert!(a.response.devices.is_empty());

    // A second pod gets the next ones; memif has its own variables.
    let b = node.kubelet.allocate("vnf-b", "telco", "dpdk", VHOST, 1)?;
    assert_eq!(b.device_ids, ["vhost-user-2"]);
    let m = node.kubelet.allocate("vnf-b", "telco", "dpdk", MEMIF, 1)?;
    assert_eq!(
        m.response.envs["HEDDLE_MEMIF_SOCKETS"],
        "/run/heddle/devices/memif-0/memif.sock"
    );
    assert_eq!(m.response.envs["HEDDLE_MEMIF_DEVICES"], "memif-0");

    // must_include is honoured; a device the plugin never listed is refused.
    let pref = node.kubelet.preferred(
        VHOST,
        &["vhost-user-3".into(), "vhost-user-2".into()],
        &["vhost-user-3".into()],
        1,
    )?;
    assert_eq!(pref, ["vhost-user-3"]);
    let err = node
        .kubelet
        .allocate_raw(VHOST, &["vhost-user-9".into()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("vhost-user-9 is not a device of heddle.dev/vhost-user"),
        "{err}"
    );
    assert!(!node.device_root().join("vhost-user-9").exists());
    Ok(())
}

#[test]
fn a_request_for_more_devices_than_the_node_has_is_refused_and_creates_nothing() -> Result<()> {
    let mut node = Node::start("")?;
    node.registered(VHOST, 1)?;
    let all: Vec<String> = (0..4).map(|i| format!("vhost-user-{i}")).collect();
    // The kubelet offers all 4 and asks for 5: GetPreferredAllocation says it cannot.
    let err = node
        .kubelet
        .preferred(VHOST, &all, &[], 5)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a preferred allocation of 5 cannot be made from 4 available devices"),
        "{err}"
    );
    // Allocate of 5 ids names the one the plugin never listed, and creates no directory,
    // not even for the 4 that exist.
    let five: Vec<String> = (0..5).map(|i| format!("vhost-user-{i}")).collect();
    let err = node
        .kubelet
        .allocate_raw(VHOST, &five)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("vhost-user-4 is not a device of heddle.dev/vhost-user"),
        "{err}"
    );
    assert!(
        !node.device_root().exists() || std::fs::read_dir(node.device_root())?.next().is_none(),
        "a refused Allocate created {:?}",
        std::fs::read_dir(node.device_root())?.collect::<Vec<_>>()
    );
    // The plugin still serves: a request that fits is answered.
    node.plugin.check_running()?;
    let a = node.kubelet.allocate("vnf-a", "telco", "dpdk", VHOST, 4)?;
    assert_eq!(a.device_ids.len(), 4);
    Ok(())
}

#[test]
fn switch_stop_and_start_reach_list_and_watch_as_all_unhealthy_then_all_healthy() -> Result<()> {
    let mut node = Node::start("")?;
    node.registered(VHOST, 1)?;
    node.registered(MEMIF, 1)?;
    assert_eq!(node.kubelet.devices(VHOST).unwrap().healthy().len(), 4);

    let stopped = Instant::now();
    node.switch.take().unwrap().stop()?;
    for r in [VHOST, MEMIF] {
        let u =
            node.kubelet
                .wait_update(r, stopped, Duration::from_secs(5), "all unhealthy", |u| {
                    u.all_unhealthy()
                })?;
        println!(
            "{r}: unhealthy {:?} after the switch stopped",
            u.at - stopped
        );
    }

    let started = Instant::now();
    let sw = node.dir.path().join("switch");
    node.switch = Some(SwitchProcess::start(&sw, &node.switch_yaml)?);
    for r in [VHOST, MEMIF] {
        let u =
            node.kubelet
                .wait_update(r, started, Duration::from_secs(5), "healthy again", |u| {
                    !u.devices.is_empty() && u.healthy().len() == u.devices.len()
                })?;
        println!(
            "{r}: healthy {:?} after the switch was started",
            u.at - started
        );
    }
    Ok(())
}

#[test]
fn port_limit_reached_marks_every_device_unhealthy() -> Result<()> {
    let mut node = Node::start("max_ports: 2")?;
    node.registered(VHOST, 1)?;
    let client = node.switch_client();
    let h = client.health()?;
    assert_eq!((h.ports, h.max_ports), (0, 2));
    let port = |i: u32| PortSpec {
        name: format!("p{i}"),
        devargs: format!("net_null{i}"),
        mode: PortMode::Access { vlan: 10 },
        mac: None,
        queues: None,
        mtu: None,
    };
    client.add_port(&port(0))?;
    let since = Instant::now();
    client.add_port(&port(1))?;
    let err = client.add_port(&port(2)).unwrap_err().to_string();
    assert!(err.contains("max_ports"), "{err}");
    let u = node.kubelet.wait_update(
        VHOST,
        since,
        Duration::from_secs(5),
        "all unhealthy at the port limit",
        |u| u.all_unhealthy(),
    )?;
    println!(
        "{VHOST}: unhealthy {:?} after the switch reached max_ports",
        u.at - since
    );
    let since = Instant::now();
    client.remove_port("p1")?;
    let u = node.kubelet.wait_update(
        VHOST,
        since,
        Duration::from_secs(5),
        "healthy below the limit",
        |u| u.healthy().len() == 4,
    )?;
    println!(
        "{VHOST}: healthy {:?} after a port was removed below max_ports",
        u.at - since
    );
    Ok(())
}

#[test]
fn kubelet_restart_is_followed_by_a_new_registration_within_two_seconds() -> Result<()> {
    let mut node = Node::start("")?;
    node.registered(VHOST, 1)?;
    node.registered(MEMIF, 1)?;
    node.kubelet.allocate("vnf-a", "telco", "dpdk", VHOST, 1)?;
    let plugin_socket = node
        .kubelet
        .device_plugin_dir()
        .join(node.kubelet.endpoint(VHOST).unwrap());

    let restarted = node.kubelet.restart()?;
    assert!(!plugin_socket.exists() || node.kubelet.registrations(VHOST).len() > 1);
    for r in [VHOST, MEMIF] {
        let reg = node.registered(r, 2)?;
        let took = reg.at - restarted;
        println!("{r}: registered again {took:?} after the kubelet restart");
        assert!(took < Duration::from_secs(2), "{r} took {took:?}");
    }
    assert!(plugin_socket.exists(), "the plugin serves a new socket");
    let log = node.plugin.log();
    assert!(log.contains("the plugin socket was removed"), "{log}");
    assert!(!log.contains("did not stop within"), "{log}");
    // The new connection works: the kubelet allocates through it, and the device the pod
    // held before the restart is not handed out again.
    let b = node.kubelet.allocate("vnf-b", "telco", "dpdk", VHOST, 1)?;
    assert_eq!(b.device_ids, ["vhost-user-1"]);
    Ok(())
}

/// The kubelet owns the allocation state (its device-manager checkpoint, which the test
/// kubelet keeps too); the plugin keeps none and learns nothing of it after a restart. What
/// the plugin must do is list the same device ids again (so the checkpoint still names the
/// held devices and the kubelet leaves them out of what it offers) and leave the held
/// devices' directories alone. This test crashes the plugin (SIGKILL, sockets left behind),
/// restarts it, and checks both, and that a second pod gets only the free devices.
#[test]
fn plugin_crash_and_restart_keep_device_ids_and_dirs_so_no_held_device_goes_to_a_second_pod(
) -> Result<()> {
    let mut node = Node::start("")?;
    node.registered(VHOST, 1)?;
    let before: Vec<String> = node
        .kubelet
        .devices(VHOST)
        .unwrap()
        .devices
        .iter()
        .map(|d| d.id.clone())
        .collect();
    let a = node.kubelet.allocate("vnf-a", "telco", "dpdk", VHOST, 2)?;
    // What the switch would have created for pod A's ports.
    for id in &a.device_ids {
        std::fs::write(node.device_root().join(id).join("vhost-user.sock"), "pod a")?;
    }

    // A crash: the plugin's sockets stay behind.
    node.plugin.kill9()?;
    node.plugin = DevicePluginProcess::start(
        node.dir.path(),
        &Node::plugin_yaml(node.dir.path(), &node.kubelet),
    )?;
    node.registered(VHOST, 2)?;
    let after: Vec<String> = node
        .kubelet
        .devices(VHOST)
        .unwrap()
        .devices
        .iter()
        .map(|d| d.id.clone())
        .collect();
    assert_eq!(after, before, "device ids are stable across restarts");

    let b = node.kubelet.allocate("vnf-b", "telco", "dpdk", VHOST, 2)?;
    for id in &b.device_ids {
        assert!(!a.device_ids.contains(id), "{id} given to both pods");
    }
    let err = node
        .kubelet
        .allocate("vnf-c", "telco", "dpdk", VHOST, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("only 0 healthy and free"), "{err}");
    // Pod A's directories kept what they held.
    for id in &a.device_ids {
        assert_eq!(
            std::fs::read_to_string(node.device_root().join(id).join("vhost-user.sock"))?,
            "pod a"
        );
    }
    Ok(())
}

#[test]
fn a_second_plugin_on_the_node_is_refused_and_the_first_keeps_serving() -> Result<()> {
    let mut node = Node::start("")?;
    node.registered(VHOST, 1)?;
    let second_dir = node.dir.path().join("second");
    std::fs::create_dir(&second_dir)?;
    let mut second = DevicePluginProcess::start(
        &second_dir,
        &Node::plugin_yaml(node.dir.path(), &node.kubelet),
    )?;
    let log = heddle_tests::wait_until(
        "the second plugin to exit",
        WAIT,
        Duration::from_millis(20),
        || Ok(second.check_running().err().map(|e| e.to_string())),
    )?;
    assert!(
        log.contains("another device plugin already serves"),
        "{log}"
    );
    // The first one still answers the kubelet.
    assert_eq!(node.kubelet.registrations(VHOST).len(), 1);
    node.plugin.check_running()?;
    node.kubelet.allocate("vnf-a", "telco", "dpdk", VHOST, 1)?;
    Ok(())
}

#[test]
fn check_accepts_a_good_config_and_names_the_fix_for_a_bad_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        config_yaml(
            &dir.path().join("dp"),
            &dir.path().join("devices"),
            Path::new("/run/heddle/switch.sock"),
            RESOURCES,
        ),
    )?;
    let (st, out) = run_device_plugin(&["--check"], &good)?;
    assert!(st.success(), "{out}");
    assert!(
        out.contains("heddle.dev/vhost-user: 4 vhost-user devices"),
        "{out}"
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "kubeletDir: {}\nresources:\n  - {{name: vhost-user, kind: vhost-user, count: 0}}\n",
            dir.path().join("dp").display()
        ),
    )?;
    for args in [&["--check"][..], &[][..]] {
        let (st, out) = run_device_plugin(args, &bad)?;
        assert!(!st.success(), "{out}");
        assert!(
            out.contains("needs a domain: write it as <domain>/<name>"),
            "{out}"
        );
        assert!(
            out.contains("count 0 is out of range: use 1 to 256"),
            "{out}"
        );
    }
    // Refused before touching anything.
    assert!(!dir.path().join("devices").exists());
    Ok(())
}

#[test]
fn vf_pools_are_served_from_sysfs_with_pcidevice_env_and_turn_unhealthy_when_their_pf_is_down_or_gone(
) -> Result<()> {
    use heddle_manager::device_plugin::vf_pool::fixture::{self, FixtureVf, Pf};
    let dir = tempfile::tempdir()?;
    let sys = dir.path().join("sys");
    fixture::create(
        &sys,
        &Pf {
            pci: "0000:3b:00.0",
            netdev: "ens1f0",
            numa_node: 1,
            vendor: "0x8086",
            vf_device: "0x154c",
            vfs: vec![
                FixtureVf {
                    pci: "0000:3b:02.0",
                    netdev: Some("ens1f0v0"),
                    driver: Some("iavf"),
                    iommu_group: None,
                },
                FixtureVf {
                    pci: "0000:3b:02.1",
                    netdev: Some("ens1f0v1"),
                    driver: Some("iavf"),
                    iommu_group: None,
                },
            ],
        },
    )?;
    fixture::create(
        &sys,
        &Pf {
            pci: "0000:5e:00.0",
            netdev: "ens2f0",
            numa_node: 0,
            vendor: "0x8086",
            vf_device: "0x154c",
            vfs: vec![FixtureVf {
                pci: "0000:5e:02.0",
                netdev: None,
                driver: Some("vfio-pci"),
                iommu_group: Some(42),
            }],
        },
    )?;
    let kubelet = TestKubelet::start(&dir.path().join("kubelet"))?;
    // No switch at all: VFs do not depend on it.
    let yaml = format!(
        "kubeletDir: {}\ndeviceRoot: {}\nswitchSocket: {}\nvfPools:\n  - {{resourceName: heddle.dev/sriov_n3, deviceType: netdevice, selectors: {{vendors: [\"8086\"], pfNames: [\"ens1f0#0-1\"]}}}}\n  - {{resourceName: heddle.dev/dpdk_n6, deviceType: vfio-pci, selectors: {{rootDevices: [\"0000:5e:00.0\"]}}}}\n",
        kubelet.device_plugin_dir().display(),
        dir.path().join("devices").display(),
        dir.path().join("no-switch.sock").display(),
    );
    let sys_arg = sys.display().to_string();
    let mut plugin =
        DevicePluginProcess::start_with_args(dir.path(), &yaml, &["--sysfs", &sys_arg])?;
    let n3 = "heddle.dev/sriov_n3";
    let n6 = "heddle.dev/dpdk_n6";
    for r in [n3, n6] {
        plugin.check_running()?;
        kubelet
            .wait_registered(r, 1, WAIT)
            .with_context(|| format!("plugin log:\n{}", plugin.log()))?;
    }
    let list = kubelet.devices(n3).unwrap();
    assert_eq!(list.healthy(), ["0000:3b:02.0", "0000:3b:02.1"]);
    for d in &list.devices {
        assert_eq!(d.topology.as_ref().unwrap().nodes[0].id, 1);
    }

    let a = kubelet.allocate("vnf-a", "telco", "upf", n3, 1)?;
    assert!(a.preferred.is_some());
    assert_eq!(
        a.response.envs["PCIDEVICE_HEDDLE_DEV_SRIOV_N3"],
        a.device_ids[0]
    );
    assert!(a.response.mounts.is_empty() && a.response.devices.is_empty());
    let v = kubelet.allocate("vnf-a", "telco", "upf", n6, 1)?;
    assert_eq!(
        v.response.envs["PCIDEVICE_HEDDLE_DEV_DPDK_N6"],
        "0000:5e:02.0"
    );
    let nodes: Vec<&str> = v
        .response
        .devices
        .iter()
        .map(|d| d.host_path.as_str())
        .collect();
    assert_eq!(nodes, ["/dev/vfio/vfio", "/dev/vfio/42"]);

    // The PF goes down: its VFs turn unhealthy, the other pool's VF does not.
    let since = Instant::now();
    fixture::set_netdev_state(&sys, "0000:3b:00.0", "ens1f0", "down", 0x1002)?;
    let u = kubelet.wait_update(
        n3,
        since,
        Duration::from_secs(5),
        "VFs of a down PF unhealthy",
        |u| u.all_unhealthy(),
    )?;
    println!("{n3}: unhealthy {:?} after its PF went down", u.at - since);
    assert_eq!(kubelet.devices(n6).unwrap().healthy(), ["0000:5e:02.0"]);
    let since = Instant::now();
    fixture::set_netdev_state(&sys, "0000:3b:00.0", "ens1f0", "up", 0x1003)?;
    kubelet.wait_update(
        n3,
        since,
        Duration::from_secs(5),
        "VFs healthy again",
        |u| u.healthy().len() == 2,
    )?;

    // The PF is gone (its driver unbound, the device removed): its VFs turn unhealthy and
    // stay listed.
    let since = Instant::now();
    std::fs::rename(
        sys.join("bus/pci/devices/0000:3b:00.0"),
        dir.path().join("removed-pf"),
    )?;
    let u = kubelet.wait_update(
        n3,
        since,
        Duration::from_secs(5),
        "VFs of a removed PF unhealthy",
        |u| u.all_unhealthy() && u.devices.len() == 2,
    )?;
    println!(
        "{n3}: unhealthy {:?} after its PF was removed",
        u.at - since
    );
    assert_eq!(kubelet.devices(n6).unwrap().healthy(), ["0000:5e:02.0"]);
    plugin.check_running()?;
    Ok(())
}
