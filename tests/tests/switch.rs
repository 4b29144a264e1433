//! heddle-switch against real peers: dpdk-testpmd virtio-user pods on vhost-user ports, a
//! trunk uplink on `net_af_packet` over a veth into a network namespace, restart with the
//! port table restored from disk, and configs it must refuse.
//!
//! Needs root, dpdk-testpmd and about 1 GiB of free 2 MiB hugepages, and the binaries built
//! (`cargo build --workspace --bins`); `deploy/test.sh` does all of it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use heddle_api::{PortMode, PortSpec, StatsReply};
use heddle_tests::raw::{parse_mac, ETH_P_TEST};
use heddle_tests::{
    config_yaml, ethernet_frame, exclusive_cpus, mac_pair_generator, require_dpdk_peers,
    run_expect_failure, run_loop, run_with_config, wait_until, ForwardMode, Netns, RawSocket,
    SwitchProcess, Testpmd, VethPair,
};

const MAC_A: &str = "02:00:00:00:01:0a";
const MAC_B: &str = "02:00:00:00:01:0b";
const MAC_C: &str = "02:00:00:00:02:0c";

fn vhost_port(name: &str, dev: u32, sock: &Path, vlan: u16, mac: &str) -> String {
    format!(
        "  - {{name: {name}, devargs: \"net_vhost{dev},iface={}\", mode: access, vlan: {vlan}, mac: \"{mac}\"}}\n",
        sock.display()
    )
}

fn port_stats(s: &StatsReply) -> BTreeMap<String, heddle_api::PortStats> {
    s.ports
        .iter()
        .map(|p| (p.name.clone(), p.clone()))
        .collect()
}

/// `|a - b| <= max(abs, a / 1000)`.
fn close(a: u64, b: u64, abs: u64) -> bool {
    a.abs_diff(b) <= abs.max(a / 1000)
}

#[test]
fn pods_on_one_vlan_exchange_traffic_and_another_vlan_sees_none() -> Result<()> {
    require_dpdk_peers(1100)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let (sa, sb, sc) = (
        dir.path().join("a.sock"),
        dir.path().join("b.sock"),
        dir.path().join("c.sock"),
    );
    let ports = vhost_port("pod-a", 0, &sa, 100, MAC_A)
        + &vhost_port("pod-b", 1, &sb, 100, MAC_B)
        + &vhost_port("pod-c", 2, &sc, 200, MAC_C);
    let switch = SwitchProcess::start_with_ports(dir.path(), &ports)?;
    let client = switch.client();

    // One generator holds pods a and b (two virtio-user ports addressed to each other).
    let mut gen = mac_pair_generator("gen-ab", 0, (&sa, MAC_A), (&sb, MAC_B), 64)?;
    let mut pod_c = Testpmd::builder("pod-c")
        .cpu(0)
        .virtio_user(&sc, MAC_C, false)
        .forward_mode(ForwardMode::RxOnly)
        .spawn()?;
    pod_c.wait_ready(Duration::from_secs(15))?;
    pod_c.wait_link_up(0, Duration::from_secs(5))?;
    // One burst from pod c must stay inside VLAN 200, where no one else listens.
    pod_c.start_tx_first()?;

    let g = run_loop(&mut gen, 5_000, Duration::from_secs(15))?;
    let c = pod_c.settled_port_stats(Duration::from_millis(300), Duration::from_secs(5))?;
    let s = wait_until(
        "switch counters to settle",
        Duration::from_secs(5),
        Duration::from_millis(300),
        {
            let mut last: Option<StatsReply> = None;
            move || {
                let now = client.stats()?;
                let done = last
                    .as_ref()
                    .is_some_and(|l| port_stats(l) == port_stats(&now));
                last = Some(now.clone());
                Ok(done.then_some(now))
            }
        },
    )?;
    let sp = port_stats(&s);
    eprintln!("generator {g:?}\npod-c {c:?}\nswitch {sp:#?}");

    for (gport, name, peer) in [(0u16, "pod-a", "pod-b"), (1, "pod-b", "pod-a")] {
        ensure!(
            g[&gport].rx_packets > 5_000,
            "{name} received only {}",
            g[&gport].rx_packets
        );
        ensure!(
            close(g[&gport].tx_packets, sp[name].rx_packets, 64),
            "{name} sent {} but the switch received {} from it",
            g[&gport].tx_packets,
            sp[name].rx_packets
        );
        ensure!(
            close(sp[name].tx_packets, g[&gport].rx_packets, 64),
            "the switch sent {} to {name} but it received {}",
            sp[name].tx_packets,
            g[&gport].rx_packets
        );
        ensure!(
            sp[peer].rx_packets >= sp[name].tx_packets,
            "{name} got more than {peer} sent: the switch duplicated frames"
        );
    }
    ensure!(c[&0].tx_packets > 0, "pod-c sent nothing");
    ensure!(
        c[&0].rx_packets == 0,
        "pod-c on VLAN 200 received {} frames",
        c[&0].rx_packets
    );
    ensure!(
        sp["pod-c"].tx_packets == 0,
        "the switch sent {} frames into VLAN 200",
        sp["pod-c"].tx_packets
    );
    ensure!(
        sp["pod-c"].rx_packets == c[&0].tx_packets,
        "the switch lost pod-c's frames"
    );
    ensure!(
        sp["pod-c"]
            .drops
            .get("no_destination")
            .copied()
            .unwrap_or(0)
            == c[&0].tx_packets,
        "pod-c's broadcasts must be counted as no_destination: {:?}",
        sp["pod-c"].drops
    );
    let pmd = &s.pmd[0];
    ensure!(pmd.packets >= sp["pod-a"].rx_packets + sp["pod-b"].rx_packets);
    ensure!(
        pmd.busy_cycles > 0 && pmd.cycles_per_packet > 0.0,
        "PMD accounting is empty: {pmd:?}"
    );

    let fdb = switch.client().fdb()?;
    for (mac, port) in [(MAC_A, "pod-a"), (MAC_B, "pod-b"), (MAC_C, "pod-c")] {
        ensure!(
            fdb.iter()
                .any(|e| e.mac == mac && e.port == port && e.is_static),
            "static FDB entry {mac} -> {port} missing: {fdb:?}"
        );
    }
    let metrics = switch.client().metrics()?;
    ensure!(metrics.contains(&format!(
        "heddle_port_tx_packets_total{{port=\"pod-b\"}} {}",
        sp["pod-b"].tx_packets
    )));
    Ok(())
}

