//! Native memif ports (Heddle's own memif, devargs `memif...`, the switch as server) against
//! real peers: dpdk-testpmd `net_memif` clients passing traffic both ways, a memif pod
//! killed under traffic (the crash DPDK's `net_memif` has), add/remove cycles with a
//! connected peer leaving no descriptor behind, and a hostile peer (the in-process slave of
//! `heddle_core::memif::testing`) whose rings break while other ports keep forwarding.
//!
//! Needs root, dpdk-testpmd, hugepages and the binaries built; `deploy/test.sh` does all.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use heddle_api::{MemifStats, PortMode, PortSpec, StatsReply};
use heddle_core::memif::queue::{Desc, Direction};
use heddle_core::memif::testing::{Slave, SlaveMemory};
use heddle_tests::{
    exclusive_cpus, mac_pair_generator, require_dpdk_peers, wait_until, ForwardMode, SwitchProcess,
    Testpmd,
};

const MAC_A: &str = "02:00:00:00:05:0a";
const MAC_B: &str = "02:00:00:00:05:0b";
const MAC_C: &str = "02:00:00:00:05:0c";
const MAC_D: &str = "02:00:00:00:05:0d";

fn memif_yaml(name: &str, sock: &Path, vlan: u16, mac: &str) -> String {
    format!(
        "  - {{name: {name}, devargs: \"memif-{name},socket={},id=0\", mode: access, vlan: {vlan}, mac: \"{mac}\"}}\n",
        sock.display()
    )
}

fn vhost_yaml(name: &str, sock: &Path, vlan: u16, mac: &str) -> String {
    format!(
        "  - {{name: {name}, devargs: \"vhost-user-{name},iface={}\", mode: access, vlan: {vlan}, mac: \"{mac}\"}}\n",
        sock.display()
    )
}

/// A pod with two memif client ports (`net_memif`, role=client) addressed to each other.
fn memif_pod(name: &str, a: &Path, b: &Path) -> Result<Testpmd> {
    let mut pod = Testpmd::builder(name)
        .cpu(0)
        .memif(a, false, 0, MAC_A)
        .memif(b, false, 0, MAC_B)
        .forward_mode(ForwardMode::Mac)
        .eth_peer(0, MAC_B)
        .eth_peer(1, MAC_A)
        .txpkts("64")
        .spawn()?;
    pod.wait_ready(Duration::from_secs(20))?;
    pod.wait_link_up(0, Duration::from_secs(10))?;
    pod.wait_link_up(1, Duration::from_secs(10))?;
    Ok(pod)
}

fn memif_of(s: &StatsReply, port: &str) -> Result<MemifStats> {
    s.ports
        .iter()
        .find(|p| p.name == port)
        .and_then(|p| p.memif)
        .with_context(|| format!("no memif stats for {port}"))
}

fn rx_tx(s: &StatsReply, port: &str) -> (u64, u64) {
    s.ports
        .iter()
        .find(|p| p.name == port)
        .map_or((0, 0), |p| (p.rx_packets, p.tx_packets))
}

fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Waits until both pods of a generator receive `min` more frames than now.
fn forwarding(gen: &mut Testpmd, min: u64, what: &str) -> Result<()> {
    let s0 = gen.port_stats()?;
    let (a0, b0) = (s0[&0].rx_packets, s0[&1].rx_packets);
    wait_until(
        what,
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let s = gen.port_stats()?;
            Ok((s[&0].rx_packets > a0 + min && s[&1].rx_packets > b0 + min).then_some(()))
        },
    )
}

#[test]
fn testpmd_memif_clients_pass_traffic_both_ways_through_native_memif_ports() -> Result<()> {
    require_dpdk_peers(600)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let ports = memif_yaml("pod-a", &sa, 100, MAC_A) + &memif_yaml("pod-b", &sb, 100, MAC_B);
    let switch = SwitchProcess::start_with_ports(dir.path(), &ports)?;
    let mut pod = memif_pod("memif-pod", &sa, &sb)?;
    let g = heddle_tests::run_loop(&mut pod, 5_000, Duration::from_secs(20))
        .with_context(|| format!("switch log:\n{}", switch.log()))?;
    let s = switch.client().stats()?;
    for (i, port) in ["pod-a", "pod-b"].iter().enumerate() {
        let m = memif_of(&s, port)?;
        ensure!(m.connected && m.queue_pairs == 1, "{port}: {m:?}");
        ensure!(
            m.bad_descs == 0 && m.broken_rings == 0 && m.protocol_errors == 0,
            "{port}: {m:?}"
        );
        let (rx, tx) = rx_tx(&s, port);
        ensure!(rx > 5_000 && tx > 5_000, "{port}: rx {rx} tx {tx}");
        ensure!(
            g[&(i as u16)].rx_packets > 5_000,
            "pod port {i}: {:?}",
            g[&(i as u16)]
        );
    }
    eprintln!(
        "pod received {} and {}; switch pod-a rx/tx {:?}, pod-b {:?}",
        g[&0].rx_packets,
        g[&1].rx_packets,
        rx_tx(&s, "pod-a"),
        rx_tx(&s, "pod-b")
    );
    pod.shutdown()?;
    Ok(())
}

