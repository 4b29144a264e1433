//! Packed virtqueues (virtio 1.1) on native vhost-user ports against a real frontend:
//! dpdk-testpmd `net_virtio_user` with `packed_vq=1`, mergeable buffers and in-order on and
//! off, the switch as server and as client, on ports that offer them (`packed=1`). Each
//! variant must move traffic both ways, the switch must report the rings as packed, and
//! nothing may be counted as a bad chain or a broken ring. A port without `packed=1` serves
//! the same frontend on split rings.
//!
//! Needs root, dpdk-testpmd, hugepages and the binaries built; `deploy/test.sh` does all.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use heddle_api::{PortMode, PortSpec};
use heddle_tests::{
    exclusive_cpus, require_dpdk_peers, wait_until, ForwardMode, SwitchProcess, Testpmd,
};

const MAC_A: &str = "02:00:00:00:05:0a";
const MAC_B: &str = "02:00:00:00:05:0b";

fn native_port(name: &str, sock: &Path, extra: &str, mac: &str) -> PortSpec {
    PortSpec {
        name: name.into(),
        devargs: format!("vhost-user-{name},iface={}{extra}", sock.display()),
        mode: PortMode::Access { vlan: 100 },
        mac: Some(mac.into()),
        queues: None,
        mtu: None,
    }
}

/// A generator with two virtio-user ports addressed to each other (mac forwarding).
fn generator(socks: (&Path, &Path), virtio: &str, server: bool) -> Result<Testpmd> {
    let port = |i: u32, sock: &Path, mac: &str| {
        heddle_tests::testpmd::PortSpec::Raw(format!(
            "net_virtio_user{i},path={},mac={mac},queues=1,server={}{virtio}",
            sock.display(),
            u8::from(server)
        ))
    };
    Testpmd::builder("gen-packed")
        .cpu(0)
        .port(port(0, socks.0, MAC_A))
        .port(port(1, socks.1, MAC_B))
        .forward_mode(ForwardMode::Mac)
        .eth_peer(0, MAC_B)
        .eth_peer(1, MAC_A)
        .txpkts("64")
        .spawn()
}

/// Runs one virtio-user variant through ports pod-a and pod-b of `switch`.
fn pass_traffic(
    switch: &SwitchProcess,
    socks: (&Path, &Path),
    virtio: &str,
    server: bool,
    packed: bool,
) -> Result<()> {
    let client = switch.client();
    let before = client.stats()?;
    let mut gen = generator(socks, virtio, server)?;
    let what = format!("virtio-user{virtio} server={}", u8::from(server));
    gen.wait_ready(Duration::from_secs(30))
        .with_context(|| what.clone())?;
    gen.wait_link_up(0, Duration::from_secs(10))?;
    gen.wait_link_up(1, Duration::from_secs(10))?;
    gen.start_tx_first()?;
    let got = wait_until(
        "traffic both ways through packed rings",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            let s = gen.port_stats()?;
            let (a, b) = (s[&0].rx_packets, s[&1].rx_packets);
            Ok((a > 20_000 && b > 20_000).then_some((a, b)))
        },
    )
    .with_context(|| format!("{what}:\n{}\n{}", gen.log_tail(30), switch.log()))?;
    // While the frontend is connected: the switch says which layout runs.
    let during = client.stats()?;
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
        (b.0 - a.0, b.1 - a.1)
    };
    let (a_rx, a_tx) = delta("pod-a");
    let (b_rx, b_tx) = delta("pod-b");
    eprintln!(
        "{what}: generator rx {got:?}, switch pod-a rx/tx {a_rx}/{a_tx}, pod-b rx/tx {b_rx}/{b_tx}"
    );
    ensure!(
        a_rx > 20_000 && b_rx > 20_000,
        "{what}: the switch did not receive from both pods"
    );
    ensure!(
        a_tx > 20_000 && b_tx > 20_000,
        "{what}: the switch did not send to both pods"
    );
    for p in &during.ports {
        let v = p.vhost.context("native ports report vhost stats")?;
        ensure!(
            v.packed == packed,
            "{what}: {} runs packed rings: {} (want {packed}): {v:?}",
            p.name,
            v.packed
        );
    }
    for p in &after.ports {
        let v = p.vhost.context("native ports report vhost stats")?;
        ensure!(
            v.bad_chains == 0 && v.broken_rings == 0 && v.protocol_errors == 0,
            "{what}: {}: {v:?}",
            p.name
        );
    }
    Ok(())
}

#[test]
fn testpmd_packed_rings_pass_traffic_with_the_switch_as_server() -> Result<()> {
    require_dpdk_peers(600)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start_with_ports(dir.path(), "")?;
    let client = switch.client();
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    client.add_port(&native_port("pod-a", &sa, ",packed=1", MAC_A))?;
    client.add_port(&native_port("pod-b", &sb, ",packed=1", MAC_B))?;
    for virtio in [
        ",packed_vq=1,mrg_rxbuf=0,in_order=0",
        ",packed_vq=1,mrg_rxbuf=1,in_order=0",
        ",packed_vq=1,mrg_rxbuf=0,in_order=1",
        ",packed_vq=1,mrg_rxbuf=1,in_order=1",
    ] {
        pass_traffic(&switch, (&sa, &sb), virtio, false, true)?;
    }
    // Ports that do not offer packed rings: the frontend falls back to split rings.
    for name in ["pod-a", "pod-b"] {
        ensure!(client.remove_port(name)?.removed);
    }
    client.add_port(&native_port("pod-a", &sa, "", MAC_A))?;
    client.add_port(&native_port("pod-b", &sb, "", MAC_B))?;
    pass_traffic(
        &switch,
        (&sa, &sb),
        ",packed_vq=1,mrg_rxbuf=1,in_order=1",
        false,
        false,
    )?;
    Ok(())
}

#[test]
fn testpmd_packed_rings_pass_traffic_with_the_switch_as_client() -> Result<()> {
    require_dpdk_peers(600)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start_with_ports(dir.path(), "")?;
    let client = switch.client();
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    // The switch connects (and reconnects) while the generator listens (server=1).
    client.add_port(&native_port("pod-a", &sa, ",client=1,packed=1", MAC_A))?;
    client.add_port(&native_port("pod-b", &sb, ",client=1,packed=1", MAC_B))?;
    for virtio in [
        ",packed_vq=1,mrg_rxbuf=1,in_order=1",
        ",packed_vq=1,mrg_rxbuf=0,in_order=0",
    ] {
        pass_traffic(&switch, (&sa, &sb), virtio, true, true)?;
    }
    Ok(())
}