#[test]
fn trunk_uplink_tags_pod_traffic_and_admits_only_its_vlans() -> Result<()> {
    require_dpdk_peers(700)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let ns = Netns::unique("heddle-up-")?;
    let veth = VethPair::unique(Some(&ns))?;
    let sock = dir.path().join("pod.sock");
    let ports = vhost_port("pod", 0, &sock, 100, MAC_A)
        + &format!(
            "  - {{name: uplink, devargs: \"net_af_packet0,iface={}\", mode: trunk, vlans: [100, \"300-310\"]}}\n",
            veth.host()
        );
    let switch = SwitchProcess::start_with_ports(dir.path(), &ports)?;
    let outside = RawSocket::open(veth.peer(), Some(&ns))?;
    outside.drain()?;

    // The pod sends one burst to a MAC nobody has: flooded on VLAN 100, i.e. out of the trunk.
    let mut pod = Testpmd::builder("pod")
        .cpu(0)
        .virtio_user(&sock, MAC_A, false)
        .forward_mode(ForwardMode::RxOnly)
        .eth_peer(0, "02:00:00:00:00:ee")
        .txpkts("64")
        .spawn()?;
    pod.wait_ready(Duration::from_secs(15))?;
    pod.wait_link_up(0, Duration::from_secs(5))?;
    pod.command("set verbose 1")?;
    pod.start_tx_first()?;
    let (pod_mac, ext) = (parse_mac(MAC_A)?, parse_mac("02:00:00:00:00:ee")?);
    let got = outside.collect(32, Duration::from_secs(5), |f| f.src() == pod_mac)?;
    ensure!(
        got.len() == 32,
        "the namespace saw {} of the pod's 32 frames",
        got.len()
    );
    ensure!(
        got.iter().all(|f| f.vlan == Some(100)),
        "pod traffic must leave the trunk tagged 100: {:?}",
        got[0]
    );

    // From outside: 10 frames tagged 100 and 10 tagged 200 to the pod's MAC, 5 untagged.
    for _ in 0..10 {
        outside.send(&ethernet_frame(
            pod_mac,
            ext,
            Some(100),
            ETH_P_TEST,
            b"vlan 100 to the pod",
        ))?;
        outside.send(&ethernet_frame(
            pod_mac,
            ext,
            Some(200),
            ETH_P_TEST,
            b"vlan 200 must not pass",
        ))?;
    }
    for _ in 0..5 {
        outside.send(&ethernet_frame(
            pod_mac,
            ext,
            None,
            ETH_P_TEST,
            b"untagged, no native VLAN",
        ))?;
    }
    let rx = wait_until(
        "the pod to receive VLAN 100 frames",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || {
            let s = pod.port_stats()?;
            Ok((s[&0].rx_packets >= 10).then_some(s[&0].rx_packets))
        },
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let rx_after = pod.port_stats()?[&0].rx_packets;
    ensure!(
        rx == 10 && rx_after == 10,
        "the pod received {rx_after} frames, want exactly the 10 of VLAN 100"
    );
    // testpmd's verbose dump shows the outer ethertype: the pod saw them untagged.
    pod.wait_for_log("type=0x88b5", Duration::from_secs(2))?;
    ensure!(
        !pod.log().contains("type=0x8100"),
        "the pod received a tagged frame"
    );

    let st = port_stats(&switch.client().stats()?);
    let drops = &st["uplink"].drops;
    ensure!(
        drops.get("vlan_not_allowed") == Some(&10),
        "uplink drops: {drops:?}"
    );
    ensure!(
        drops.get("untagged_no_native") == Some(&5),
        "uplink drops: {drops:?}"
    );
    let fdb = switch.client().fdb()?;
    ensure!(
        fdb.iter().any(|e| e.vlan == 100
            && e.mac == "02:00:00:00:00:ee"
            && e.port == "uplink"
            && !e.is_static),
        "the outside MAC was not learned on the uplink: {fdb:?}"
    );

    // The trunk stops carrying VLAN 100 under traffic: frames tagged 100 are now refused,
    // the pod gets nothing more, and the uplink's learned entries are gone.
    let trunk = switch.client().set_trunk_vlans(
        "uplink",
        &heddle_api::TrunkVlans {
            vlans: vec![heddle_api::VlanRange::One(200)],
            native_vlan: None,
        },
    )?;
    ensure!(
        trunk.spec.mode
            == PortMode::Trunk {
                vlans: vec![heddle_api::VlanRange::One(200)],
                native_vlan: None
            },
        "{trunk:?}"
    );
    ensure!(
        switch.client().fdb()?.iter().all(|e| e.port != "uplink"),
        "uplink entries survived the change"
    );
    for _ in 0..4 {
        outside.send(&ethernet_frame(
            pod_mac,
            ext,
            Some(100),
            ETH_P_TEST,
            b"vlan 100 after the change",
        ))?;
    }
    wait_until(
        "the refused frames to be counted",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let st = port_stats(&switch.client().stats()?);
            Ok((st["uplink"].drops.get("vlan_not_allowed") == Some(&14)).then_some(()))
        },
    )?;
    ensure!(
        pod.port_stats()?[&0].rx_packets == 10,
        "the pod received VLAN 100 frames after the trunk dropped it"
    );
    let err = switch
        .client()
        .set_trunk_vlans(
            "pod",
            &heddle_api::TrunkVlans {
                vlans: vec![heddle_api::VlanRange::One(5)],
                native_vlan: None,
            },
        )
        .unwrap_err()
        .to_string();
    ensure!(err.contains("access port"), "{err}");
    Ok(())
}

