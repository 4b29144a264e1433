//! heddle-switch between two QEMU guests running Linux's own virtio-net driver: each guest's
//! NIC is a vhost-user port of the switch (both access ports on VLAN 100); the guests ping
//! each other, and the switch's counters must show the frames.
//!
//! Needs root, `qemu-system-x86_64` (Debian's qemu-system-x86), apt access to the Debian
//! mirror the first time (the guest image is cached under /var/cache/heddle-tests/guest),
//! about 300 MiB of free 2 MiB hugepages for the switch, and the binaries built
//! (`cargo build --workspace --bins`); `deploy/test.sh` does all of it. Under TCG (no usable
//! KVM) a test takes a few tens of seconds.
//!
//! To run one against another vhost-user implementation of the switch, add a one-line test
//! calling [`run_ping`] with another [`VhostKind`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use heddle_tests::qemu::{accel, require_qemu};
use heddle_tests::{
    exclusive_cpus, require_hugepages, require_root, wait_for_socket, wait_until, Guest,
    GuestConfig, GuestImage, GuestRole, SocketMode, SwitchProcess, VhostKind, MARK_PING_FAIL,
    MARK_PING_PASS, MARK_UP,
};

const VLAN: u16 = 100;
/// (port name, MAC, address) of the two guests.
const GUESTS: [(&str, &str, &str); 2] = [
    ("vm-a", "52:54:00:77:00:0a", "10.77.0.1"),
    ("vm-b", "52:54:00:77:00:0b", "10.77.0.2"),
];
/// Echo requests each guest sends in its measured run.
const COUNT: u32 = 5;
/// From QEMU's launch to a guest's verdict: boot (about 5-10 s under TCG), then up to 60
/// one-second probes while the peer boots, then the measured run.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(150);

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn ports_yaml(
    kind: VhostKind,
    mode: SocketMode,
    socks: &[PathBuf; 2],
    vlans: [u16; 2],
    packed: bool,
) -> String {
    let mut y = String::new();
    for (i, ((name, mac, _), sock)) in GUESTS.iter().zip(socks).enumerate() {
        y += &format!(
            "  - {{name: {name}, devargs: \"{}{}\", mode: access, vlan: {}, mac: \"{mac}\"}}\n",
            kind.devargs(i as u32, sock, mode),
            if packed { ",packed=1" } else { "" },
            vlans[i]
        );
    }
    y
}

/// A switch with the two [`GUESTS`] on vhost-user ports (`kind`, `mode`, on `vlans`) and
/// the two guests in `roles`, started in the order `mode` needs. Sockets, config and
/// consoles are in `dir`.
fn start(
    kind: VhostKind,
    mode: SocketMode,
    dir: &Path,
    vlans: [u16; 2],
    roles: [GuestRole; 2],
    packed: bool,
) -> Result<(SwitchProcess, Vec<Guest>)> {
    let t0 = Instant::now();
    let image = GuestImage::get()?;
    eprintln!(
        "guest image {} ({}) ready in {:.1?}; accelerator {:?}",
        image.dir.display(),
        image.kernel,
        t0.elapsed(),
        accel()
    );
    let socks = [dir.join("a.sock"), dir.join("b.sock")];
    let ports = ports_yaml(kind, mode, &socks, vlans, packed);
    let configs: Vec<GuestConfig> = GUESTS
        .iter()
        .zip(&socks)
        .zip(roles)
        .map(|(((name, mac, ip), sock), role)| GuestConfig {
            name: (*name).to_owned(),
            socket: sock.clone(),
            mode,
            mac: (*mac).to_owned(),
            ip: format!("{ip}/24"),
            role,
            memory_mib: 192,
            log_dir: dir.to_owned(),
            packed,
            reconnect_secs: None,
            host_mtu: None,
        })
        .collect();
    match mode {
        SocketMode::SwitchServer => {
            let switch = SwitchProcess::start_with_ports(dir, &ports)?;
            for s in &socks {
                wait_for_socket(s, Duration::from_secs(10))
                    .with_context(|| format!("switch log:\n{}", tail(&switch.log(), 40)))?;
            }
            let guests = configs
                .iter()
                .map(|c| Guest::spawn(image, c))
                .collect::<Result<Vec<_>>>()?;
            Ok((switch, guests))
        }
        SocketMode::SwitchClient => {
            // QEMU listens and holds its guest until the switch connects.
            let mut guests = configs
                .iter()
                .map(|c| Guest::spawn(image, c))
                .collect::<Result<Vec<_>>>()?;
            for (g, s) in guests.iter_mut().zip(&socks) {
                if let Err(e) = wait_for_socket(s, Duration::from_secs(20)) {
                    bail!(
                        "{e:#}: QEMU did not create its socket\n{}",
                        g.console_tail(40)
                    );
                }
            }
            Ok((SwitchProcess::start_with_ports(dir, &ports)?, guests))
        }
    }
}

