//! The device-plugin handoff end to end: the test kubelet allocates vhost-user devices from
//! the real device plugin (`heddle-manager device-plugin`) beside a real heddle-switch;
//! heddle-cni ADD puts the switch's socket into the device the kubelet chose (named by
//! `runtimeConfig.deviceID` as Multus passes it, or found through the kubelet's PodResources
//! API from the config's `resourceName`); each pod's view is a mount namespace made as a
//! container runtime makes it from the `Allocate` answer (a fresh `/run`, every allocated
//! host directory bind-mounted at its container path, the host device root hidden), and a
//! dpdk-testpmd virtio-user peer inside it, given only the container-side socket path from
//! the answer's environment, passes traffic through the switch to the other pod. DEL leaves
//! the device directories empty. The same for memif devices: two pods with a memif client
//! each, on the memif devices the kubelet allocated.
//!
//! Needs root, dpdk-testpmd, util-linux `unshare` and `mount`, about 800 MiB of free 2 MiB
//! hugepages, and the binaries built (`cargo build --workspace --bins`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use heddle_tests::cni::CniPlugin;
use heddle_tests::device_plugin::{self, DevicePluginProcess};
use heddle_tests::{
    exclusive_cpus, require_dpdk_peers, require_tool, wait_until, Allocation, ForwardMode,
    SwitchProcess, TestKubelet, Testpmd,
};
use serde_json::{json, Value};

const RESOURCE: &str = "heddle.dev/vhost-user";
const DEVICES: usize = 4;
/// The Allocate answer's variable naming the container-side sockets.
const SOCKETS_ENV: &str = "HEDDLE_VHOST_USER_SOCKETS";
/// Printed by the pod's mount namespace set-up once the pod sees what it should.
const VIEW_OK: &str = "heddle-pod-view: devices at their container paths, host device root hidden";

/// A wrapper that makes a container's view of the allocated devices and execs its
/// arguments: a private mount namespace (`unshare -m`, propagation private, so nothing leaks
/// to the host), a fresh tmpfs on `/run` (the container's own), every mount of the
/// `Allocate` answer bind-mounted at its container path, then a tmpfs over `hide` (the host
/// device root) so the pod can reach its devices only where a container finds them. It
/// checks that view and prints [`VIEW_OK`] before it execs, or exits 97.
fn pod_view(alloc: &Allocation, hide: &Path) -> Vec<String> {
    let mut script = String::from("set -e\nmount -t tmpfs -o mode=0755 pod-run /run\n");
    for m in &alloc.response.mounts {
        script.push_str(&format!(
            "mkdir -p '{c}'\nmount --bind '{h}' '{c}'\n",
            c = m.container_path,
            h = m.host_path
        ));
    }
    script.push_str(&format!(
        "mount -t tmpfs -o mode=0700 hidden '{}'\n",
        hide.display()
    ));
    for m in &alloc.response.mounts {
        script.push_str(&format!(
            "[ -d '{c}' ] && [ ! -e '{h}' ] || {{ echo 'pod view: {c} missing or {h} visible'; exit 97; }}\n",
            c = m.container_path,
            h = m.host_path
        ));
    }
    script.push_str(&format!("echo '{VIEW_OK}'\nexec \"$@\"\n"));
    [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "pod",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A heddle-cni vhost-user config on VLAN 300 with every directory in `dir`.
fn conf(dir: &Path, switch: &Path, device_root: &Path, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.1.0", "name": "n3", "type": "heddle-cni",
        "kind": "vhost-user", "vlan": 300,
        "socketDir": dir.join("pods"), "stateDir": dir.join("cni-state"),
        "switchSocket": switch, "deviceRoot": device_root,
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        c[k] = v.clone();
    }
    c
}

/// The CNI_ARGS the kubelet (through Multus) gives a pod's attachments.
fn pod_args(pod: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=tenant;K8S_POD_NAME={pod}")
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n != ".lock"))
        .collect()
}

/// The port a pod's testpmd opens on its container-side socket.
#[derive(Clone, Copy)]
enum PodPort {
    /// A virtio-user port (the switch is the vhost-user server).
    VirtioUser,
    /// A memif client (the switch is the memif server).
    Memif,
}

