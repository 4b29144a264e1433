//! Proves the harness against real peers: two dpdk-testpmd processes through vhost-user, and
//! 802.1Q-tagged raw frames across a veth pair into a network namespace.
//!
//! Needs root, dpdk-testpmd and about 600 MiB of free 2 MiB hugepages
//! (`deploy/scripts/hugepages.sh`). Fails, with the reason, when they are missing.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use heddle_tests::raw::{parse_mac, ETH_P_TEST};
use heddle_tests::{
    ethernet_frame, exclusive_cpus, require_dpdk_peers, require_root, require_tool,
    wait_for_socket, wait_until, Control, ForwardMode, Netns, PortSpec, PortStats, RawSocket,
    Testpmd, VethPair,
};

const MAC_A: &str = "02:00:00:00:00:0a";
const MAC_B: &str = "02:00:00:00:00:0b";

/// `|a - b| <= max(abs, a * rel)`.
fn close(a: u64, b: u64, abs: u64, rel: f64) -> bool {
    a.abs_diff(b) <= abs.max((a as f64 * rel) as u64)
}

/// testpmd as a two-port net_vhost io-forwarder ("switch", CPU 1) and a testpmd generator
/// with two virtio-user ports in mac mode, each addressed to the other (CPU 0).
#[test]
fn testpmd_vhost_switch_forwards_between_virtio_user_ports() -> Result<()> {
    require_dpdk_peers(600)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let (sock_a, sock_b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));

    let t0 = Instant::now();
    let mut switch = Testpmd::builder("switch")
        .cpu(1)
        .vhost(&sock_a, false)
        .vhost(&sock_b, false)
        .forward_mode(ForwardMode::Io)
        .auto_start(true)
        .spawn()?;
    switch.wait_ready(Duration::from_secs(10))?;
    wait_for_socket(&sock_a, Duration::from_secs(5))?;
    wait_for_socket(&sock_b, Duration::from_secs(5))?;
    let switch_ready = t0.elapsed();

    let t1 = Instant::now();
    let mut gen = Testpmd::builder("gen")
        .cpu(0)
        .virtio_user(&sock_a, MAC_A, false)
        .virtio_user(&sock_b, MAC_B, false)
        .forward_mode(ForwardMode::Mac)
        .eth_peer(0, MAC_B)
        .eth_peer(1, MAC_A)
        .spawn()?;
    gen.wait_ready(Duration::from_secs(10))?;
    let gen_ready = t1.elapsed();
    switch.wait_link_up(0, Duration::from_secs(5))?;
    switch.wait_link_up(1, Duration::from_secs(5))?;
    gen.wait_link_up(0, Duration::from_secs(5))?;
    gen.wait_link_up(1, Duration::from_secs(5))?;
    let links_up = t1.elapsed();
    eprintln!(
        "switch ready {switch_ready:?}, generator ready {gen_ready:?}, all links up {links_up:?}"
    );
    eprintln!("switch: {}", switch.command_line());
    eprintln!("gen:    {}", gen.command_line());

    gen.start_tx_first()?;
    // Packets flow: wait for a clear number on both generator ports, then measure one second.
    let first = wait_until(
        "generator RX on both ports",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let s = gen.port_stats()?;
            Ok((s[&0].rx_packets > 10_000 && s[&1].rx_packets > 10_000).then_some(s))
        },
    )?;
    let t_first = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let second = gen.port_stats()?;
    let secs = t_first.elapsed().as_secs_f64();
    let rate = |p: u16, f: fn(&PortStats) -> u64| (f(&second[&p]) - f(&first[&p])) as f64 / secs;
    let rx0 = rate(0, |s| s.rx_packets);
    let rx1 = rate(1, |s| s.rx_packets);
    eprintln!(
        "generator RX: port0 {:.2} Mpps, port1 {:.2} Mpps (64-byte frames, total {:.2} Mpps)",
        rx0 / 1e6,
        rx1 / 1e6,
        (rx0 + rx1) / 1e6
    );
    ensure!(
        rx0 > 10_000.0 && rx1 > 10_000.0,
        "too little traffic: {rx0} / {rx1} pps"
    );

    gen.stop()?;
    let g = gen.settled_port_stats(Duration::from_millis(200), Duration::from_secs(5))?;
    let s = switch.settled_port_stats(Duration::from_millis(200), Duration::from_secs(5))?;
    eprintln!("generator: {g:?}\nswitch:    {s:?}");
    // The closed loop holds one burst per stream, a few hundred packets at most in rings.
    let (abs, rel) = (1024, 0.001);
    for (gp, sp) in [(0u16, 0u16), (1, 1)] {
        ensure!(
            g[&gp].rx_packets > 0,
            "generator port {gp} received nothing"
        );
        ensure!(
            close(g[&gp].tx_packets, s[&sp].rx_packets, abs, rel),
            "generator port {gp} sent {} but switch port {sp} received {}",
            g[&gp].tx_packets,
            s[&sp].rx_packets
        );
        ensure!(
            close(s[&sp].tx_packets, g[&gp].rx_packets, abs, rel),
            "switch port {sp} sent {} but generator port {gp} received {}",
            s[&sp].tx_packets,
            g[&gp].rx_packets
        );
    }
    // io forwarding: what enters port 0 leaves port 1 and vice versa.
    ensure!(close(
        s[&0].rx_packets,
        s[&1].tx_packets + s[&1].tx_errors,
        abs,
        rel
    ));
    ensure!(close(
        s[&1].rx_packets,
        s[&0].tx_packets + s[&0].tx_errors,
        abs,
        rel
    ));

    let gen_status = gen.shutdown()?;
    let sw_status = switch.shutdown()?;
    ensure!(gen_status.success(), "generator exited with {gen_status}");
    ensure!(sw_status.success(), "switch exited with {sw_status}");
    Ok(())
}