#[test]
fn ports_added_through_the_api_survive_a_restart() -> Result<()> {
    require_dpdk_peers(300)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let prefix = heddle_tests::env::free_file_prefix("heddle-rs");
    let yaml = config_yaml(
        dir.path(),
        &prefix,
        "  - {name: cfg, devargs: net_null0, mode: access, vlan: 5}\n",
    );
    let mut switch = SwitchProcess::start(dir.path(), &yaml)?;
    let client = switch.client();
    let spec = PortSpec {
        name: "api-port".into(),
        devargs: format!("net_vhost3,iface={}", dir.path().join("api.sock").display()),
        mode: PortMode::Access { vlan: 42 },
        mac: Some("02:00:00:00:00:42".into()),
        queues: None,
        mtu: None,
    };
    let trunk = PortSpec {
        name: "api-trunk".into(),
        devargs: "net_null1".into(),
        mode: PortMode::Trunk {
            vlans: vec![heddle_api::VlanRange::Range((10, 20))],
            native_vlan: Some(1),
        },
        mac: None,
        queues: None,
        mtu: None,
    };
    let first = client.add_port(&spec)?;
    client.add_port(&trunk)?;
    // Idempotent: the same spec again gives the same port; another spec under the name is refused.
    let again = client.add_port(&spec)?;
    ensure!(again.index == first.index && again.dpdk_port == first.dpdk_port);
    let mut other = spec.clone();
    other.mode = PortMode::Access { vlan: 43 };
    let err = client.add_port(&other).unwrap_err().to_string();
    ensure!(err.contains("duplicate port"), "{err}");
    let mut same_dev = trunk.clone();
    same_dev.name = "thief".into();
    let err = client.add_port(&same_dev).unwrap_err().to_string();
    ensure!(err.contains("duplicate port device"), "{err}");
    let mut bad_vlan = spec.clone();
    bad_vlan.name = "bad".into();
    bad_vlan.mode = PortMode::Access { vlan: 4095 };
    let err = client.add_port(&bad_vlan).unwrap_err().to_string();
    ensure!(err.contains("outside 1-4094"), "{err}");
    let mut long_path = spec.clone();
    long_path.name = "bad".into();
    long_path.devargs = format!("net_vhost5,iface=/tmp/{}.sock", "x".repeat(110));
    let err = client.add_port(&long_path).unwrap_err().to_string();
    ensure!(err.contains("107-byte limit"), "{err}");
    let mut bad_dev = spec.clone();
    bad_dev.name = "bad".into();
    bad_dev.devargs = "net_nosuchdriver0".into();
    let err = client.add_port(&bad_dev).unwrap_err().to_string();
    ensure!(err.contains("DPDK rejected devargs"), "{err}");
    ensure!(
        switch.port_names()? == ["api-port", "api-trunk", "cfg"],
        "failed adds must leave nothing"
    );

    let before = client.ports()?;
    let status = switch.stop()?;
    ensure!(
        status.success(),
        "SIGTERM must stop the daemon cleanly: {status}\n{}",
        switch.log()
    );
    ensure!(
        !switch.socket().exists(),
        "the control socket outlived the daemon"
    );

    let switch = SwitchProcess::start(dir.path(), &yaml)?;
    let after = switch.client().ports()?;
    let key = |v: &[heddle_api::PortStatus]| {
        v.iter()
            .map(|p| (p.spec.clone(), p.origin))
            .collect::<Vec<_>>()
    };
    ensure!(
        key(&after) == key(&before),
        "ports after restart differ:\n{after:?}\nvs\n{before:?}"
    );
    ensure!(switch
        .client()
        .fdb()?
        .iter()
        .any(|e| e.mac == "02:00:00:00:00:42" && e.vlan == 42));

    // A crash (kill -9) leaves the vhost-user socket file behind; the next start replaces it.
    let mut switch = switch;
    switch.kill9()?;
    ensure!(
        dir.path().join("api.sock").exists(),
        "expected the crash to leave the socket file"
    );
    let switch = SwitchProcess::start(dir.path(), &yaml)?;
    ensure!(
        key(&switch.client().ports()?) == key(&before),
        "ports after kill -9 and restart differ"
    );

    // Removal is idempotent and persisted too.
    ensure!(switch.client().remove_port("api-port")?.removed);
    ensure!(!switch.client().remove_port("api-port")?.removed);
    drop(switch);
    let switch = SwitchProcess::start(dir.path(), &yaml)?;
    ensure!(switch.port_names()? == ["api-trunk", "cfg"]);
    Ok(())
}