/// A pod's testpmd: one `port` on `socket` (a container path) with `mac`, mac forwarding to
/// `peer`, run inside `view`.
fn pod_testpmd(
    name: &str,
    view: Vec<String>,
    port: PodPort,
    socket: &str,
    mac: &str,
    peer: &str,
) -> Result<Testpmd> {
    let builder = Testpmd::builder(name).cpu(0).wrapper(&view);
    let builder = match port {
        PodPort::VirtioUser => builder.virtio_user(socket, mac, false),
        PodPort::Memif => builder.memif(socket, false, 0, mac),
    };
    let mut tp = builder
        .forward_mode(ForwardMode::Mac)
        .eth_peer(0, peer)
        .spawn()?;
    tp.wait_ready(Duration::from_secs(20))
        .with_context(|| tp.log_tail(20))?;
    tp.wait_link_up(0, Duration::from_secs(10))?;
    ensure!(tp.log().contains(VIEW_OK), "{}", tp.log_tail(20));
    Ok(tp)
}

/// Starts `b`, then `a` with a first burst, waits until each received more than 1,000
/// frames from the other through the switch, and shuts both down.
fn pass_traffic(mut a: Testpmd, mut b: Testpmd, what: &str, switch: &SwitchProcess) -> Result<()> {
    b.start()?;
    a.start_tx_first()?;
    let min_rx = 1_000;
    wait_until(
        &format!("traffic both ways between the {what} through the switch"),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let (ra, rb) = (
                a.port_stats()?[&0].rx_packets,
                b.port_stats()?[&0].rx_packets,
            );
            Ok((ra > min_rx && rb > min_rx).then_some((ra, rb)))
        },
    )
    .with_context(|| format!("switch log:\n{}", switch.log()))?;
    a.stop()?;
    b.stop()?;
    let (ra, rb) = (
        a.port_stats()?[&0].rx_packets,
        b.port_stats()?[&0].rx_packets,
    );
    eprintln!("{what}: a received {ra}, b received {rb} through the switch");
    a.shutdown()?;
    b.shutdown()?;
    Ok(())
}

