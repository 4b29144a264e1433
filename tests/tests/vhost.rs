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
        mtu: None,
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

/// Jumbo frames through native ports: dpdk-testpmd with two virtio-user ports
/// (`mrg_rxbuf=1`, `--max-pkt-len=9216`), 4 KiB mbufs and `--txpkts=4096,4096,822`, so each
/// frame is 9014 bytes (9000 after the Ethernet header) sent as a three-segment chain and
/// received in three mergeable buffers (`num_buffers` 3). Both switch ports have mtu 9000:
/// the frames go both ways, whole (testpmd's and the switch's byte counters), with no MTU
/// drop, bad chain or oversize frame. Then pod-b's
/// port comes back with mtu 8999: the generator's first burst of those frames is dropped,
/// each counted as an MTU drop (pod-b's own frames at its ingress, pod-a's at pod-b's
/// egress), and nothing reaches either side.
#[test]
fn testpmd_jumbo_frames_pass_native_ports_and_frames_above_the_mtu_are_counted_drops() -> Result<()>
{
    require_dpdk_peers(600)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start_with_ports(dir.path(), "")?;
    let client = switch.client();
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let jumbo = |name: &str, sock: &Path, mac: &str, mtu: u16| PortSpec {
        mtu: Some(mtu),
        ..native_port(name, sock, "", 100, mac)
    };
    client.add_port(&jumbo("pod-a", &sa, MAC_A, 9000))?;
    client.add_port(&jumbo("pod-b", &sb, MAC_B, 9000))?;
    let frame = 9014u64;
    let gen = |sa: &Path, sb: &Path| -> Result<Testpmd> {
        let port = |i: u32, sock: &Path, mac: &str| {
            heddle_tests::testpmd::PortSpec::Raw(format!(
                "net_virtio_user{i},path={},mac={mac},queues=1,mrg_rxbuf=1,in_order=0",
                sock.display()
            ))
        };
        let mut g = Testpmd::builder("gen-jumbo")
            .cpu(0)
            .port(port(0, sa, MAC_A))
            .port(port(1, sb, MAC_B))
            .forward_mode(ForwardMode::Mac)
            .eth_peer(0, MAC_B)
            .eth_peer(1, MAC_A)
            // testpmd checks --txpkts against the mbuf size when it reads it: after it.
            .app_arg("--max-pkt-len=9216")
            .app_arg("--mbuf-size=4224")
            .app_arg("--txpkts=4096,4096,822")
            .app_arg("--enable-scatter")
            .app_arg("--tx-offloads=0x8000")
            .spawn()?;
        g.wait_ready(Duration::from_secs(20))?;
        g.wait_link_up(0, Duration::from_secs(10))?;
        g.wait_link_up(1, Duration::from_secs(10))?;
        Ok(g)
    };

    let mut g = gen(&sa, &sb)?;
    g.start_tx_first()?;
    let got = wait_until(
        "9014-byte frames both ways through native ports",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let s = g.port_stats()?;
            Ok((s[&0].rx_packets > 2_000 && s[&1].rx_packets > 2_000).then_some(s))
        },
    )
    .with_context(|| format!("jumbo generator:\n{}", g.log_tail(30)))?;
    g.stop()?;
    let s = g.settled_port_stats(Duration::from_millis(300), Duration::from_secs(10))?;
    g.shutdown()?;
    for p in [0u16, 1] {
        // testpmd counts bytes without the CRC: every frame it got back was 9014 bytes.
        ensure!(
            s[&p].rx_bytes == s[&p].rx_packets * frame,
            "port {p}: {} frames in {} bytes, not {frame} each ({got:?})",
            s[&p].rx_packets,
            s[&p].rx_bytes
        );
    }
    let st = client.stats()?;
    for name in ["pod-a", "pod-b"] {
        let p = st.ports.iter().find(|p| p.name == name).context("port")?;
        let v = p.vhost.context("native ports report vhost stats")?;
        eprintln!(
            "{name}: rx {} / {} B, tx {} / {} B, drops {:?}",
            p.rx_packets, p.rx_bytes, p.tx_packets, p.tx_bytes, p.drops
        );
        ensure!(
            p.rx_packets > 2_000 && p.tx_packets > 2_000,
            "{name}: {p:?}"
        );
        ensure!(
            p.rx_bytes == p.rx_packets * frame && p.tx_bytes == p.tx_packets * frame,
            "{name} carried frames other than {frame} bytes: {p:?}"
        );
        ensure!(
            ["mtu", "multi_segment", "headroom"].iter().all(|r| p
                .drops
                .get(*r)
                .copied()
                .unwrap_or(0)
                == 0),
            "{name} dropped: {:?}",
            p.drops
        );
        ensure!(v.bad_chains == 0 && v.oversize == 0, "{name}: {v:?}");
    }

    // pod-b at mtu 8999: the 9000-byte frames are one byte over.
    client.remove_port("pod-b")?;
    client.add_port(&jumbo("pod-b", &sb, MAC_B, 8999))?;
    let before = client.stats()?;
    let mtu_drops = |s: &heddle_api::StatsReply, name: &str| {
        s.ports
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.drops.get("mtu").copied())
            .unwrap_or(0)
    };
    let mut g = gen(&sa, &sb)?;
    g.start_tx_first()?;
    let after = wait_until(
        "MTU drops on pod-b for both directions",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let s = client.stats()?;
            // One burst from each side: pod-b's own frames (ingress) and pod-a's (egress).
            Ok((mtu_drops(&s, "pod-b") >= 2 * 32).then_some(s))
        },
    )
    .with_context(|| format!("{:?}", client.stats().map(|s| s.ports)))?;
    std::thread::sleep(Duration::from_millis(500));
    let s = g.port_stats()?;
    g.shutdown()?;
    ensure!(
        s[&0].rx_packets == 0 && s[&1].rx_packets == 0,
        "frames above pod-b's MTU were delivered: {s:?}"
    );
    ensure!(mtu_drops(&before, "pod-b") == 0);
    ensure!(mtu_drops(&after, "pod-a") == 0, "{:?}", after.ports);
    eprintln!("pod-b mtu drops: {}", mtu_drops(&after, "pod-b"));
    Ok(())
}