#[test]
fn a_memif_pod_killed_under_traffic_leaves_the_switch_alive_and_other_ports_forwarding(
) -> Result<()> {
    require_dpdk_peers(1100)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let (sc, sd) = (dir.path().join("c.sock"), dir.path().join("d.sock"));
    let ports = memif_yaml("pod-a", &sa, 100, MAC_A)
        + &memif_yaml("pod-b", &sb, 100, MAC_B)
        + &vhost_yaml("pod-c", &sc, 200, MAC_C)
        + &vhost_yaml("pod-d", &sd, 200, MAC_D);
    let switch = SwitchProcess::start_with_ports(dir.path(), &ports)?;
    let client = switch.client();
    let mut gen = mac_pair_generator("vhost-pods", 0, (&sc, MAC_C), (&sd, MAC_D), 64)?;
    gen.start_tx_first()?;
    forwarding(&mut gen, 2_000, "vhost-user traffic before the memif pods")?;
    for round in 0..3 {
        let mut pod = memif_pod(&format!("memif-pod-{round}"), &sa, &sb)?;
        let before = rx_tx(&client.stats()?, "pod-a").0;
        pod.start_tx_first()?;
        wait_until(
            "memif traffic through the switch",
            Duration::from_secs(15),
            Duration::from_millis(50),
            || Ok((rx_tx(&client.stats()?, "pod-a").0 > before + 5_000).then_some(())),
        )
        .with_context(|| format!("switch log:\n{}", switch.log()))?;
        // kill -9 under traffic: the pod's memory goes away with the rings running.
        // SAFETY: kill(2) on the pid of a child this test spawned and still holds.
        let rc = unsafe { libc::kill(pod.pid() as i32, libc::SIGKILL) };
        ensure!(rc == 0, "kill: {}", std::io::Error::last_os_error());
        wait_until(
            "the switch to see both memif peers gone",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                let s = client.stats()?;
                Ok(
                    (!memif_of(&s, "pod-a")?.connected && !memif_of(&s, "pod-b")?.connected)
                        .then_some(()),
                )
            },
        )?;
        drop(pod);
        forwarding(
            &mut gen,
            2_000,
            "vhost-user traffic after the memif pod died",
        )
        .with_context(|| format!("switch log:\n{}", switch.log()))?;
        ensure!(switch.pid().is_some(), "the switch died:\n{}", switch.log());
    }
    let s = client.stats()?;
    let m = memif_of(&s, "pod-a")?;
    ensure!(m.connects == 3 && m.disconnects == 3, "{m:?}");
    gen.stop()?;
    gen.shutdown()?;
    Ok(())
}

#[test]
fn memif_ports_added_and_removed_with_a_peer_connected_leave_no_descriptor() -> Result<()> {
    require_dpdk_peers(300)?;
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start_with_ports(dir.path(), "  []")?;
    let client = switch.client();
    let pid = switch.pid().context("switch pid")?;
    let sock = dir.path().join("m.sock");
    let spec = PortSpec {
        name: "churn".into(),
        devargs: format!("memif-churn,socket={},id=0", sock.display()),
        mode: PortMode::Access { vlan: 10 },
        mac: None,
        queues: None,
        mtu: None,
    };
    let cycle = |peer_leaves_first: bool| -> Result<()> {
        client.add_port(&spec)?;
        let mut slave = Slave::connect(&sock, 0, SlaveMemory::new(1, 8, 2048))?;
        ensure!(slave.mem.send(0, &[0xffu8; 64]), "ring full at once");
        wait_until(
            "the switch to receive from the peer",
            Duration::from_secs(5),
            Duration::from_millis(10),
            || Ok((rx_tx(&client.stats()?, "churn").0 >= 1).then_some(())),
        )?;
        if peer_leaves_first {
            drop(slave);
            wait_until(
                "the peer to be gone",
                Duration::from_secs(5),
                Duration::from_millis(10),
                || Ok((!memif_of(&client.stats()?, "churn")?.connected).then_some(())),
            )?;
            client.remove_port("churn")?;
        } else {
            client.remove_port("churn")?;
            drop(slave);
        }
        ensure!(!sock.exists(), "socket left after removal");
        Ok(())
    };
    // One warm-up cycle (the API's and the runtime's own descriptors settle), then count.
    cycle(false)?;
    let before = open_fds(pid)?;
    for i in 0..20 {
        cycle(i % 2 == 0)?;
    }
    let after = open_fds(pid)?;
    eprintln!("switch fds: {before} before 20 memif add/connect/remove cycles, {after} after");
    ensure!(after <= before, "{} descriptors leaked", after - before);
    Ok(())
}