/// The guests' consoles (but `skip`'s) and the switch's log, for failure messages.
fn context(guests: &[Guest], skip: Option<usize>, switch: &SwitchProcess) -> String {
    let mut s = String::new();
    for (i, g) in guests.iter().enumerate() {
        if Some(i) != skip {
            s += &g.console_tail(40);
        }
    }
    s + "--- heddle-switch log, last 40 lines ---\n" + &tail(&switch.log(), 40)
}

/// The switch's per-port counters by port name.
fn port_stats(switch: &SwitchProcess) -> Result<BTreeMap<String, heddle_api::PortStats>> {
    Ok(switch
        .client()
        .stats()?
        .ports
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect())
}

/// A socket directory directly under /tmp: Unix socket paths have 107 bytes at most.
fn socket_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("hq")
        .tempdir_in("/tmp")
        .context("creating the socket directory")
}

/// Boots two guests on vhost-user ports of a fresh heddle-switch (`kind` ports, `mode`
/// sockets), lets each ping the other [`COUNT`] times, and checks the guests' verdicts and
/// the switch's per-port counters.
fn run_ping(kind: VhostKind, mode: SocketMode) -> Result<()> {
    run_ping_rings(kind, mode, false)
}

/// [`run_ping`], with the guests' NICs on packed virtqueues when `packed` (native ports
/// then offer them, `packed=1`, and the switch must report both ports' rings as packed).
fn run_ping_rings(kind: VhostKind, mode: SocketMode, packed: bool) -> Result<()> {
    require_root()?;
    require_hugepages(300)?;
    require_qemu()?;
    let _cpus = exclusive_cpus();
    let t0 = Instant::now();
    let dir = socket_dir()?;
    let ping = |i: usize| GuestRole::Ping {
        peer: GUESTS[1 - i].2.to_owned(),
        count: COUNT,
        interval_ms: 200,
        probes: 60,
        linger: Duration::from_secs(120),
        size: None,
        oversize: None,
    };
    let t_start = Instant::now();
    let (switch, mut guests) = start(
        kind,
        mode,
        dir.path(),
        [VLAN, VLAN],
        [ping(0), ping(1)],
        packed,
    )?;

    // Each guest's verdict on its own pings, with the consoles and the switch log on failure.
    for i in 0..guests.len() {
        let got = guests[i].wait_for(MARK_UP, VERDICT_TIMEOUT).and_then(|_| {
            guests[i].wait_for_any(&[MARK_PING_PASS, MARK_PING_FAIL], VERDICT_TIMEOUT)
        });
        let (which, line) = match got {
            Ok(v) => v,
            // The error has this guest's console already.
            Err(e) => bail!("{e:#}\n{}", context(&guests, Some(i), &switch)),
        };
        ensure!(
            which == 0,
            "guest {} reports packet loss: {line}\n{}",
            guests[i].name(),
            context(&guests, None, &switch)
        );
        eprintln!(
            "{}: {line} (seen {:.1?} after its launch)",
            guests[i].name(),
            guests[i].uptime()
        );
    }
    let t_ping = t_start.elapsed();

    // The switch carried both directions: each guest sent COUNT requests and COUNT replies
    // (plus probes and ARP); the counters are read from the daemon over its API.
    let stats = wait_until(
        "the switch's counters to show both guests' pings",
        Duration::from_secs(5),
        Duration::from_millis(200),
        || {
            let by_name = port_stats(&switch)?;
            let done = GUESTS.iter().all(|(n, _, _)| {
                by_name.get(*n).is_some_and(|p| {
                    p.rx_packets >= 2 * u64::from(COUNT) && p.tx_packets >= 2 * u64::from(COUNT)
                })
            });
            Ok(done.then_some(by_name))
        },
    );
    let stats = match stats {
        Ok(s) => s,
        Err(e) => bail!(
            "{e:#}: {:?}\n{}",
            port_stats(&switch),
            context(&guests, None, &switch)
        ),
    };
    for (name, _, _) in GUESTS {
        let p = &stats[name];
        eprintln!(
            "switch port {name}: rx {} frames / {} B, tx {} frames / {} B, drops {:?}, device {:?}",
            p.rx_packets, p.rx_bytes, p.tx_packets, p.tx_bytes, p.drops, p.device
        );
    }
    if packed {
        for (name, _, _) in GUESTS {
            let v = stats[name]
                .vhost
                .context("native ports report vhost stats")?;
            ensure!(v.packed, "{name} does not run packed rings: {v:?}");
            ensure!(v.bad_chains == 0 && v.broken_rings == 0, "{name}: {v:?}");
        }
    }
    let fdb = switch.client().fdb()?;
    for (name, mac, _) in GUESTS {
        ensure!(
            fdb.iter()
                .any(|e| e.vlan == VLAN && e.mac == mac && e.port == name),
            "no FDB entry {mac} -> {name} on VLAN {VLAN}: {fdb:?}"
        );
    }
    eprintln!(
        "{kind:?}/{mode:?}: launch to both verdicts {t_ping:.1?}, whole test {:.1?}",
        t0.elapsed()
    );
    drop(guests);
    Ok(())
}

