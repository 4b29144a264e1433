//! heddle-cni, the real binary, against a real heddle-switch: vhost-user and memif
//! attachments carrying dpdk-testpmd traffic, kernel (veth) attachments in two network
//! namespaces pinging each other through the switch with host-local IPAM, concurrent ADDs
//! and DELs, GC, STATUS with the daemon up and down. (ADD/DEL latency against the reference
//! `bridge` plugin is a measurement, not a test: `benches/cni-latency.sh`.)
//!
//! Needs root, dpdk-testpmd, about 600 MiB of free 2 MiB hugepages, the binaries built
//! (`cargo build --workspace --bins`), and Debian's `containernetworking-plugins` (host-local,
//! in /usr/lib/cni) for the kernel tests.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use heddle_tests::cni::{require_reference_plugin, CniPlugin};
use heddle_tests::{
    exclusive_cpus, require_dpdk_peers, require_tool, run_loop, wait_until, ForwardMode, Netns,
    SwitchProcess, Testpmd,
};
use serde_json::{json, Value};

/// A heddle-cni network config whose directories all live in `dir`.
fn conf(dir: &Path, switch_socket: &Path, kind: &str, vlan: u16, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.1.0",
        "name": "n3",
        "type": "heddle-cni",
        "kind": kind,
        "vlan": vlan,
        "socketDir": dir.join("pods"),
        "stateDir": dir.join("cni-state"),
        "switchSocket": switch_socket,
    });
    if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    c
}

/// Files left in `dir/cni-state` (other than the lock) and entries in `dir/pods`.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    for sub in ["cni-state", "pods"] {
        for e in std::fs::read_dir(dir.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name != ".lock" {
                out.push(format!("{sub}/{name}"));
            }
        }
    }
    out
}

#[test]
fn vhost_user_and_memif_attachments_carry_traffic_and_del_twice_leaves_nothing() -> Result<()> {
    require_dpdk_peers(600)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start_with_ports(dir.path(), "  []")?;
    let cni = CniPlugin::heddle()?;
    let info_a = dir.path().join("devinfo/a.json");
    let info_b = dir.path().join("devinfo/b.json");
    let conf_a = conf(
        dir.path(),
        &switch.socket(),
        "vhost-user",
        100,
        json!({"runtimeConfig": {"CNIDeviceInfoFile": info_a}}),
    );
    let conf_b = conf(
        dir.path(),
        &switch.socket(),
        "memif",
        100,
        json!({"ringSize": 1024, "runtimeConfig": {"CNIDeviceInfoFile": info_b}}),
    );
    let a = cni.ok("ADD", "pod-a", "net1", "/run/netns/none", &conf_a)?;
    let b = cni.ok("ADD", "pod-b", "net1", "/run/netns/none", &conf_b)?;
    let sock = |r: &Value| r["interfaces"][0]["socketPath"].as_str().map(str::to_owned);
    let mac = |r: &Value| r["interfaces"][0]["mac"].as_str().map(str::to_owned);
    let (sa, ma) = (sock(&a).context("socketPath")?, mac(&a).context("mac")?);
    let (sb, mb) = (sock(&b).context("socketPath")?, mac(&b).context("mac")?);
    let info: Value = serde_json::from_slice(&std::fs::read(&info_a)?)?;
    ensure!(
        info["type"] == "vhost-user" && info["vhost-user"]["path"] == sa.as_str(),
        "{info}"
    );
    let info: Value = serde_json::from_slice(&std::fs::read(&info_b)?)?;
    ensure!(
        info["type"] == "memif" && info["memif"]["role"] == "slave",
        "{info}"
    );
    // A repeated ADD gives the same answer.
    ensure!(cni.ok("ADD", "pod-a", "net1", "/run/netns/none", &conf_a)? == a);
    cni.ok("CHECK", "pod-a", "net1", "/run/netns/none", &conf_a)?;

    // The pods: one testpmd with a virtio-user port on a's socket and a memif client on b's,
    // each addressing frames to the other.
    let mut gen = Testpmd::builder("cni-pods")
        .cpu(0)
        .virtio_user(&sa, &ma, false)
        .memif(&sb, false, 0, &mb)
        .forward_mode(ForwardMode::Mac)
        .eth_peer(0, &mb)
        .eth_peer(1, &ma)
        .spawn()?;
    gen.wait_ready(Duration::from_secs(20))?;
    gen.wait_link_up(0, Duration::from_secs(10))?;
    gen.wait_link_up(1, Duration::from_secs(10))?;
    let stats = run_loop(&mut gen, 5_000, Duration::from_secs(20))
        .with_context(|| format!("switch log:\n{}", switch.log()))?;
    eprintln!(
        "vhost-user pod received {}, memif pod received {}",
        stats[&0].rx_packets, stats[&1].rx_packets
    );
    gen.shutdown()?;

    for _ in 0..2 {
        cni.ok("DEL", "pod-a", "net1", "", &conf_a)?;
        cni.ok("DEL", "pod-b", "net1", "", &conf_b)?;
    }
    ensure!(
        switch.port_names()?.is_empty(),
        "{:?}",
        switch.port_names()?
    );
    ensure!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    ensure!(
        !info_a.exists() && !info_b.exists(),
        "device-info files left"
    );
    ensure!(!Path::new(&sa).exists() && !Path::new(&sb).exists());
    Ok(())
}