/// A frame tagged with VLAN 100 sent from inside a namespace arrives on the host end of the
/// veth with the tag visible (re-inserted from PACKET_AUXDATA), and vice versa.
#[test]
fn veth_round_trip_keeps_vlan_tag() -> Result<()> {
    require_root()?;
    require_tool("ip")?;
    let ns = Netns::unique("heddle-test-")?;
    let veth = VethPair::unique(Some(&ns))?;
    let host = RawSocket::open(veth.host(), None)?;
    let inner = RawSocket::open(veth.peer(), Some(&ns))?;
    host.drain()?;
    inner.drain()?;

    let a = parse_mac(MAC_A)?;
    let b = parse_mac(MAC_B)?;
    let out = ethernet_frame(b, a, Some(100), ETH_P_TEST, b"heddle vlan 100");
    for _ in 0..5 {
        inner.send(&out)?;
    }
    let got = host.collect(5, Duration::from_secs(3), |f| {
        f.ethertype() == Some(ETH_P_TEST)
    })?;
    ensure!(
        got.len() == 5,
        "host side saw {} of 5 tagged frames",
        got.len()
    );
    for f in &got {
        ensure!(f.vlan == Some(100), "tag lost: {f:?}");
        ensure!(f.data == out, "frame changed on the way: {:02x?}", f.data);
    }
    eprintln!(
        "host side: 5 frames with VLAN 100, tag from auxdata: {}",
        got[0].tag_from_auxdata
    );

    // Reverse direction, another VLAN and an untagged frame.
    let back_tagged = ethernet_frame(a, b, Some(200), ETH_P_TEST, b"back 200");
    let back_untagged = ethernet_frame(a, b, None, ETH_P_TEST, b"back untagged");
    host.send(&back_tagged)?;
    host.send(&back_untagged)?;
    let got = inner.collect(2, Duration::from_secs(3), |f| {
        f.ethertype() == Some(ETH_P_TEST)
    })?;
    ensure!(
        got.len() == 2,
        "namespace side saw {} of 2 frames",
        got.len()
    );
    ensure!(got[0].vlan == Some(200) && got[0].data == back_tagged);
    ensure!(got[1].vlan.is_none() && got[1].data == back_untagged);
    ensure!(
        host.count_vlan(100, 1, Duration::from_millis(100))? == 0,
        "no stray frames expected"
    );
    drop(inner);
    drop(host);
    drop(veth);
    let name = ns.name().to_owned();
    drop(ns);
    ensure!(
        !std::path::Path::new("/run/netns").join(&name).exists(),
        "netns {name} not deleted"
    );
    Ok(())
}

/// A missing vhost-user socket makes `wait_ready` fail fast with the log, not hang.
#[test]
fn virtio_user_without_backend_fails_clearly() -> Result<()> {
    require_dpdk_peers(300)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let mut gen = Testpmd::builder("nobackend")
        .cpu(0)
        .virtio_user(dir.path().join("missing.sock"), MAC_A, false)
        .spawn()?;
    let err = gen
        .wait_ready(Duration::from_secs(10))
        .err()
        .context("wait_ready succeeded without a backend")?;
    let msg = format!("{err:#}");
    ensure!(msg.contains("failed to probe"), "unexpected error: {msg}");
    Ok(())
}