#[test]
fn guests_ping_through_dpdk_vhost_switch_as_server() -> Result<()> {
    run_ping(VhostKind::DpdkNetVhost, SocketMode::SwitchServer)
}

#[test]
fn guests_ping_through_dpdk_vhost_switch_as_client() -> Result<()> {
    run_ping(VhostKind::DpdkNetVhost, SocketMode::SwitchClient)
}

/// A guest on VLAN 100 pings one on VLAN 200 (an idle responder): it must get no answer,
/// and the switch must send nothing into VLAN 200.
#[test]
fn guest_on_another_vlan_gets_no_answer() -> Result<()> {
    require_root()?;
    require_hugepages(300)?;
    require_qemu()?;
    let _cpus = exclusive_cpus();
    let t0 = Instant::now();
    let dir = socket_dir()?;
    let pinger = GuestRole::Ping {
        peer: GUESTS[1].2.to_owned(),
        count: 3,
        interval_ms: 200,
        probes: 3,
        linger: Duration::from_secs(60),
        size: None,
        oversize: None,
    };
    let idle = GuestRole::Idle {
        time: Duration::from_secs(120),
    };
    let (switch, mut guests) = start(
        VhostKind::DpdkNetVhost,
        SocketMode::SwitchServer,
        dir.path(),
        [VLAN, 200],
        [pinger, idle],
        false,
    )?;
    if let Err(e) = guests[1].wait_for(MARK_UP, VERDICT_TIMEOUT) {
        bail!("{e:#}\n{}", context(&guests, Some(1), &switch));
    }
    let verdict = guests[0].wait_for_any(&[MARK_PING_PASS, MARK_PING_FAIL], VERDICT_TIMEOUT);
    let (which, line) = match verdict {
        Ok(v) => v,
        Err(e) => bail!("{e:#}\n{}", context(&guests, Some(0), &switch)),
    };
    ensure!(
        which == 1,
        "vm-a on VLAN {VLAN} reached vm-b on VLAN 200: {line}\n{}",
        context(&guests, None, &switch)
    );
    let stats = port_stats(&switch)?;
    let (a, b) = (&stats["vm-a"], &stats["vm-b"]);
    eprintln!("vm-a: {line}\nswitch port vm-a {a:?}\nswitch port vm-b {b:?}");
    ensure!(a.rx_packets > 0, "the switch saw nothing from vm-a: {a:?}");
    ensure!(
        b.tx_packets == 0,
        "the switch sent {} frames from VLAN {VLAN} into VLAN 200\n{}",
        b.tx_packets,
        context(&guests, None, &switch)
    );
    eprintln!(
        "{}\nwhole test {:.1?}",
        guests[0].console_tail(30),
        t0.elapsed()
    );
    Ok(())
}