#[test]
fn bad_configs_are_refused_in_one_line_and_leave_nothing_running() -> Result<()> {
    require_dpdk_peers(300)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let prefix = heddle_tests::env::free_file_prefix("heddle-bad");
    let good = config_yaml(dir.path(), &prefix, "");
    let null = |name: &str, dev: u32, vlan: u32| {
        format!("  - {{name: {name}, devargs: net_null{dev}, mode: access, vlan: {vlan}}}\n")
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("offline core", good.replace("pmd: [1]", "pmd: [63]"), "PMD core 63 is not an online CPU"),
        ("hugepage shortfall", good.replace("socket_mem_mb: [256]", "socket_mem_mb: [1048576]").replace("reserve: true", "reserve: false"), "MiB of 2 MiB pages"),
        ("duplicate port", config_yaml(dir.path(), &prefix, &(null("a", 0, 5) + &null("a", 1, 5))), "duplicate port \"a\""),
        ("VLAN 4095", config_yaml(dir.path(), &prefix, &null("a", 0, 4095)), "outside 1-4094"),
        ("VLAN 0", config_yaml(dir.path(), &prefix, &null("a", 0, 0)), "outside 1-4094"),
        ("devargs DPDK rejects", config_yaml(dir.path(), &prefix, "  - {name: a, devargs: \"net_vhost0,iface=/nonexistent/dir/x.sock,bogus=1\", mode: access, vlan: 5}\n"), "DPDK rejected devargs"),
        ("unknown driver", config_yaml(dir.path(), &prefix, &null("a", 0, 5).replace("net_null0", "net_nosuchdriver0")), "DPDK rejected devargs"),
        ("not YAML", "cores: [".to_string(), "is not valid"),
        ("native vhost-user socket too long", config_yaml(dir.path(), &prefix, &format!("  - {{name: a, devargs: \"vhost-user0,iface=/tmp/{}.sock\", mode: access, vlan: 5}}\n", "v".repeat(110))), "107-byte limit"),
        ("native vhost-user bad key", config_yaml(dir.path(), &prefix, "  - {name: a, devargs: \"vhost-user0,iface=/tmp/a.sock,colour=red\", mode: access, vlan: 5}\n"), "key \"colour\" is unknown"),
        ("native vhost-user socket dir missing", config_yaml(dir.path(), &prefix, "  - {name: a, devargs: \"vhost-user0,iface=/nonexistent/dir/a.sock\", mode: access, vlan: 5}\n"), "does the directory exist"),
        ("long socket path", good.replace(&dir.path().join("switch.sock").display().to_string(), &format!("/tmp/{}.sock", "s".repeat(110))), "107-byte limit"),
    ];
    for (what, yaml, want) in cases {
        let (status, out) = run_expect_failure(dir.path(), &yaml)?;
        ensure!(
            !status.success(),
            "{what}: heddle-switch started anyway:\n{out}"
        );
        let last = out
            .lines()
            .filter(|l| l.starts_with("heddle-switch:"))
            .collect::<Vec<_>>();
        ensure!(last.len() == 1, "{what}: want one error line, got:\n{out}");
        ensure!(
            last[0].contains(want),
            "{what}: the error does not say {want:?}:\n{}",
            last[0]
        );
        ensure!(
            !dir.path().join("switch.sock").exists(),
            "{what}: left a control socket behind"
        );
    }
    let (status, out) = run_with_config(&dir.path().join("missing.yaml"))?;
    ensure!(
        !status.success() && out.contains("cannot read config"),
        "unreadable config: {out}"
    );
    // With all that refused, a good config still starts: nothing was left holding resources.
    let sw = SwitchProcess::start(dir.path(), &good).context("a good config after the bad ones")?;
    ensure!(sw.client().health()?.ready);
    Ok(())
}