/// Roles swapped: the generator's virtio-user ports are vhost-user servers (`server=1`) and
/// the net_vhost switch connects as client; the generator runs non-interactively in txonly
/// mode with `--stats-period 1`.
#[test]
fn virtio_user_server_mode_with_stats_period() -> Result<()> {
    require_dpdk_peers(600)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let (sock_a, sock_b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));

    let mut gen = Testpmd::builder("txgen")
        .cpu(0)
        .virtio_user(&sock_a, MAC_A, true)
        .virtio_user(&sock_b, MAC_B, true)
        .forward_mode(ForwardMode::TxOnly)
        .txpkts("64")
        .eth_peer(0, MAC_B)
        .eth_peer(1, MAC_A)
        .control(Control::StatsPeriod(1))
        .auto_start(true)
        .spawn()?;
    // Only the first socket appears: EAL init blocks in the probe of port 0 until a client
    // connects, then creates the second socket and blocks again.
    wait_for_socket(&sock_a, Duration::from_secs(10))?;
    let t0 = Instant::now();
    let mut switch = Testpmd::builder("switch-client")
        .cpu(1)
        .vhost(&sock_a, true)
        .vhost(&sock_b, true)
        .forward_mode(ForwardMode::Io)
        .auto_start(true)
        .spawn()?;
    switch.wait_ready(Duration::from_secs(10))?;
    gen.wait_ready(Duration::from_secs(10))?;
    switch.wait_link_up(0, Duration::from_secs(5))?;
    switch.wait_link_up(1, Duration::from_secs(5))?;
    eprintln!(
        "server-mode generator ready {:?} after the client switch started",
        t0.elapsed()
    );

    // txonly: the generator counts TX only; the switch forwards each direction to the other.
    let g = wait_until(
        "txonly generator TX on both ports",
        Duration::from_secs(10),
        Duration::ZERO,
        || {
            let s = gen.port_stats()?;
            Ok((s[&0].tx_packets > 10_000 && s[&1].tx_packets > 10_000).then_some(s))
        },
    )?;
    let s = switch.port_stats()?;
    eprintln!(
        "txonly: generator tx {} / {} (testpmd rate {:?} / {:?} pps), switch rx {} / {}",
        g[&0].tx_packets,
        g[&1].tx_packets,
        g[&0].tx_pps,
        g[&1].tx_pps,
        s[&0].rx_packets,
        s[&1].rx_packets
    );
    ensure!(
        s[&0].rx_packets > 0 && s[&1].rx_packets > 0,
        "switch received nothing: {s:?}"
    );
    ensure!(
        s[&0].tx_packets + s[&0].tx_errors > 0,
        "switch forwarded nothing: {s:?}"
    );
    Ok(())
}

/// A server-mode virtio-user peer nobody connects to blocks inside EAL init; dropping it must
/// still stop it quickly (SIGINT is repeated; SIGKILL is the last resort).
#[test]
fn blocked_server_mode_peer_stops_on_drop() -> Result<()> {
    require_dpdk_peers(300)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("lonely.sock");
    let gen = Testpmd::builder("lonely")
        .cpu(0)
        .virtio_user(&sock, MAC_A, true)
        .spawn()?;
    wait_for_socket(&sock, Duration::from_secs(10))?;
    let pid = gen.pid();
    let t = Instant::now();
    drop(gen);
    let took = t.elapsed();
    eprintln!("blocked server-mode peer stopped in {took:?}");
    ensure!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "testpmd {pid} still alive"
    );
    ensure!(took < Duration::from_secs(4), "stopping took {took:?}");
    Ok(())
}

/// testpmd spawned inside a namespace (`ip netns exec`) with a `net_af_packet` port on the
/// veth end there counts the tagged frames sent from the host end.
#[test]
fn testpmd_in_netns_receives_from_veth() -> Result<()> {
    require_dpdk_peers(300)?;
    let _cpus = exclusive_cpus();
    let ns = Netns::unique("heddle-test-")?;
    let veth = VethPair::unique(Some(&ns))?;
    let mut pmd = Testpmd::builder("afpacket")
        .cpu(1)
        .netns(ns.name())
        .port(PortSpec::Raw(format!(
            "net_af_packet0,iface={}",
            veth.peer()
        )))
        .forward_mode(ForwardMode::RxOnly)
        .auto_start(true)
        .spawn()?;
    pmd.wait_ready(Duration::from_secs(10))?;
    let host = RawSocket::open(veth.host(), None)?;
    let frame = ethernet_frame(
        parse_mac(MAC_B)?,
        parse_mac(MAC_A)?,
        Some(100),
        ETH_P_TEST,
        b"x",
    );
    let want = 100;
    for _ in 0..want {
        host.send(&frame)?;
    }
    let got = wait_until(
        "testpmd to count the frames",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let s = pmd.port_stats()?;
            Ok((s[&0].rx_packets >= want).then_some(s[&0].rx_packets))
        },
    )?;
    eprintln!("testpmd in netns {} received {got} frames", ns.name());
    drop(pmd);
    Ok(())
}