#[test]
fn guests_ping_through_native_vhost_switch_as_server() -> Result<()> {
    run_ping(VhostKind::Native, SocketMode::SwitchServer)
}

#[test]
fn guests_ping_through_native_vhost_switch_as_client() -> Result<()> {
    run_ping(VhostKind::Native, SocketMode::SwitchClient)
}

#[test]
fn guests_with_packed_rings_ping_through_native_vhost_switch_as_server() -> Result<()> {
    run_ping_rings(VhostKind::Native, SocketMode::SwitchServer, true)
}

#[test]
fn guests_with_packed_rings_ping_through_native_vhost_switch_as_client() -> Result<()> {
    run_ping_rings(VhostKind::Native, SocketMode::SwitchClient, true)
}

/// The switch is the server (sockets in the pods' directories) and QEMU connects with
/// `reconnect=1`, as a server-mode pod must. Ports are added over the API, so the switch
/// keeps them on disk. Under ping traffic the switch is killed with SIGKILL and started
/// again on the same config: the ports come back from disk, QEMU reconnects by itself, and
/// the new switch process (counters from zero) carries the guests' echo requests and
/// replies. (Without `reconnect=` QEMU never comes back and this test times out.)
#[test]
fn native_vhost_server_ports_come_back_after_kill9_and_qemu_reconnects() -> Result<()> {
    require_root()?;
    require_hugepages(300)?;
    require_qemu()?;
    let _cpus = exclusive_cpus();
    let t0 = Instant::now();
    let dir = socket_dir()?;
    let image = GuestImage::get()?;
    let prefix = heddle_tests::free_file_prefix("heddle-qr");
    let yaml = heddle_tests::config_yaml(dir.path(), &prefix, "  []");
    let mut switch = SwitchProcess::start(dir.path(), &yaml)?;
    let socks = [dir.path().join("a.sock"), dir.path().join("b.sock")];
    for (i, ((name, mac, _), sock)) in GUESTS.iter().zip(&socks).enumerate() {
        switch.client().add_port(&heddle_api::PortSpec {
            name: (*name).to_owned(),
            devargs: VhostKind::Native.devargs(i as u32, sock, SocketMode::SwitchServer),
            mode: heddle_api::PortMode::Access { vlan: VLAN },
            mac: Some((*mac).to_owned()),
            queues: None,
            mtu: None,
        })?;
    }
    // vm-a pings vm-b ten times a second for long enough to cover the restart.
    let roles = [
        GuestRole::Ping {
            peer: GUESTS[1].2.to_owned(),
            count: 1200,
            interval_ms: 100,
            probes: 60,
            linger: Duration::from_secs(5),
            size: None,
            oversize: None,
        },
        GuestRole::Idle {
            time: Duration::from_secs(240),
        },
    ];
    let mut guests = GUESTS
        .iter()
        .zip(&socks)
        .zip(roles)
        .map(|(((name, mac, ip), sock), role)| {
            Guest::spawn(
                image,
                &GuestConfig {
                    name: (*name).to_owned(),
                    socket: sock.clone(),
                    mode: SocketMode::SwitchServer,
                    mac: (*mac).to_owned(),
                    ip: format!("{ip}/24"),
                    role,
                    memory_mib: 192,
                    log_dir: dir.path().to_owned(),
                    reconnect_secs: Some(1),
                    host_mtu: None,
                    packed: false,
                },
            )
        })
        .collect::<Result<Vec<_>>>()?;
    for i in 0..2 {
        if let Err(e) = guests[i].wait_for(MARK_UP, VERDICT_TIMEOUT) {
            bail!("{e:#}\n{}", context(&guests, Some(i), &switch));
        }
    }
    // Echo requests and replies flowing: both ports received some.
    let answered = |switch: &SwitchProcess, n: u64| -> Result<Option<()>> {
        let s = port_stats(switch)?;
        Ok((s.get("vm-a").is_some_and(|p| p.rx_packets >= n)
            && s.get("vm-b").is_some_and(|p| p.rx_packets >= n))
        .then_some(()))
    };
    if let Err(e) = wait_until(
        "pings between the guests before the crash",
        VERDICT_TIMEOUT,
        Duration::from_millis(200),
        || answered(&switch, 10),
    ) {
        bail!("{e:#}\n{}", context(&guests, None, &switch));
    }

    switch.kill9()?;
    let restarted = Instant::now();
    let switch = SwitchProcess::start(dir.path(), &yaml)?;
    let ports = switch.client().ports()?;
    ensure!(
        ports.len() == 2
            && ports
                .iter()
                .all(|p| p.origin == heddle_api::PortOrigin::Api),
        "the ports did not come back from disk: {ports:?}"
    );
    // Counters of the new process start at zero: 20 frames each way are new round trips.
    if let Err(e) = wait_until(
        "QEMU to reconnect and the pings to flow through the restarted switch",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || answered(&switch, 20),
    ) {
        bail!(
            "{e:#}: {:?}\n{}",
            port_stats(&switch),
            context(&guests, None, &switch)
        );
    }
    let resumed = restarted.elapsed();
    for p in switch.client().stats()?.ports {
        let v = p.vhost.context("vhost stats")?;
        ensure!(v.connected && v.connects >= 1, "{}: {v:?}", p.name);
    }
    eprintln!(
        "pings flow again {resumed:.1?} after the kill (QEMU reconnect=1); whole test {:.1?}",
        t0.elapsed()
    );
    drop(guests);
    Ok(())
}

