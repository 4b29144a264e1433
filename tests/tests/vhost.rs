//! Native vhost-user ports (Heddle's own backend, devargs `vhost-user...`) against real
//! frontends: dpdk-testpmd `net_virtio_user` with mergeable buffers and in-order on and off,
//! one and two queue pairs, the switch as server and as client (with a `kill -9` restart
//! under traffic), and more ports than DPDK's ethdev table holds.
//!
//! Needs root, dpdk-testpmd, hugepages and the binaries built; `deploy/test.sh` does all.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use heddle_api::{PortMode, PortSpec};
use heddle_tests::{
    config_yaml, exclusive_cpus, require_dpdk_peers, wait_until, ForwardMode, SwitchProcess,
    Testpmd,
};

const MAC_A: &str = "02:00:00:00:03:0a";
const MAC_B: &str = "02:00:00:00:03:0b";

fn native_port(name: &str, sock: &Path, extra: &str, vlan: u16, mac: &str) -> PortSpec {
    PortSpec {
        name: name.into(),
        devargs: format!("vhost-user-{name},iface={}{extra}", sock.display()),
        mode: PortMode::Access { vlan },
        mac: Some(mac.into()),
        queues: None,
    }
}

/// A generator with two virtio-user ports addressed to each other (mac forwarding).
fn generator(
    name: &str,
    socks: (&Path, &Path),
    virtio: &str,
    queues: u16,
    server: bool,
) -> Result<Testpmd> {
    let port = |i: u32, sock: &Path, mac: &str| {
        heddle_tests::testpmd::PortSpec::Raw(format!(
            "net_virtio_user{i},path={},mac={mac},queues={queues},server={}{virtio}",
            sock.display(),
            u8::from(server)
        ))
    };
    let mut b = Testpmd::builder(name)
        .cpu(0)
        .port(port(0, socks.0, MAC_A))
        .port(port(1, socks.1, MAC_B))
        .forward_mode(ForwardMode::Mac)
        .eth_peer(0, MAC_B)
        .eth_peer(1, MAC_A)
        .txpkts("64");
    if queues > 1 {
        b = b
            .app_arg(&format!("--rxq={queues}"))
            .app_arg(&format!("--txq={queues}"));
    }
    b.spawn()
}

fn rx_both(gen: &mut Testpmd) -> Result<(u64, u64)> {
    let s = gen.port_stats()?;
    Ok((s[&0].rx_packets, s[&1].rx_packets))
}

#[test]
fn testpmd_virtio_user_variants_pass_traffic_through_native_ports() -> Result<()> {
    require_dpdk_peers(600)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start_with_ports(dir.path(), "")?;
    let client = switch.client();
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    client.add_port(&native_port("pod-a", &sa, ",queues=2", 100, MAC_A))?;
    client.add_port(&native_port("pod-b", &sb, ",queues=2", 100, MAC_B))?;

    for (virtio, queues) in [
        (",mrg_rxbuf=0,in_order=0", 1u16),
        (",mrg_rxbuf=1,in_order=0", 1),
        (",mrg_rxbuf=0,in_order=1", 1),
        (",mrg_rxbuf=1,in_order=1", 1),
        (",mrg_rxbuf=1,in_order=1,cq=1", 2),
    ] {
        let before = client.stats()?;
        let mut gen = generator("gen-native", (&sa, &sb), virtio, queues, false)?;
        gen.wait_ready(Duration::from_secs(20))?;
        gen.wait_link_up(0, Duration::from_secs(10))?;
        gen.wait_link_up(1, Duration::from_secs(10))?;
        gen.start_tx_first()?;
        let got = wait_until(
            "traffic both ways through native vhost-user ports",
            Duration::from_secs(15),
            Duration::from_millis(100),
            || {
                let (a, b) = rx_both(&mut gen)?;
                Ok((a > 20_000 && b > 20_000).then_some((a, b)))
            },
        )
        .with_context(|| format!("virtio-user{virtio} queues={queues}:\n{}", gen.log_tail(30)))?;
        gen.stop()?;
        gen.shutdown()?;
        let after = client.stats()?;
        let delta = |name: &str| {
            let f = |s: &heddle_api::StatsReply| {
                s.ports
                    .iter()
                    .find(|p| p.name == name)
                    .map(|p| (p.rx_packets, p.tx_packets))
                    .unwrap_or_default()
            };
            let (a, b) = (f(&before), f(&after));
            (a.0.abs_diff(b.0), a.1.abs_diff(b.1))
        };
        let (a_rx, a_tx) = delta("pod-a");
        let (b_rx, b_tx) = delta("pod-b");
        eprintln!("virtio-user{virtio} queues={queues}: generator rx {got:?}, switch pod-a rx/tx {a_rx}/{a_tx}, pod-b rx/tx {b_rx}/{b_tx}");
        ensure!(
            a_rx > 20_000 && b_rx > 20_000,
            "the switch did not receive from both pods"
        );
        ensure!(
            a_tx > 20_000 && b_tx > 20_000,
            "the switch did not send to both pods"
        );
        for p in after.ports.iter() {
            let v = p.vhost.context("native ports report vhost stats")?;
            ensure!(
                v.bad_chains == 0 && v.protocol_errors == 0,
                "{}: {v:?}",
                p.name
            );
        }
    }
    Ok(())
}