#[test]
fn pods_reach_each_other_through_the_vhost_user_devices_the_kubelet_allocated() -> Result<()> {
    require_dpdk_peers(800)?;
    for tool in ["unshare", "mount"] {
        require_tool(tool).context("unshare and mount come from the Debian package util-linux")?;
    }
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let device_root = dir.path().join("devices");
    let switch = SwitchProcess::start_with_ports(dir.path(), "  []")?;
    let kubelet = TestKubelet::start(&dir.path().join("kubelet"))?;
    let started = Instant::now();
    let plugin = DevicePluginProcess::start(
        dir.path(),
        &device_plugin::config_yaml(
            &kubelet.device_plugin_dir(),
            &device_root,
            &switch.socket(),
            &format!("  - {{name: {RESOURCE}, kind: vhost-user, count: {DEVICES}}}"),
        ),
    )?;
    kubelet
        .wait_registered(RESOURCE, 1, Duration::from_secs(20))
        .with_context(|| plugin.log())?;
    kubelet
        .wait_update(
            RESOURCE,
            started,
            Duration::from_secs(10),
            "every device healthy (the switch is up)",
            |u| u.healthy().len() == DEVICES,
        )
        .with_context(|| plugin.log())?;
    let cni = CniPlugin::heddle()?;

    // Pod A gets one device; Multus passes its id as runtimeConfig.deviceID.
    let alloc_a = kubelet.allocate("vnf-a", "tenant", "dpdk", RESOURCE, 1)?;
    let id_a = alloc_a.device_ids[0].clone();
    let mount_a = &alloc_a.response.mounts[0];
    let host_dir_a = PathBuf::from(&mount_a.host_path);
    ensure!(host_dir_a == device_root.join(&id_a) && host_dir_a.is_dir());
    ensure!(
        mount_a.container_path == format!("/run/heddle/devices/{id_a}"),
        "{mount_a:?}"
    );
    let pod_sock_a = alloc_a.response.envs[SOCKETS_ENV].clone();
    ensure!(pod_sock_a == format!("{}/vhost-user.sock", mount_a.container_path));
    let info_a = dir.path().join("devinfo/a.json");
    let conf_a = conf(
        dir.path(),
        &switch.socket(),
        &device_root,
        json!({"runtimeConfig": {"deviceID": id_a, "CNIDeviceInfoFile": info_a}}),
    );
    let cni_a = cni.clone().with_env("CNI_ARGS", &pod_args("vnf-a"));
    let a = cni_a.ok("ADD", "sandbox-a", "net1", "/run/netns/none", &conf_a)?;
    let host_sock_a = host_dir_a.join("vhost-user.sock");
    ensure!(
        a["interfaces"][0]["socketPath"] == host_sock_a.display().to_string(),
        "the result names the host path: {a}"
    );
    let info: Value = serde_json::from_slice(&std::fs::read(&info_a)?)?;
    ensure!(
        info["vhost-user"] == json!({"mode": "client", "path": pod_sock_a}),
        "device-info names the container path: {info}"
    );
    ensure!(
        host_sock_a.exists(),
        "the switch bound {}",
        host_sock_a.display()
    );

    // Pod B gets two devices and no deviceID: heddle-cni asks the kubelet's PodResources
    // API (resourceName in the config) and gives each interface its own.
    let alloc_b = kubelet.allocate("vnf-b", "tenant", "dpdk", RESOURCE, 2)?;
    let conf_b = conf(
        dir.path(),
        &switch.socket(),
        &device_root,
        json!({"resourceName": RESOURCE, "podResourcesSocket": kubelet.pod_resources_socket()}),
    );
    let cni_b = cni.clone().with_env("CNI_ARGS", &pod_args("vnf-b"));
    let b1 = cni_b.ok("ADD", "sandbox-b", "net1", "/run/netns/none", &conf_b)?;
    let b2 = cni_b.ok("ADD", "sandbox-b", "net2", "/run/netns/none", &conf_b)?;
    let sock = |r: &Value| PathBuf::from(r["interfaces"][0]["socketPath"].as_str().unwrap_or(""));
    let ids_b: Vec<String> = alloc_b.device_ids.clone();
    ensure!(
        sock(&b1) == device_root.join(&ids_b[0]).join("vhost-user.sock")
            && sock(&b2) == device_root.join(&ids_b[1]).join("vhost-user.sock"),
        "net1 and net2 take the pod's devices in the kubelet's order: {b1} {b2} {ids_b:?}"
    );
    let pod_socks_b: Vec<String> = alloc_b.response.envs[SOCKETS_ENV]
        .split(',')
        .map(str::to_owned)
        .collect();
    ensure!(pod_socks_b.len() == 2, "{pod_socks_b:?}");
    // A third interface finds both taken.
    let r = cni_b.call("ADD", "sandbox-b", "net3", "/run/netns/none", &conf_b)?;
    ensure!(!r.ok && r.code() == Some(7), "{:?}", r);
    ensure!(
        r.json["msg"]
            .as_str()
            .unwrap_or("")
            .contains("request one more"),
        "{}",
        r.json
    );

    // The pods: each testpmd knows only its container path.
    let mac = |r: &Value| r["interfaces"][0]["mac"].as_str().unwrap_or("").to_owned();
    let (mac_a, mac_b) = (mac(&a), mac(&b1));
    let pod_b = pod_testpmd(
        "handoff-b",
        pod_view(&alloc_b, &device_root),
        PodPort::VirtioUser,
        &pod_socks_b[0],
        &mac_b,
        &mac_a,
    )?;
    let pod_a = pod_testpmd(
        "handoff-a",
        pod_view(&alloc_a, &device_root),
        PodPort::VirtioUser,
        &pod_sock_a,
        &mac_a,
        &mac_b,
    )?;
    pass_traffic(pod_a, pod_b, "vhost-user pods", &switch)?;

    // DEL (twice, the first without a netns) empties the device directories and keeps them
    // for the device plugin; nothing else is left.
    for _ in 0..2 {
        cni_a.ok("DEL", "sandbox-a", "net1", "", &conf_a)?;
        cni_b.ok("DEL", "sandbox-b", "net1", "", &conf_b)?;
        cni_b.ok("DEL", "sandbox-b", "net2", "", &conf_b)?;
    }
    for id in std::iter::once(&id_a).chain(&ids_b) {
        let d = device_root.join(id);
        ensure!(
            d.is_dir() && entries(&d).is_empty(),
            "{}: {:?}",
            d.display(),
            entries(&d)
        );
    }
    ensure!(
        switch.port_names()?.is_empty(),
        "{:?}",
        switch.port_names()?
    );
    ensure!(entries(&dir.path().join("cni-state")).is_empty());
    ensure!(!info_a.exists(), "the device-info file is removed");
    ensure!(
        !dir.path().join("pods").exists(),
        "no pod socket directory is made for a device attachment"
    );
    Ok(())
}