/// IPs (without prefix) of a result.
fn result_ip(r: &Value) -> Option<String> {
    r["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .map(str::to_owned)
}

#[test]
fn kernel_attachments_in_two_netns_ping_through_the_switch() -> Result<()> {
    require_dpdk_peers(300)?;
    require_reference_plugin("host-local")?;
    require_tool("ping").context("ping comes from the Debian package iputils-ping")?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start_with_ports(dir.path(), "  []")?;
    let cni = CniPlugin::heddle()?;
    let c = conf(
        dir.path(),
        &switch.socket(),
        "kernel",
        200,
        json!({"mtu": 1500, "ipam": {
            "type": "host-local", "subnet": "10.77.0.0/24",
            "dataDir": dir.path().join("ipam"),
            "routes": [{"dst": "10.78.0.0/16"}], "gateway": "10.77.0.1"
        }}),
    );
    let (ns1, ns2) = (Netns::unique("cni-k1")?, Netns::unique("cni-k2")?);
    let p1 = ns1.path().display().to_string();
    let p2 = ns2.path().display().to_string();
    let r1 = cni.ok("ADD", "kpod-1", "eth0", &p1, &c)?;
    let r2 = cni.ok("ADD", "kpod-2", "eth0", &p2, &c)?;
    let (ip1, ip2) = (result_ip(&r1).context("ip")?, result_ip(&r2).context("ip")?);
    ensure!(ip1 != ip2);
    ensure!(r1["interfaces"][1]["sandbox"] == p1.as_str(), "{r1}");
    let shown = ns1.exec(&["ip", "-o", "addr", "show", "dev", "eth0"])?;
    ensure!(shown.contains(&ip1), "{shown}");
    let routes = ns1.exec(&["ip", "route"])?;
    ensure!(routes.contains("10.78.0.0/16 via 10.77.0.1"), "{routes}");
    cni.ok("CHECK", "kpod-1", "eth0", &p1, &c)?;

    wait_until(
        "ping from pod 1 to pod 2 through the switch",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || Ok(ns1.exec(&["ping", "-c", "1", "-W", "1", &ip2]).ok()),
    )
    .with_context(|| format!("switch log:\n{}", switch.log()))?;
    let out = ns2.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", &ip1])?;
    ensure!(out.contains(" 0% packet loss"), "{out}");

    let host1 = r1["interfaces"][0]["name"]
        .as_str()
        .context("host veth")?
        .to_owned();
    // DEL without a netns (containerd does that), twice.
    for _ in 0..2 {
        cni.ok("DEL", "kpod-1", "eth0", "", &c)?;
        cni.ok("DEL", "kpod-2", "eth0", &p2, &c)?;
    }
    ensure!(
        !Path::new("/sys/class/net").join(&host1).exists(),
        "{host1} left"
    );
    ensure!(switch.port_names()?.is_empty());
    ensure!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    let leases: Vec<String> = std::fs::read_dir(dir.path().join("ipam/n3"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    ensure!(leases.is_empty(), "host-local leases left: {leases:?}");
    Ok(())
}

#[test]
fn fifty_concurrent_adds_then_dels_have_no_duplicates_or_leftovers() -> Result<()> {
    require_dpdk_peers(300)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start_with_ports(dir.path(), "  []")?;
    let cni = CniPlugin::heddle()?;
    let c = conf(dir.path(), &switch.socket(), "vhost-user", 300, json!({}));
    // 50 native vhost-user attachments (more than DPDK's 32 ethdevs would allow);
    // HEDDLE_CNI_CONCURRENT changes the count.
    let n: usize = std::env::var("HEDDLE_CNI_CONCURRENT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let run_all = |cmd: &'static str| -> Result<Vec<Value>> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let (cni, c) = (cni.clone(), c.clone());
                    s.spawn(move || cni.ok(cmd, &format!("conc-{i}"), "net1", "/run/netns/x", &c))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| anyhow::anyhow!("thread panicked"))?)
                .collect()
        })
    };
    let added = run_all("ADD")?;
    let sockets: BTreeSet<_> = added
        .iter()
        .map(|r| r["interfaces"][0]["socketPath"].to_string())
        .collect();
    let macs: BTreeSet<_> = added
        .iter()
        .map(|r| r["interfaces"][0]["mac"].to_string())
        .collect();
    ensure!(
        sockets.len() == n && macs.len() == n,
        "duplicates: {sockets:?} {macs:?}"
    );
    for s in &sockets {
        let p = s.trim_matches('"');
        ensure!(std::fs::metadata(p).is_ok(), "socket {p} missing");
    }
    ensure!(switch.port_names()?.len() == n);
    run_all("DEL")?;
    ensure!(
        switch.port_names()?.is_empty(),
        "{:?}",
        switch.port_names()?
    );
    ensure!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    Ok(())
}

