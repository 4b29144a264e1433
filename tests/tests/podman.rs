//! heddle-cni under a real container runtime: rootful podman 4.3 with its CNI backend runs two
//! busybox containers on a Heddle `kind: kernel` network (host-local IPAM); they ping each
//! other through a real heddle-switch, and `podman rm -f` leaves no switch port, CNI record,
//! veth or lease behind. Then `podman run --rm ... true` is timed on that network and on
//! `--network none` (printed; run with `--nocapture`).
//!
//! Needs root, about 300 MiB of free 2 MiB hugepages, the binaries built
//! (`cargo build --workspace --bins`), and what `deploy/scripts/podman-setup.sh` installs; the
//! test runs that script itself (idempotent, about 1 s when everything is in place). podman
//! gets a containers.conf of the test's own (`CONTAINERS_CONF`), so /etc/containers and
//! /etc/cni/net.d are never read or written.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use heddle_tests::cni::{percentile_ms, require_reference_plugin, DEBIAN_CNI_DIR};
use heddle_tests::podman::{require_podman, Podman, IMAGE};
use heddle_tests::{
    exclusive_cpus, require_hugepages, require_root, unique_name, wait_until, workspace_binary,
    SwitchProcess,
};
use serde_json::{json, Value};

/// The attachment records in heddle-cni's state directory.
fn records(state: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(state)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect()
}

/// Addresses host-local still holds for `network`.
fn leases(ipam: &Path, network: &str) -> Vec<String> {
    std::fs::read_dir(ipam.join(network))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

#[test]
fn podman_containers_on_a_heddle_kernel_network_ping_through_the_switch() -> Result<()> {
    require_root()?;
    require_hugepages(300)?;
    require_podman()?;
    require_reference_plugin("host-local")?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start_with_ports(dir.path(), "  []")?;

    // CNI plugin dirs: heddle-cni from target/, host-local from Debian's package.
    let bin = dir.path().join("cni-bin");
    std::fs::create_dir(&bin)?;
    std::os::unix::fs::symlink(workspace_binary("heddle-cni")?, bin.join("heddle-cni"))?;
    let conf_dir = dir.path().join("cni-conf");
    std::fs::create_dir(&conf_dir)?;
    let (state, ipam) = (dir.path().join("cni-state"), dir.path().join("ipam"));
    let net = unique_name("heddlepm", 15);
    let octet = 100 + std::process::id() % 100;
    let subnet = format!("10.77.{octet}.0/24");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": net,
        "plugins": [{
            "type": "heddle-cni", "kind": "kernel", "vlan": 300 + octet,
            "switchSocket": switch.socket(), "stateDir": state,
            "ipam": {"type": "host-local", "subnet": subnet, "dataDir": ipam},
        }],
    });
    std::fs::write(
        conf_dir.join(format!("{net}.conflist")),
        serde_json::to_vec_pretty(&conflist)?,
    )?;
    let podman = Podman::new(dir.path(), &conf_dir, &[&bin, Path::new(DEBIAN_CNI_DIR)])?;

    let names = [format!("{net}-a"), format!("{net}-b")];
    // Declared after the switch: removed (CNI DEL) before the switch stops, on failure too.
    let mut containers = podman.guard(&names);
    for n in &names {
        podman
            .run(&[
                "run",
                "-d",
                "--name",
                n,
                "--network",
                &net,
                "--cap-add",
                "NET_RAW",
                IMAGE,
                "sleep",
                "60",
            ])
            .with_context(|| format!("switch log:\n{}", switch.log()))?;
    }
    let (ip_a, ip_b) = (podman.ip(&names[0], &net)?, podman.ip(&names[1], &net)?);
    let prefix = format!("10.77.{octet}.");
    ensure!(
        ip_a != ip_b && ip_a.starts_with(&prefix) && ip_b.starts_with(&prefix),
        "IPs {ip_a} {ip_b} not two distinct addresses of {subnet}"
    );

    let ports = switch.port_names()?;
    ensure!(
        ports.len() == 2 && ports.iter().all(|p| p.starts_with("cni/")),
        "switch ports: {ports:?}"
    );
    let recs = records(&state);
    ensure!(recs.len() == 2, "CNI records: {recs:?}");
    let mut veths = vec![];
    for r in &recs {
        let v: Value = serde_json::from_slice(&std::fs::read(r)?)?;
        let host = v["hostVeth"].as_str().context("record without hostVeth")?;
        ensure!(
            Path::new("/sys/class/net").join(host).exists(),
            "host veth {host} missing"
        );
        veths.push(host.to_owned());
    }

    wait_until(
        "a ping from container a to container b through the switch",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            let out = podman.output(&["exec", &names[0], "ping", "-c", "1", "-W", "1", &ip_b])?;
            Ok(out.status.success().then_some(()))
        },
    )
    .with_context(|| format!("switch log:\n{}", switch.log()))?;
    let out = podman.run(&["exec", &names[1], "ping", "-c", "3", "-W", "1", &ip_a])?;
    println!("{out}");
    ensure!(out.contains(" 0% packet loss"), "{out}");
    // The pings crossed the switch: both ports received and sent frames.
    let stats = switch.client().stats()?;
    for name in &ports {
        let st = stats
            .ports
            .iter()
            .find(|s| &s.name == name)
            .with_context(|| format!("no stats for {name}"))?;
        ensure!(
            st.rx_packets >= 3 && st.tx_packets >= 3,
            "{name}: rx {} tx {} frames",
            st.rx_packets,
            st.tx_packets
        );
    }

    containers.remove()?;
    let ports = switch.port_names()?;
    ensure!(ports.is_empty(), "switch ports left: {ports:?}");
    ensure!(
        records(&state).is_empty(),
        "CNI records left: {:?}",
        records(&state)
    );
    for v in &veths {
        ensure!(!Path::new("/sys/class/net").join(v).exists(), "{v} left");
    }
    ensure!(
        leases(&ipam, &net).is_empty(),
        "leases left: {:?}",
        leases(&ipam, &net)
    );

    // `podman run --rm ... true`: 5 runs per network, interleaved.
    let (mut heddle, mut none) = (vec![], vec![]);
    for _ in 0..5 {
        heddle.push(podman.time(&["run", "--rm", "--network", &net, IMAGE, "true"])?);
        none.push(podman.time(&["run", "--rm", "--network", "none", IMAGE, "true"])?);
    }
    println!(
        "podman run --rm true, median of 5: --network {net} (heddle-cni kernel) {:.0} ms, \
         --network none {:.0} ms",
        percentile_ms(&heddle, 50.0),
        percentile_ms(&none, 50.0)
    );
    let ports = switch.port_names()?;
    ensure!(
        ports.is_empty(),
        "switch ports left after --rm runs: {ports:?}"
    );
    ensure!(
        records(&state).is_empty(),
        "CNI records left: {:?}",
        records(&state)
    );
    ensure!(
        leases(&ipam, &net).is_empty(),
        "leases left: {:?}",
        leases(&ipam, &net)
    );
    Ok(())
}
