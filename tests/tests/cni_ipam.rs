//! `heddle-ipam` (heddle-manager run through its symlink) as a real CNI IPAM plugin in
//! embedded mode: run directly as a runtime would, and delegated to by the real heddle-cni
//! for vhost-user attachments on a real heddle-switch. Leases are read back with
//! `heddle-manager embedded show`, as an operator would.
//!
//! The direct tests need only the binaries built (`cargo build --workspace --bins`); the
//! heddle-cni tests also need root, dpdk-testpmd and hugepages for the switch, and `ping`
//! (iputils-ping) for the kernel one.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use heddle_tests::cni::CniPlugin;
use heddle_tests::{
    exclusive_cpus, require_dpdk_peers, require_tool, wait_until, workspace_binary, Netns,
    SwitchProcess,
};
use serde_json::{json, Value};

const NETWORKS: &str = "\
providers:
  physnet: {interface: uplink0, vlanPool: [{start: 100, end: 199}]}
networks:
  red: {kind: vhost-user, provider: physnet, ipv4: {cidr: 10.10.0.0/24, gateway: 10.10.0.1}}
  blue: {kind: vhost-user, provider: physnet, ipv4: {cidr: 10.20.0.0/24, gateway: 10.20.0.1}}
";

/// Writes the networks file into `dir`; returns the `ipam` object of `network`.
fn ipam(dir: &Path, network: &str) -> Result<Value> {
    let networks = dir.join("networks.yaml");
    std::fs::write(&networks, NETWORKS)?;
    Ok(json!({"type": "heddle-ipam", "network": network,
        "store": dir.join("manager"), "config": networks}))
}

/// `heddle-manager embedded show --json` on the test's store.
fn show(dir: &Path) -> Result<Value> {
    let out = Command::new(workspace_binary("heddle-manager")?)
        .args(["embedded", "--store"])
        .arg(dir.join("manager"))
        .arg("--config")
        .arg(dir.join("networks.yaml"))
        .args(["show", "--json"])
        .output()?;
    ensure!(
        out.status.success(),
        "show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn leases(dir: &Path, network: &str) -> Result<Value> {
    Ok(show(dir)?[network]["leases"].clone())
}

fn address(r: &Value) -> Result<String> {
    r["ips"][0]["address"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no address in {r}"))
}

#[test]
fn heddle_ipam_run_through_its_symlink_speaks_cni() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ipam = CniPlugin::heddle_ipam()?;
    let conf = |version: &str, net: &str| -> Result<Value> {
        Ok(
            json!({"cniVersion": version, "name": "red", "type": "heddle-cni",
            "ipam": self::ipam(dir.path(), net)?}),
        )
    };
    let v = ipam.ok("VERSION", "", "", "", &conf("1.1.0", "red")?)?;
    ensure!(
        v["supportedVersions"] == json!(["0.4.0", "1.0.0", "1.1.0"]),
        "{v}"
    );

    let a = ipam.ok(
        "ADD",
        "ctr-a",
        "net1",
        "/run/netns/none",
        &conf("1.1.0", "red")?,
    )?;
    ensure!(
        a == json!({"cniVersion": "1.1.0", "interfaces": [], "routes": [],
            "ips": [{"address": "10.10.0.2/24", "gateway": "10.10.0.1"}]}),
        "{a}"
    );
    let b = ipam.ok(
        "ADD",
        "ctr-b",
        "net1",
        "/run/netns/none",
        &conf("0.4.0", "red")?,
    )?;
    ensure!(
        b["ips"][0] == json!({"address": "10.10.0.3/24", "gateway": "10.10.0.1", "version": "4"}),
        "{b}"
    );
    ipam.ok(
        "CHECK",
        "ctr-a",
        "net1",
        "/run/netns/none",
        &conf("1.1.0", "red")?,
    )?;

    let bad = ipam.call(
        "ADD",
        "ctr-c",
        "net1",
        "/run/netns/none",
        &conf("1.1.0", "green")?,
    )?;
    ensure!(!bad.ok && bad.code() == Some(7), "{:?}", bad);
    ensure!(
        bad.json["msg"]
            .as_str()
            .is_some_and(|m| m.contains("\"green\"") && m.contains("add it under `networks`")),
        "{}",
        bad.json
    );

    for _ in 0..2 {
        ipam.ok("DEL", "ctr-a", "net1", "", &conf("1.1.0", "red")?)?;
    }
    let l = leases(dir.path(), "red")?;
    ensure!(l == json!({"ctr-b/net1": ["10.10.0.3"]}), "{l}");
    Ok(())
}

#[test]
fn twenty_concurrent_heddle_ipam_adds_get_twenty_distinct_addresses() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ipam = CniPlugin::heddle_ipam()?;
    let conf = json!({"cniVersion": "1.1.0", "name": "red", "type": "heddle-cni",
        "ipam": self::ipam(dir.path(), "red")?});
    let start = std::time::Instant::now();
    let addrs = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (ipam, conf) = (&ipam, &conf);
                s.spawn(move || {
                    ipam.ok("ADD", &format!("ctr-{i}"), "net1", "/run/netns/none", conf)
                        .and_then(|r| address(&r))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect::<Result<BTreeSet<String>>>()
    })?;
    eprintln!("20 concurrent heddle-ipam ADDs in {:?}", start.elapsed());
    ensure!(addrs.len() == 20, "{addrs:?}");
    let l = leases(dir.path(), "red")?;
    ensure!(l.as_object().map(|o| o.len()) == Some(20), "{l}");
    for i in 0..20 {
        ipam.ok("DEL", &format!("ctr-{i}"), "net1", "", &conf)?;
    }
    ensure!(leases(dir.path(), "red")? == json!({}));
    Ok(())
}