/// A pod with one virtio-user port listening on `sock` (`server=1`).
fn server_pod(
    name: &str,
    cpu: usize,
    sock: &Path,
    mac: &str,
    mode: ForwardMode,
) -> Result<Testpmd> {
    Testpmd::builder(name)
        .cpu(cpu)
        .port(heddle_tests::testpmd::PortSpec::Raw(format!(
            "net_virtio_user0,path={},mac={mac},server=1,mrg_rxbuf=1",
            sock.display()
        )))
        .forward_mode(mode)
        .eth_peer(0, MAC_B)
        .txpkts("64")
        .spawn()
}

fn rx_of(pod: &mut Testpmd) -> Result<u64> {
    Ok(pod.port_stats()?[&0].rx_packets)
}

#[test]
fn switch_as_client_reconnects_after_kill9_without_pod_action() -> Result<()> {
    require_dpdk_peers(600)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    // The pods own the sockets (virtio-user server=1): pod-a sends to pod-b without pause,
    // pod-b counts what arrives. Each blocks in its start-up until the switch connects.
    let mut pod_a = server_pod("pod-a", 0, &sa, MAC_A, ForwardMode::TxOnly)?;
    let mut pod_b = server_pod("pod-b", 0, &sb, MAC_B, ForwardMode::RxOnly)?;
    let ports = format!(
        "  - {{name: pod-a, devargs: \"vhost-user-a,iface={},client=1\", mode: access, vlan: 7, mac: \"{MAC_A}\"}}\n  - {{name: pod-b, devargs: \"vhost-user-b,iface={},client=1\", mode: access, vlan: 7, mac: \"{MAC_B}\"}}\n",
        sa.display(),
        sb.display()
    );
    let prefix = heddle_tests::env::free_file_prefix("heddle-vc");
    let yaml = config_yaml(dir.path(), &prefix, &ports);
    let mut switch = SwitchProcess::start(dir.path(), &yaml)?;
    for pod in [&mut pod_a, &mut pod_b] {
        pod.wait_ready(Duration::from_secs(30))?;
        pod.wait_link_up(0, Duration::from_secs(10))?;
    }
    pod_b.start()?;
    pod_a.start()?;
    wait_until(
        "traffic before the crash",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || Ok((rx_of(&mut pod_b)? > 5_000).then_some(())),
    )?;

    switch.kill9()?;
    let b0 = rx_of(&mut pod_b)?;
    std::thread::sleep(Duration::from_millis(500));
    let b1 = rx_of(&mut pod_b)?;
    ensure!(b1 - b0 < 1000, "pod-b kept receiving without the switch");

    // Same config, same sockets: the pods are not touched.
    let started = Instant::now();
    let mut switch = SwitchProcess::start(dir.path(), &yaml)?;
    let api_up = started.elapsed();
    let resumed = wait_until(
        "traffic to resume after the restart",
        Duration::from_secs(10),
        Duration::from_millis(10),
        // More than two rings' worth: new frames, not ones left in the rings.
        || Ok((rx_of(&mut pod_b)? > b1 + 600).then(|| started.elapsed())),
    )
    .with_context(|| format!("{}\n{}", switch.log(), pod_b.log_tail(30)))?;
    eprintln!(
        "switch API up {api_up:?} after the restart began; pod-b receiving again after {resumed:?}"
    );
    let s = switch.client().stats()?;
    ensure!(
        resumed < api_up + Duration::from_secs(1),
        "traffic took {resumed:?} to resume (the switch itself was up after {api_up:?})"
    );
    for p in &s.ports {
        let v = p.vhost.context("vhost stats")?;
        ensure!(v.connected && v.connects >= 1, "{}: {v:?}", p.name);
        ensure!(v.bad_chains == 0, "{}: {v:?}", p.name);
    }
    pod_a.stop()?;
    pod_b.stop()?;
    switch.stop()?;
    pod_a.shutdown()?;
    pod_b.shutdown()?;
    Ok(())
}

#[test]
fn more_native_ports_than_dpdk_has_ethdevs() -> Result<()> {
    require_dpdk_peers(300)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start_with_ports(dir.path(), "")?;
    let client = switch.client();
    let n = 48;
    for i in 0..n {
        let sock = dir.path().join(format!("p{i}.sock"));
        let mac = format!("02:00:00:00:04:{i:02x}");
        client.add_port(&native_port(&format!("p{i}"), &sock, "", 10, &mac))?;
        ensure!(sock.exists(), "socket {} was not created", sock.display());
    }
    ensure!(client.ports()?.len() == n);
    for i in 0..n {
        ensure!(client.remove_port(&format!("p{i}"))?.removed);
        ensure!(
            !dir.path().join(format!("p{i}.sock")).exists(),
            "socket left behind"
        );
    }
    ensure!(client.ports()?.is_empty());
    Ok(())
}