#[test]
fn status_gc_and_daemon_down_through_the_binary() -> Result<()> {
    require_dpdk_peers(300)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let cni = CniPlugin::heddle()?;

    // Daemon down: ADD says "try again later" (11) and leaves nothing; STATUS says 50.
    let down = conf(
        dir.path(),
        &dir.path().join("none.sock"),
        "vhost-user",
        10,
        json!({}),
    );
    let r = cni.call("ADD", "d1", "net1", "/run/netns/x", &down)?;
    ensure!(!r.ok && r.code() == Some(11), "{:?}", r);
    ensure!(r.json["msg"].as_str().is_some() && r.json["details"].as_str().is_some());
    ensure!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    let r = cni.call("STATUS", "", "", "", &down)?;
    ensure!(!r.ok && r.code() == Some(50), "{:?}", r);
    // Malformed input: its code, JSON only on stdout.
    let mut bad = down.clone();
    bad["vlan"] = json!(4095);
    let r = cni.call("ADD", "d1", "net1", "/run/netns/x", &bad)?;
    ensure!(r.code() == Some(7), "{:?}", r);
    let r = cni.call("ADD", "d1", "../net1", "/run/netns/x", &down)?;
    ensure!(r.code() == Some(4), "{:?}", r);
    let r = cni.call("VERSION", "", "", "", &json!({"cniVersion": "1.0.0"}))?;
    ensure!(
        r.ok && r.json["supportedVersions"].as_array().map(Vec::len) == Some(3),
        "{:?}",
        r
    );

    let switch = SwitchProcess::start_with_ports(dir.path(), "  []")?;
    let c = conf(dir.path(), &switch.socket(), "vhost-user", 10, json!({}));
    let r = cni.call("STATUS", "", "", "", &c)?;
    ensure!(r.ok && r.json.is_null(), "{:?}", r);
    for id in ["g1", "g2", "g3"] {
        cni.ok("ADD", id, "net1", "/run/netns/x", &c)?;
    }
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "g2", "ifname": "net1"}]);
    cni.ok("GC", "", "", "", &gc)?;
    ensure!(
        switch.port_names()? == vec!["cni/g2/net1".to_owned()],
        "{:?}",
        switch.port_names()?
    );
    cni.ok("DEL", "g2", "net1", "", &c)?;
    ensure!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    Ok(())
}