#[test]
fn a_hostile_memif_peer_has_its_ring_broken_and_counted_while_other_ports_forward() -> Result<()> {
    require_dpdk_peers(600)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let (sh, sm) = (dir.path().join("h.sock"), dir.path().join("m.sock"));
    let (sc, sd) = (dir.path().join("c.sock"), dir.path().join("d.sock"));
    let ports = memif_yaml("hostile", &sh, 300, MAC_A)
        + &memif_yaml("malformed", &sm, 300, MAC_B)
        + &vhost_yaml("pod-c", &sc, 200, MAC_C)
        + &vhost_yaml("pod-d", &sd, 200, MAC_D);
    let switch = SwitchProcess::start_with_ports(dir.path(), &ports)?;
    let client = switch.client();
    let mut gen = mac_pair_generator("vhost-pods", 0, (&sc, MAC_C), (&sd, MAC_D), 64)?;
    gen.start_tx_first()?;
    forwarding(
        &mut gen,
        2_000,
        "vhost-user traffic before the hostile peer",
    )?;

    // Malformed and out-of-order messages, and a region the switch cannot map.
    use heddle_core::memif::port::send;
    use heddle_core::memif::protocol::{AddRegion, Init, Msg};
    use heddle_core::memif::testing::{expect, memfd};
    use std::os::fd::AsRawFd;
    let init = Msg::Init(Init {
        version: 0x0200,
        id: 0,
        mode: 0,
        secret: [0; 24],
    });
    let short = memfd(4096);
    for (msgs, needle) in [
        (
            vec![(Msg::Connect([0; 32]), None)],
            "not allowed before INIT",
        ),
        (
            vec![
                (init.clone(), None),
                (
                    Msg::AddRegion(AddRegion {
                        index: 0,
                        size: 1 << 20,
                    }),
                    Some(short.as_raw_fd()),
                ),
            ],
            "1048576",
        ),
        (
            vec![
                (init.clone(), None),
                (
                    Msg::AddRegion(AddRegion {
                        index: 5,
                        size: 4096,
                    }),
                    Some(short.as_raw_fd()),
                ),
            ],
            "out of order",
        ),
    ] {
        let conn = Slave::open(&sm)?;
        expect(&conn, "HELLO")?;
        let mut refused = String::new();
        for (m, fd) in msgs {
            send(&conn, &m, fd)?;
            if let Err(e) = expect(&conn, "reply") {
                refused = e.to_string();
                break;
            }
        }
        ensure!(refused.contains(needle), "{needle}: {refused:?}");
    }
    let m = memif_of(&client.stats()?, "malformed")?;
    ensure!(m.protocol_errors == 3 && !m.connected, "{m:?}");

    // A peer that connects properly, then points a descriptor outside its region ...
    let mut slave = Slave::connect(&sh, 0, SlaveMemory::new(1, 6, 2048))?;
    ensure!(slave.mem.send(0, &[0xffu8; 64]));
    let size = slave.mem.size as u32;
    for bad in [
        // Past the end of its region.
        Desc {
            flags: 0,
            region: 0,
            length: 4096,
            offset: size - 100,
            metadata: 0,
        },
        // A region the peer never added.
        Desc {
            flags: 0,
            region: 7,
            length: 64,
            offset: 0,
            metadata: 0,
        },
    ] {
        slave.mem.push_desc(0, bad);
    }
    wait_until(
        "the bad descriptor to be counted",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || Ok((memif_of(&client.stats()?, "hostile")?.bad_descs == 2).then_some(())),
    )?;
    // ... then claims more frames than its ring holds.
    let head = slave.mem.s2m_head(0);
    slave
        .mem
        .set_head(Direction::S2m, 0, head.wrapping_add(64 + 10));
    wait_until(
        "the lying ring to be broken",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || Ok((memif_of(&client.stats()?, "hostile")?.broken_rings == 1).then_some(())),
    )?;
    forwarding(
        &mut gen,
        2_000,
        "vhost-user traffic beside the hostile peer",
    )
    .with_context(|| format!("switch log:\n{}", switch.log()))?;
    let s = client.stats()?;
    let h = memif_of(&s, "hostile")?;
    eprintln!("hostile peer: {h:?}");
    ensure!(h.broken_rings == 1 && h.bad_descs == 2, "{h:?}");
    // The peer reconnecting gets fresh rings: the port is not broken for good.
    drop(slave);
    wait_until(
        "the switch to see the hostile peer gone",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || Ok((!memif_of(&client.stats()?, "hostile")?.connected).then_some(())),
    )?;
    let mut again = Slave::connect(&sh, 0, SlaveMemory::new(1, 6, 2048))?;
    let rx0 = rx_tx(&client.stats()?, "hostile").0;
    ensure!(again.mem.send(0, &[0xffu8; 64]));
    wait_until(
        "a reconnected peer to be served",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || Ok((rx_tx(&client.stats()?, "hostile").0 > rx0).then_some(())),
    )?;
    gen.stop()?;
    gen.shutdown()?;
    Ok(())
}