/// Jumbo frames between two Linux guests on native ports. vm-b's NIC has `host_mtu=9000`
/// on a switch port of mtu 9000 (its eth0 starts at MTU 9000; QEMU tells the switch with
/// `VHOST_USER_NET_SET_MTU`). vm-a's NIC has `host_mtu=9216` on a port of mtu 9216, so it
/// can send more than vm-b's port takes. vm-a pings vm-b with 8972-byte payloads (IP
/// packets of 9000 bytes, frames of 9014): every one is answered, whole, through the
/// switch. Then with 8973-byte payloads (IP packets of 9001 bytes, one above vm-b's MTU):
/// none is answered, and each is counted as an MTU drop on vm-b's port.
#[test]
fn jumbo_guests_ping_with_9000_byte_packets_and_a_9001_byte_one_is_an_mtu_drop() -> Result<()> {
    require_root()?;
    require_hugepages(300)?;
    require_qemu()?;
    let _cpus = exclusive_cpus();
    let t0 = Instant::now();
    let dir = socket_dir()?;
    let image = GuestImage::get()?;
    let socks = [dir.path().join("a.sock"), dir.path().join("b.sock")];
    let mtus: [u16; 2] = [9216, 9000];
    let mut ports = String::new();
    for (i, ((name, mac, _), sock)) in GUESTS.iter().zip(&socks).enumerate() {
        ports += &format!(
            "  - {{name: {name}, devargs: \"{}\", mode: access, vlan: {VLAN}, mac: \"{mac}\", mtu: {}}}\n",
            VhostKind::Native.devargs(i as u32, sock, SocketMode::SwitchServer),
            mtus[i]
        );
    }
    let switch = SwitchProcess::start_with_ports(dir.path(), &ports)?;
    for s in &socks {
        wait_for_socket(s, Duration::from_secs(10))
            .with_context(|| format!("switch log:\n{}", tail(&switch.log(), 40)))?;
    }
    let roles = [
        GuestRole::Ping {
            peer: GUESTS[1].2.to_owned(),
            count: COUNT,
            interval_ms: 200,
            probes: 60,
            linger: Duration::from_secs(30),
            size: Some(8972),
            oversize: Some(8973),
        },
        GuestRole::Idle {
            time: Duration::from_secs(240),
        },
    ];
    let mut guests = GUESTS
        .iter()
        .zip(&socks)
        .zip(roles)
        .enumerate()
        .map(|(i, (((name, mac, ip), sock), role))| {
            Guest::spawn(
                image,
                &GuestConfig {
                    name: (*name).to_owned(),
                    socket: sock.clone(),
                    mode: SocketMode::SwitchServer,
                    mac: (*mac).to_owned(),
                    ip: format!("{ip}/24"),
                    role,
                    memory_mib: 192,
                    log_dir: dir.path().to_owned(),
                    reconnect_secs: None,
                    host_mtu: Some(mtus[i]),
                    packed: false,
                },
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let got = guests[0]
        .wait_for(MARK_UP, VERDICT_TIMEOUT)
        .and_then(|_| guests[0].wait_for_any(&[MARK_PING_PASS, MARK_PING_FAIL], VERDICT_TIMEOUT));
    let (which, line) = match got {
        Ok(v) => v,
        Err(e) => bail!("{e:#}\n{}", context(&guests, Some(0), &switch)),
    };
    ensure!(
        which == 0,
        "8972-byte pings from vm-a to vm-b were lost: {line}\n{}",
        context(&guests, None, &switch)
    );
    eprintln!("vm-a, 8972-byte payloads: {line}");
    let mid = port_stats(&switch)?;
    let big = match guests[0].wait_for(heddle_tests::MARK_BIG_PING, Duration::from_secs(60)) {
        Ok(l) => l,
        Err(e) => bail!("{e:#}\n{}", context(&guests, Some(0), &switch)),
    };
    eprintln!("vm-a, 8973-byte payloads: {big}");
    ensure!(
        big.contains("100% packet loss"),
        "9001-byte IP packets reached vm-b through a port of mtu 9000: {big}\n{}",
        context(&guests, None, &switch)
    );
    let end = port_stats(&switch)?;
    let console_b = guests[1].console();
    for (name, mtu) in ["vm-a", "vm-b"].iter().zip(mtus) {
        let p = &end[*name];
        let v = p.vhost.context("native ports report vhost stats")?;
        eprintln!(
            "switch port {name}: rx {} / {} B, tx {} / {} B, drops {:?}, frontend mtu {}",
            p.rx_packets, p.rx_bytes, p.tx_packets, p.tx_bytes, p.drops, v.frontend_mtu
        );
        ensure!(
            v.frontend_mtu == mtu,
            "QEMU's host_mtu={mtu} did not reach {name} (NET_SET_MTU): {v:?}"
        );
        ensure!(
            v.bad_chains == 0 && v.oversize == 0 && v.protocol_errors == 0,
            "{name}: {v:?}"
        );
    }
    // The 9014-byte frames went both ways whole: the switch sent each guest at least COUNT
    // frames' worth of 9014 bytes (requests to vm-b, replies to vm-a) before the 9001-byte
    // run.
    let (a, b) = (&mid["vm-a"], &mid["vm-b"]);
    ensure!(
        a.tx_bytes >= u64::from(COUNT) * 9014 && b.tx_bytes >= u64::from(COUNT) * 9014,
        "the switch did not carry 9014-byte frames both ways: to vm-a {} B, to vm-b {} B",
        a.tx_bytes,
        b.tx_bytes
    );
    ensure!(
        console_b.contains("eth0 mtu 9000"),
        "vm-b's eth0 is not at MTU 9000:\n{console_b}"
    );
    // Each 9001-byte packet was dropped at vm-b's port, counted as an MTU drop there (and
    // nothing else was: no MTU drop on vm-a, none before the 9001-byte run).
    let mtu_drops = |s: &BTreeMap<String, heddle_api::PortStats>, port: &str| {
        s[port].drops.get("mtu").copied().unwrap_or(0)
    };
    ensure!(
        mtu_drops(&end, "vm-b") == u64::from(COUNT) && mtu_drops(&end, "vm-a") == 0,
        "MTU drops {:?} on vm-b and {:?} on vm-a for {COUNT} 9001-byte packets to vm-b",
        end["vm-b"].drops,
        end["vm-a"].drops
    );
    eprintln!("jumbo test: {:.1?}", t0.elapsed());
    drop(guests);
    Ok(())
}
