//! End-to-end loopback: one generator (dpdk-testpmd, two virtio-user ports in mac mode, each
//! addressed to the other) on CPU 0 drives the switch under test on CPU 1 through two
//! vhost-user ports. Switches under test, interleaved round by round in one run:
//!
//! - `heddle`: heddle-switch, both ports access ports of VLAN 100 (learning bridge);
//! - `testpmd-io`: dpdk-testpmd io-forwarding between two `net_vhost` ports (no switching).
//!
//! Reports, per switch and frame size, the median over rounds of the generator's received
//! Mpps and Gbit/s, and the switch core's cycles per packet (heddle: its PMD counters;
//! testpmd: `--record-core-cycles`, averaged over its whole run including the warm-up).
//!
//! Run it with `benches/loopback.sh` (builds release binaries, reserves hugepages).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use heddle_tests::{
    config_yaml, env::free_file_prefix, mac_pair_generator, require_dpdk_peers, ForwardMode,
    SwitchProcess, Testpmd,
};

const MAC_A: &str = "02:00:00:00:01:0a";
const MAC_B: &str = "02:00:00:00:01:0b";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sut {
    Heddle,
    TestpmdIo,
}

impl Sut {
    fn name(self) -> &'static str {
        match self {
            Sut::Heddle => "heddle-switch (net_vhost ports, L2 learning, VLAN)",
            Sut::TestpmdIo => "dpdk-testpmd io-fwd (net_vhost ports, no switching)",
        }
    }
}

struct Sample {
    mpps: f64,
    cycles_per_packet: f64,
}