#[test]
fn heddle_cni_gets_vhost_user_pods_addresses_from_heddle_ipam() -> Result<()> {
    require_dpdk_peers(300)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start_with_ports(dir.path(), "  []")?;
    let cni = CniPlugin::heddle()?;
    let conf = json!({
        "cniVersion": "1.1.0", "name": "red", "type": "heddle-cni",
        "kind": "vhost-user", "vlan": 100,
        "socketDir": dir.path().join("pods"), "stateDir": dir.path().join("cni-state"),
        "switchSocket": switch.socket(),
        "ipam": ipam(dir.path(), "red")?,
    });
    let netns = "/run/netns/none";
    let a = cni.ok("ADD", "pod-a", "net1", netns, &conf)?;
    ensure!(
        a["ips"] == json!([{"address": "10.10.0.2/24", "gateway": "10.10.0.1", "interface": 0}]),
        "{a}"
    );
    ensure!(a["interfaces"][0]["socketPath"].is_string(), "{a}");
    let b = cni.ok("ADD", "pod-b", "net1", netns, &conf)?;
    ensure!(address(&b)? != address(&a)?, "{a} {b}");
    ensure!(
        cni.ok("ADD", "pod-a", "net1", netns, &conf)? == a,
        "repeated ADD"
    );
    // A static request through CNI's "ips" capability reaches heddle-ipam.
    let mut fixed = conf.clone();
    fixed["runtimeConfig"] = json!({"ips": ["10.10.0.99/24"]});
    let s = cni.ok("ADD", "pod-s", "net1", netns, &fixed)?;
    ensure!(s["ips"].as_array().map(Vec::len) == Some(1), "{s}");
    ensure!(address(&s)? == "10.10.0.99/24", "{s}");

    for _ in 0..2 {
        cni.ok("DEL", "pod-a", "net1", "", &conf)?;
    }
    let l = leases(dir.path(), "red")?;
    ensure!(
        l == json!({"pod-b/net1": ["10.10.0.3"], "pod-s/net1": ["10.10.0.99"]}),
        "DEL releases: {l}"
    );

    let start = std::time::Instant::now();
    let addrs = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (cni, conf) = (&cni, &conf);
                s.spawn(move || {
                    cni.ok("ADD", &format!("many-{i}"), "net1", netns, conf)
                        .and_then(|r| address(&r))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect::<Result<BTreeSet<String>>>()
    })?;
    eprintln!(
        "20 concurrent heddle-cni ADDs with heddle-ipam in {:?}",
        start.elapsed()
    );
    ensure!(addrs.len() == 20, "{addrs:?}");
    ensure!(!addrs.contains(&address(&b)?) && !addrs.contains("10.10.0.99/24"));

    for i in 0..20 {
        cni.ok("DEL", &format!("many-{i}"), "net1", "", &conf)?;
    }
    cni.ok("DEL", "pod-b", "net1", "", &conf)?;
    cni.ok("DEL", "pod-s", "net1", "", &fixed)?;
    ensure!(leases(dir.path(), "red")? == json!({}));
    ensure!(
        switch.port_names()?.is_empty(),
        "{:?}",
        switch.port_names()?
    );
    Ok(())
}

#[test]
fn kernel_pods_with_heddle_ipam_addresses_and_routes_ping_through_the_switch() -> Result<()> {
    require_dpdk_peers(300)?;
    require_tool("ping").context("ping comes from the Debian package iputils-ping")?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start_with_ports(dir.path(), "  []")?;
    let cni = CniPlugin::heddle()?;
    let mut ipam = ipam(dir.path(), "blue")?;
    ipam["routes"] = json!([{"dst": "10.21.0.0/16"}]);
    let conf = json!({
        "cniVersion": "1.1.0", "name": "blue", "type": "heddle-cni", "kind": "kernel",
        "vlan": 210, "mtu": 1500,
        "socketDir": dir.path().join("pods"), "stateDir": dir.path().join("cni-state"),
        "switchSocket": switch.socket(), "ipam": ipam,
    });
    let (ns1, ns2) = (Netns::unique("ipam-k1")?, Netns::unique("ipam-k2")?);
    let (p1, p2) = (
        ns1.path().display().to_string(),
        ns2.path().display().to_string(),
    );
    let r1 = cni.ok("ADD", "kpod-1", "eth0", &p1, &conf)?;
    let r2 = cni.ok("ADD", "kpod-2", "eth0", &p2, &conf)?;
    ensure!(
        r1["ips"] == json!([{"address": "10.20.0.2/24", "gateway": "10.20.0.1", "interface": 1}]),
        "{r1}"
    );
    ensure!(address(&r2)? == "10.20.0.3/24", "{r2}");
    let shown = ns1.exec(&["ip", "-o", "addr", "show", "dev", "eth0"])?;
    ensure!(shown.contains("10.20.0.2/24"), "{shown}");
    let routes = ns1.exec(&["ip", "route"])?;
    ensure!(routes.contains("10.21.0.0/16 via 10.20.0.1"), "{routes}");
    wait_until(
        "ping from pod 1 to pod 2 through the switch",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || Ok(ns1.exec(&["ping", "-c", "1", "-W", "1", "10.20.0.3"]).ok()),
    )
    .with_context(|| format!("switch log:\n{}", switch.log()))?;
    for _ in 0..2 {
        cni.ok("DEL", "kpod-1", "eth0", "", &conf)?;
        cni.ok("DEL", "kpod-2", "eth0", &p2, &conf)?;
    }
    ensure!(leases(dir.path(), "blue")? == json!({}));
    ensure!(switch.port_names()?.is_empty());
    Ok(())
}