#[test]
fn two_pmd_workers_split_the_ports_and_share_single_tx_queues() -> Result<()> {
    require_dpdk_peers(800)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let ports = vhost_port("pod-a", 0, &sa, 100, MAC_A) + &vhost_port("pod-b", 1, &sb, 100, MAC_B);
    // net_vhost ports have one TX queue, so both workers transmit through the shared-queue
    // lock on each port; each worker polls one port's RX queue.
    let yaml = config_yaml(
        dir.path(),
        &heddle_tests::env::free_file_prefix("heddle-2w"),
        &ports,
    )
    .replace("pmd: [1]", "pmd: [0, 1]");
    let switch = SwitchProcess::start(dir.path(), &yaml)?;
    let listed = switch.client().ports()?;
    ensure!(
        listed.iter().all(|p| p.tx_queues == 1 && p.rx_queues == 1),
        "{listed:?}"
    );

    let mut gen = mac_pair_generator("gen-2w", 0, (&sa, MAC_A), (&sb, MAC_B), 64)?;
    let g = run_loop(&mut gen, 2_000, Duration::from_secs(20))?;
    std::thread::sleep(Duration::from_millis(300));
    let s = switch.client().stats()?;
    let sp = port_stats(&s);
    ensure!(s.pmd.len() == 2, "want two PMD workers: {:?}", s.pmd);
    ensure!(
        s.pmd.iter().all(|w| w.packets > 0),
        "both workers must have forwarded: {:?}",
        s.pmd
    );
    ensure!(
        s.pmd[0].cpu == 0 && s.pmd[1].cpu == 1,
        "workers not on the configured CPUs: {:?}",
        s.pmd
    );
    for (gport, name) in [(0u16, "pod-a"), (1, "pod-b")] {
        ensure!(
            close(g[&gport].tx_packets, sp[name].rx_packets, 64)
                && close(sp[name].tx_packets, g[&gport].rx_packets, 64),
            "counters disagree on {name}: generator {:?}, switch {:?}",
            g[&gport],
            sp[name]
        );
    }
    Ok(())
}