#[test]
fn pods_reach_each_other_through_the_memif_devices_the_kubelet_allocated() -> Result<()> {
    const MEMIF: &str = "heddle.dev/memif";
    const MEMIF_ENV: &str = "HEDDLE_MEMIF_SOCKETS";
    require_dpdk_peers(800)?;
    for tool in ["unshare", "mount"] {
        require_tool(tool).context("unshare and mount come from the Debian package util-linux")?;
    }
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let device_root = dir.path().join("devices");
    let switch = SwitchProcess::start_with_ports(dir.path(), "  []")?;
    let kubelet = TestKubelet::start(&dir.path().join("kubelet"))?;
    let started = Instant::now();
    let plugin = DevicePluginProcess::start(
        dir.path(),
        &device_plugin::config_yaml(
            &kubelet.device_plugin_dir(),
            &device_root,
            &switch.socket(),
            &format!("  - {{name: {MEMIF}, kind: memif, count: 2}}"),
        ),
    )?;
    kubelet
        .wait_registered(MEMIF, 1, Duration::from_secs(20))
        .with_context(|| plugin.log())?;
    kubelet
        .wait_update(
            MEMIF,
            started,
            Duration::from_secs(10),
            "both memif devices healthy (the switch is up)",
            |u| u.healthy().len() == 2,
        )
        .with_context(|| plugin.log())?;
    let cni = CniPlugin::heddle()?;
    let memif_conf = |extra: Value| {
        let mut c = conf(dir.path(), &switch.socket(), &device_root, extra);
        c["kind"] = json!("memif");
        c["ringSize"] = json!(1024);
        c
    };

    // Pod A: Multus passes the device as runtimeConfig.deviceID.
    let alloc_a = kubelet.allocate("memif-a", "tenant", "dpdk", MEMIF, 1)?;
    let id_a = alloc_a.device_ids[0].clone();
    let pod_sock_a = alloc_a.response.envs[MEMIF_ENV].clone();
    ensure!(
        pod_sock_a == format!("/run/heddle/devices/{id_a}/memif.sock"),
        "{pod_sock_a}"
    );
    let conf_a = memif_conf(json!({"runtimeConfig": {"deviceID": id_a}}));
    let cni_a = cni.clone().with_env("CNI_ARGS", &pod_args("memif-a"));
    let a = cni_a.ok("ADD", "sandbox-a", "net1", "/run/netns/none", &conf_a)?;
    let host_sock_a = device_root.join(&id_a).join("memif.sock");
    ensure!(
        a["interfaces"][0]["socketPath"] == host_sock_a.display().to_string()
            && host_sock_a.exists(),
        "the switch's memif socket is in the device directory: {a}"
    );

    // Pod B: no deviceID; heddle-cni asks the kubelet's PodResources API.
    let alloc_b = kubelet.allocate("memif-b", "tenant", "dpdk", MEMIF, 1)?;
    let id_b = alloc_b.device_ids[0].clone();
    ensure!(id_b != id_a, "two pods, one device: {id_a}");
    let conf_b = memif_conf(
        json!({"resourceName": MEMIF, "podResourcesSocket": kubelet.pod_resources_socket()}),
    );
    let cni_b = cni.clone().with_env("CNI_ARGS", &pod_args("memif-b"));
    let b = cni_b.ok("ADD", "sandbox-b", "net1", "/run/netns/none", &conf_b)?;
    ensure!(
        b["interfaces"][0]["socketPath"]
            == device_root
                .join(&id_b)
                .join("memif.sock")
                .display()
                .to_string(),
        "pod B's socket is in the device the kubelet gave it ({id_b}): {b}"
    );

    // The pods: each testpmd knows only its container path.
    let mac = |r: &Value| r["interfaces"][0]["mac"].as_str().unwrap_or("").to_owned();
    let (mac_a, mac_b) = (mac(&a), mac(&b));
    let pod_b = pod_testpmd(
        "memif-b",
        pod_view(&alloc_b, &device_root),
        PodPort::Memif,
        &alloc_b.response.envs[MEMIF_ENV],
        &mac_b,
        &mac_a,
    )?;
    let pod_a = pod_testpmd(
        "memif-a",
        pod_view(&alloc_a, &device_root),
        PodPort::Memif,
        &pod_sock_a,
        &mac_a,
        &mac_b,
    )?;
    pass_traffic(pod_a, pod_b, "memif pods", &switch)?;

    for _ in 0..2 {
        cni_a.ok("DEL", "sandbox-a", "net1", "", &conf_a)?;
        cni_b.ok("DEL", "sandbox-b", "net1", "", &conf_b)?;
    }
    for id in [&id_a, &id_b] {
        let d = device_root.join(id);
        ensure!(
            d.is_dir() && entries(&d).is_empty(),
            "{}: {:?}",
            d.display(),
            entries(&d)
        );
    }
    ensure!(
        switch.port_names()?.is_empty(),
        "{:?}",
        switch.port_names()?
    );
    ensure!(entries(&dir.path().join("cni-state")).is_empty());
    Ok(())
}