#[test]
fn vhost_user_switch_as_client_reaches_a_pod_that_listens() -> Result<()> {
    require_dpdk_peers(600)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start_with_ports(dir.path(), "  []")?;
    let cni = CniPlugin::heddle()?;
    let info = dir.path().join("devinfo/c.json");
    let client = conf(
        dir.path(),
        &switch.socket(),
        "vhost-user",
        110,
        json!({"vhostMode": "client", "runtimeConfig": {"CNIDeviceInfoFile": info}}),
    );
    let server = conf(dir.path(), &switch.socket(), "vhost-user", 110, json!({}));
    let a = cni.ok("ADD", "pod-c", "net1", "/run/netns/none", &client)?;
    let b = cni.ok("ADD", "pod-s", "net1", "/run/netns/none", &server)?;
    let di: Value = serde_json::from_slice(&std::fs::read(&info)?)?;
    ensure!(di["vhost-user"]["mode"] == "server", "{di}");
    let field = |r: &Value, f: &str| r["interfaces"][0][f].as_str().map(str::to_owned);
    let (sa, ma) = (
        field(&a, "socketPath").context("socketPath")?,
        field(&a, "mac").context("mac")?,
    );
    let (sb, mb) = (
        field(&b, "socketPath").context("socketPath")?,
        field(&b, "mac").context("mac")?,
    );
    // Pod a listens (virtio-user server=1): testpmd waits in EAL init until the switch,
    // reconnecting as a vhost-user client, comes in.
    let mut gen = Testpmd::builder("cni-pod-server")
        .cpu(0)
        .virtio_user(&sa, &ma, true)
        .virtio_user(&sb, &mb, false)
        .forward_mode(ForwardMode::Mac)
        .eth_peer(0, &mb)
        .eth_peer(1, &ma)
        .spawn()?;
    gen.wait_ready(Duration::from_secs(30))
        .with_context(|| format!("switch log:\n{}", switch.log()))?;
    gen.wait_link_up(0, Duration::from_secs(10))?;
    gen.wait_link_up(1, Duration::from_secs(10))?;
    run_loop(&mut gen, 5_000, Duration::from_secs(20))?;
    gen.shutdown()?;
    cni.ok("DEL", "pod-c", "net1", "", &client)?;
    cni.ok("DEL", "pod-s", "net1", "", &server)?;
    ensure!(switch.port_names()?.is_empty());
    ensure!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    ensure!(!info.exists());
    Ok(())
}

#[test]
fn dpdk_vhost_user_socket_gets_the_owner_group_and_mode_by_name() -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    require_dpdk_peers(300)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start_with_ports(dir.path(), "  []")?;
    let cni = CniPlugin::heddle()?;
    let c = conf(
        dir.path(),
        &switch.socket(),
        "vhost-user",
        120,
        json!({"backend": "dpdk", "socketOwner": "nobody", "socketGroup": "nogroup", "socketMode": "0640"}),
    );
    let r = cni.ok("ADD", "own-pod", "net1", "/run/netns/none", &c)?;
    let sock = r["interfaces"][0]["socketPath"]
        .as_str()
        .context("socketPath")?
        .to_owned();
    // The node's own ids of `nobody` and `nogroup` (65534 on Debian), from its databases.
    let id_of = |db: &str, name: &str| -> Result<u32> {
        std::fs::read_to_string(db)?
            .lines()
            .find_map(|l| {
                let mut f = l.split(':');
                (f.next() == Some(name)).then(|| f.nth(1)?.parse().ok())?
            })
            .with_context(|| format!("{name} is not in {db}"))
    };
    let (uid, gid) = (
        id_of("/etc/passwd", "nobody")?,
        id_of("/etc/group", "nogroup")?,
    );
    ensure!(
        gid != 0,
        "nogroup must not be root's group for this test to mean anything"
    );
    let meta = std::fs::metadata(&sock)?;
    ensure!(
        (meta.uid(), meta.gid(), meta.permissions().mode() & 0o777) == (uid, gid, 0o640),
        "socket uid {} gid {} mode {:o}, want {uid} {gid} 640",
        meta.uid(),
        meta.gid(),
        meta.permissions().mode()
    );
    let parent = Path::new(&sock).parent().context("socket dir")?;
    let dmeta = std::fs::metadata(parent)?;
    ensure!(
        (dmeta.uid(), dmeta.gid(), dmeta.permissions().mode() & 0o777) == (uid, gid, 0o750),
        "dir uid {} gid {} mode {:o}, want {uid} {gid} 750",
        dmeta.uid(),
        dmeta.gid(),
        dmeta.permissions().mode()
    );
    cni.ok("DEL", "own-pod", "net1", "", &c)?;
    // An owner the node does not know: code 7 naming the key, nothing created.
    let mut bad = c.clone();
    bad["socketOwner"] = json!("no-such-user-heddle");
    let r = cni.call("ADD", "own-pod", "net1", "/run/netns/none", &bad)?;
    ensure!(
        r.code() == Some(7)
            && r.json["msg"]
                .as_str()
                .unwrap_or_default()
                .contains("socketOwner"),
        "{:?}",
        r
    );
    ensure!(switch.port_names()?.is_empty());
    ensure!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    Ok(())
}