/// Restricts the calling thread (and the processes it spawns from now on) to `cpus`, as the
/// kubelet's static CPU manager restricts a Guaranteed container; returns the old mask.
fn set_affinity(cpus: &[u32]) -> Result<libc::cpu_set_t> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; both calls get the set's exact size
    // and pid 0 (this thread), and every CPU index is below CPU_SETSIZE (checked).
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        ensure!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old) == 0,
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        );
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            ensure!(
                (c as usize) < libc::CPU_SETSIZE as usize,
                "CPU {c} out of range"
            );
            libc::CPU_SET(c as usize, &mut set);
        }
        ensure!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
        Ok(old)
    }
}

#[test]
fn a_pmd_count_takes_the_non_control_cpu_of_a_two_cpu_mask_and_more_is_refused() -> Result<()> {
    require_dpdk_peers(300)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let prefix = heddle_tests::env::free_file_prefix("heddle-mask");
    let base = config_yaml(dir.path(), &prefix, "");
    ensure!(base.contains("cores: {control: 0, pmd: [1]}"), "{base}");
    // The switch's affinity mask is CPUs 0 and 1 (what a pod with `cpu: 2` gets); the config
    // names no CPU at all.
    let old = set_affinity(&[0, 1])?;
    let result = (|| -> Result<()> {
        let yaml = base.replace("cores: {control: 0, pmd: [1]}", "cores: {pmd: 1}");
        let sw = SwitchProcess::start(dir.path(), &yaml)?;
        let s = sw.client().stats()?;
        ensure!(
            s.cores.control_cpu == 0
                && s.cores.pmd_cpus == [1]
                && s.cores.source == "count"
                && s.cores.usable_cpus == [0, 1],
            "placement reported by the API: {:?}",
            s.cores
        );
        ensure!(
            s.pmd.len() == 1 && s.pmd[0].cpu == 1,
            "the PMD worker is not on CPU 1: {:?}",
            s.pmd
        );
        let log = sw.log();
        ensure!(
            log.contains("PMD cores chosen")
                && log.contains("pmd=[1]")
                && log.contains("source=\"count\""),
            "the switch does not log the cores it took:\n{log}"
        );
        let out = std::process::Command::new(heddle_tests::switch::workspace_binary("heddlectl")?)
            .arg("--socket")
            .arg(sw.socket())
            .arg("pmd-stats")
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success()
                && text.contains(
                    "PMD cores 1 (count from the affinity mask; affinity mask 0,1), control core 0"
                ),
            "heddlectl pmd-stats does not say which cores:\n{text}"
        );
        let metrics = sw.client().metrics()?;
        ensure!(
            metrics.contains(
                "heddle_core_info{role=\"pmd\",worker=\"0\",cpu=\"1\",source=\"count\"} 1"
            ) && metrics
                .contains("heddle_core_info{role=\"control\",cpu=\"0\",source=\"count\"} 1"),
            "metrics do not name the cores:\n{metrics}"
        );
        drop(sw);

        // Two PMD cores do not fit a two-CPU mask with a control core: one sentence, no start.
        let yaml = base.replace("cores: {control: 0, pmd: [1]}", "cores: {pmd: 2}");
        let (status, out) = run_expect_failure(dir.path(), &yaml)?;
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("heddle-switch:"))
            .collect();
        ensure!(
            !status.success()
                && lines
                    == ["heddle-switch: cores.pmd asks for 2 PMD cores but the affinity mask holds only CPUs 0,1 and CPU 0 is the control core: lower cores.pmd, or give the switch 3 CPUs (under the static CPU manager, an integer CPU request equal to its limit)"],
            "too many PMD cores: {status}\n{out}"
        );
        ensure!(
            !dir.path().join("switch.sock").exists(),
            "the refused switch left its control socket behind"
        );
        Ok(())
    })();
    // SAFETY: `old` is the mask sched_getaffinity filled in, passed back with its exact size.
    let restored =
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &old) };
    ensure!(restored == 0, "restoring the test thread's affinity failed");
    result
}