fn arg<T: std::str::FromStr>(args: &[String], flag: &str, default: T) -> T {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn generator(dir: &std::path::Path, size: u32) -> Result<Testpmd> {
    mac_pair_generator(
        "gen",
        0,
        (&dir.join("a.sock"), MAC_A),
        (&dir.join("b.sock"), MAC_B),
        size,
    )
}

fn rx_total(gen: &mut Testpmd) -> Result<u64> {
    let s = gen.port_stats()?;
    Ok(s.values().map(|p| p.rx_packets).sum())
}

fn round(sut: Sut, size: u32, secs: f64) -> Result<Sample> {
    let dir = tempfile::tempdir()?;
    match sut {
        Sut::Heddle => {
            let port = |n: &str, d: u32, s: &str, mac: &str| {
                format!(
                    "  - {{name: {n}, devargs: \"net_vhost{d},iface={}\", mode: access, vlan: 100, mac: \"{mac}\"}}\n",
                    dir.path().join(s).display()
                )
            };
            let yaml = config_yaml(
                dir.path(),
                &free_file_prefix("heddle-lb"),
                &(port("a", 0, "a.sock", MAC_A) + &port("b", 1, "b.sock", MAC_B)),
            )
            .replace("rx_ring: 512, tx_ring: 512", "rx_ring: 1024, tx_ring: 1024")
            .replace("count: 8192", "count: 16384");
            let switch = SwitchProcess::start(dir.path(), &yaml)?;
            let client = switch.client();
            let mut gen = generator(dir.path(), size)?;
            gen.start_tx_first()?;
            std::thread::sleep(Duration::from_secs(1));
            let (r0, p0) = (rx_total(&mut gen)?, client.stats()?.pmd[0].clone());
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_secs_f64(secs));
            let (r1, p1) = (rx_total(&mut gen)?, client.stats()?.pmd[0].clone());
            let dt = t0.elapsed().as_secs_f64();
            let pkts = p1.packets.saturating_sub(p0.packets).max(1);
            Ok(Sample {
                mpps: (r1 - r0) as f64 / dt / 1e6,
                cycles_per_packet: p1.busy_cycles.saturating_sub(p0.busy_cycles) as f64
                    / pkts as f64,
            })
        }
        Sut::TestpmdIo => {
            let mut sw = Testpmd::builder("sut")
                .cpu(1)
                .vhost(dir.path().join("a.sock"), false)
                .vhost(dir.path().join("b.sock"), false)
                .forward_mode(ForwardMode::Io)
                .app_arg("--record-core-cycles")
                .auto_start(true)
                .spawn()?;
            sw.wait_ready(Duration::from_secs(20))?;
            let mut gen = generator(dir.path(), size)?;
            gen.start_tx_first()?;
            std::thread::sleep(Duration::from_secs(1));
            let r0 = rx_total(&mut gen)?;
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_secs_f64(secs));
            let r1 = rx_total(&mut gen)?;
            let dt = t0.elapsed().as_secs_f64();
            let out = sw.command_wait("stop", Duration::from_secs(10), |s| s.contains("Done."))?;
            let cpp = out
                .lines()
                .rev()
                .filter_map(|l| l.split("CPU cycles/packet=").nth(1))
                .find_map(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .with_context(|| format!("testpmd printed no CPU cycles/packet:\n{out}"))?;
            Ok(Sample {
                mpps: (r1 - r0) as f64 / dt / 1e6,
                cycles_per_packet: cpp,
            })
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = arg(&args, "--rounds", 3);
    let secs: f64 = arg(&args, "--seconds", 3.0);
    let sizes: String = arg(&args, "--sizes", "64,1518".to_string());
    let sizes: Vec<u32> = sizes.split(',').filter_map(|s| s.parse().ok()).collect();
    if sizes.is_empty() {
        bail!("--sizes takes a list like 64,512,1518");
    }
    require_dpdk_peers(1200)?;
    let suts = [Sut::Heddle, Sut::TestpmdIo];
    let mut results: Vec<(Sut, u32, Vec<f64>, Vec<f64>)> = Vec::new();
    for s in suts {
        for &z in &sizes {
            results.push((s, z, Vec::new(), Vec::new()));
        }
    }
    for r in 0..rounds {
        for &z in &sizes {
            // Alternate which switch goes first, so drift on the machine hits both alike.
            let order: Vec<Sut> = if r % 2 == 0 {
                suts.to_vec()
            } else {
                suts.iter().rev().copied().collect()
            };
            for s in order {
                let sample = round(s, z, secs).with_context(|| format!("{s:?} {z} B round {r}"))?;
                eprintln!(
                    "round {r} {z:>4} B {:<10} {:6.2} Mpps {:7.1} cycles/pkt",
                    format!("{s:?}"),
                    sample.mpps,
                    sample.cycles_per_packet
                );
                let e = results
                    .iter_mut()
                    .find(|e| e.0 == s && e.1 == z)
                    .expect("every pair is listed");
                e.2.push(sample.mpps);
                e.3.push(sample.cycles_per_packet);
            }
        }
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let mut md = String::new();
    let _ = writeln!(md, "# Loopback: {} rounds x {secs} s, medians\n\nCPU: {cpu}\n\nGenerator: dpdk-testpmd, two virtio-user ports, mac forwarding, CPU 0. Switch under test on CPU 1.\n", rounds);
    let _ = writeln!(md, "| switch | frame | Mpps | Gbit/s | cycles/packet | vs testpmd io-fwd (Mpps, cycles) |\n|---|---|---|---|---|---|");
    for (s, z, mpps, cpp) in &mut results.clone() {
        let m = median(mpps);
        let c = median(cpp);
        let peer = results
            .iter()
            .find(|e| e.0 == Sut::TestpmdIo && e.1 == *z)
            .expect("listed");
        let (pm, pc) = (median(&mut peer.2.clone()), median(&mut peer.3.clone()));
        let gbps = m * 1e6 * (*z as f64 + 20.0) * 8.0 / 1e9;
        let _ = writeln!(
            md,
            "| {} | {z} | {m:.2} | {gbps:.2} | {c:.0} | {:.2}x, {:.2}x |",
            s.name(),
            m / pm,
            c / pc
        );
    }
    let _ = writeln!(
        md,
        "\nCommand: `benches/loopback.sh --rounds {rounds} --seconds {secs} --sizes {}`",
        sizes
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    print!("{md}");
    Ok(())
}
