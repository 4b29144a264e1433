//! End-to-end loopback against the peers, one command (`benches/loopback.sh`).
//!
//! One generator (dpdk-testpmd in mac mode, two ports, each addressing its frames to the
//! other, so a learning switch sees unicast both ways) runs on CPU 0; the switch under test
//! runs its forwarding core on CPU 1. Switches, interleaved round by round in one run:
//!
//! - vhost-user (generator: two `net_virtio_user` ports):
//!   `heddle-vhost` heddle-switch with DPDK `net_vhost` ports on VLAN 100;
//!   `testpmd-vhost` dpdk-testpmd io-forwarding between two `net_vhost` ports (no switching);
//!   `ovs-vhost` OVS-DPDK 3.1, NORMAL bridge, `dpdkvhostuser` ports;
//! - memif (generator: two `net_memif` client ports):
//!   `heddle-memif` heddle-switch with `net_memif` server ports on VLAN 100;
//!   `testpmd-memif` dpdk-testpmd io-forwarding between two `net_memif` server ports.
//!
//! Reported per switch and frame size: the median over rounds of the generator's received
//! Mpps and Gbit/s (on the wire, 20 bytes of preamble and gap per frame included) and the
//! switch core's processing cycles per packet (heddle: its PMD counters over the window;
//! testpmd: `--record-core-cycles` over its run; OVS: `pmd-stats-show` over the window).
//! On two CPUs the generator caps the loop, so cycles per packet is what tells switches
//! apart. `--scale 2,8,16` adds heddle and testpmd with that many vhost-user pods (ports
//! paired) on the one PMD core, and the API's port add/remove rate.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use heddle_benches::ovs::Ovs;
use heddle_tests::{
    config_yaml, env::free_file_prefix, require_dpdk_peers, ForwardMode, SwitchProcess, Testpmd,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sut {
    HeddleVhost,
    TestpmdVhost,
    OvsVhost,
    HeddleMemif,
    TestpmdMemif,
}

impl Sut {
    fn name(self) -> &'static str {
        match self {
            Sut::HeddleVhost => "heddle-switch, net_vhost ports (learning, VLAN)",
            Sut::TestpmdVhost => "dpdk-testpmd io-fwd, net_vhost (no switching)",
            Sut::OvsVhost => "OVS-DPDK 3.1 NORMAL bridge, dpdkvhostuser",
            Sut::HeddleMemif => "heddle-switch, net_memif ports (learning, VLAN)",
            Sut::TestpmdMemif => "dpdk-testpmd io-fwd, net_memif (no switching)",
        }
    }

    fn memif(self) -> bool {
        matches!(self, Sut::HeddleMemif | Sut::TestpmdMemif)
    }

    /// The peer the ratios are taken against.
    fn baseline(self) -> Sut {
        if self.memif() {
            Sut::TestpmdMemif
        } else {
            Sut::TestpmdVhost
        }
    }
}

struct Sample {
    mpps: f64,
    cycles_per_packet: f64,
}

fn arg(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn list(text: &str) -> Vec<u32> {
    text.split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn mac(i: usize) -> String {
    format!("02:00:00:00:{:02x}:{:02x}", 1 + i / 256, i % 256)
}

/// A generator with `n` (even) ports paired 0-1, 2-3, ...: each sends to its partner's MAC.
fn generator(sockets: &[PathBuf], memif: bool, size: u32) -> Result<Testpmd> {
    let n = sockets.len();
    let mut b = Testpmd::builder("gen")
        .cpu(0)
        .forward_mode(ForwardMode::Mac)
        .txpkts(&size.to_string())
        .memory_mb(Some(if n > 4 { 1024 } else { 256 }))
        .total_num_mbufs(Some(if n > 4 { 8192 * n as u32 } else { 16384 }));
    for (i, s) in sockets.iter().enumerate() {
        b = if memif {
            b.memif(s, false, 0, &mac(i))
        } else {
            b.virtio_user(s, &mac(i), false)
        };
        b = b.eth_peer(i as u16, &mac(i ^ 1));
    }
    let mut gen = b.spawn()?;
    gen.wait_ready(Duration::from_secs(30))?;
    for i in 0..n {
        gen.wait_link_up(i as u16, Duration::from_secs(20))?;
    }
    Ok(gen)
}

fn rx_total(gen: &mut Testpmd) -> Result<u64> {
    Ok(gen.port_stats()?.values().map(|p| p.rx_packets).sum())
}

fn heddle_ports(dir: &Path, n: usize, memif: bool) -> (String, Vec<PathBuf>) {
    let mut yaml = String::new();
    let mut socks = Vec::new();
    for i in 0..n {
        let (devargs, sock) = if memif {
            let s = dir.join(format!("p{i}.memif"));
            (
                format!(
                    "net_memif{i},role=server,socket={},socket-abstract=no,id=0",
                    s.display()
                ),
                s,
            )
        } else {
            let s = dir.join(format!("p{i}.sock"));
            (format!("net_vhost{i},iface={}", s.display()), s)
        };
        let _ = writeln!(
            yaml,
            "  - {{name: p{i}, devargs: \"{devargs}\", mode: access, vlan: {}, mac: \"{}\"}}",
            100 + i / 2,
            mac(i)
        );
        socks.push(sock);
    }
    (yaml, socks)
}

/// Measures one round: warm up 1 s, then a window of `secs`.
fn round(sut: Sut, pods: usize, size: u32, secs: f64) -> Result<Sample> {
    let dir = tempfile::tempdir()?;
    let warm = Duration::from_secs(1);
    match sut {
        Sut::HeddleVhost | Sut::HeddleMemif => {
            let (ports, socks) = heddle_ports(dir.path(), pods, sut.memif());
            let yaml = config_yaml(dir.path(), &free_file_prefix("heddle-lb"), &ports)
                .replace("socket_mem_mb: [256]", "socket_mem_mb: [512]")
                .replace("count: 8192", &format!("count: {}", 16384.max(4096 * pods)))
                .replace("rx_ring: 512, tx_ring: 512", "rx_ring: 1024, tx_ring: 1024");
            let switch = SwitchProcess::start(dir.path(), &yaml)?;
            let client = switch.client();
            let mut gen = generator(&socks, sut.memif(), size)?;
            gen.start_tx_first()?;
            std::thread::sleep(warm);
            let (r0, p0) = (rx_total(&mut gen)?, client.stats()?.pmd[0].clone());
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_secs_f64(secs));
            let (r1, p1) = (rx_total(&mut gen)?, client.stats()?.pmd[0].clone());
            let dt = t0.elapsed().as_secs_f64();
            Ok(Sample {
                mpps: (r1 - r0) as f64 / dt / 1e6,
                cycles_per_packet: p1.busy_cycles.saturating_sub(p0.busy_cycles) as f64
                    / p1.packets.saturating_sub(p0.packets).max(1) as f64,
            })
        }
        Sut::TestpmdVhost | Sut::TestpmdMemif => {
            let mut b = Testpmd::builder("sut")
                .cpu(1)
                .forward_mode(ForwardMode::Io)
                .app_arg("--record-core-cycles")
                .memory_mb(Some(512))
                .total_num_mbufs(Some(16384.max(4096 * pods as u32)))
                .auto_start(true);
            let mut socks = Vec::new();
            for i in 0..pods {
                if sut.memif() {
                    let s = dir.path().join(format!("p{i}.memif"));
                    b = b.memif(&s, true, 0, &mac(100 + i));
                    socks.push(s);
                } else {
                    let s = dir.path().join(format!("p{i}.sock"));
                    b = b.vhost(&s, false);
                    socks.push(s);
                }
            }
            let mut sw = b.spawn()?;
            sw.wait_ready(Duration::from_secs(30))?;
            let mut gen = generator(&socks, sut.memif(), size)?;
            gen.start_tx_first()?;
            std::thread::sleep(warm);
            let r0 = rx_total(&mut gen)?;
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_secs_f64(secs));
            let r1 = rx_total(&mut gen)?;
            let dt = t0.elapsed().as_secs_f64();
            let out = sw.command_wait("stop", Duration::from_secs(10), |s| s.contains("Done."))?;
            let cycles_per_packet = out
                .lines()
                .rev()
                .filter_map(|l| l.split("CPU cycles/packet=").nth(1))
                .find_map(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .with_context(|| format!("testpmd printed no CPU cycles/packet:\n{out}"))?;
            Ok(Sample {
                mpps: (r1 - r0) as f64 / dt / 1e6,
                cycles_per_packet,
            })
        }
        Sut::OvsVhost => {
            let names: Vec<String> = (0..pods).map(|i| format!("p{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let ovs = Ovs::start(dir.path(), 0, 1, 512, &refs)?;
            let socks: Vec<PathBuf> = names.iter().map(|n| dir.path().join(n)).collect();
            let mut gen = generator(&socks, false, size)?;
            gen.start_tx_first()?;
            std::thread::sleep(warm);
            let r0 = rx_total(&mut gen)?;
            ovs.clear_pmd_stats()?;
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_secs_f64(secs));
            let r1 = rx_total(&mut gen)?;
            let dt = t0.elapsed().as_secs_f64();
            let cycles_per_packet = ovs.processing_cycles_per_packet()?;
            drop(gen);
            drop(ovs);
            Ok(Sample {
                mpps: (r1 - r0) as f64 / dt / 1e6,
                cycles_per_packet,
            })
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Row {
    sut: Sut,
    pods: usize,
    size: u32,
    mpps: Vec<f64>,
    cycles: Vec<f64>,
}

/// Adds and removes `n` vhost-user ports through the API; returns (adds/s, removes/s).
fn port_churn(n: usize) -> Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start(
        dir.path(),
        &config_yaml(dir.path(), &free_file_prefix("heddle-churn"), ""),
    )?;
    let client = switch.client();
    let specs: Vec<heddle_api::PortSpec> = (0..n)
        .map(|i| heddle_api::PortSpec {
            name: format!("p{i}"),
            devargs: format!(
                "net_vhost{i},iface={}",
                dir.path().join(format!("p{i}.sock")).display()
            ),
            mode: heddle_api::PortMode::Access { vlan: 100 },
            mac: Some(mac(i)),
            queues: None,
        })
        .collect();
    let t = Instant::now();
    for s in &specs {
        client.add_port(s)?;
    }
    let add = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for s in &specs {
        client.remove_port(&s.name)?;
    }
    Ok((add, n as f64 / t.elapsed().as_secs_f64()))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = arg(&args, "--rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let secs: f64 = arg(&args, "--seconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    let sizes = list(&arg(&args, "--sizes").unwrap_or_else(|| "64,512,1518".into()));
    let scale: Vec<usize> = list(&arg(&args, "--scale").unwrap_or_default())
        .into_iter()
        .map(|n| n as usize)
        .collect();
    let out_dir = PathBuf::from(arg(&args, "--out").unwrap_or_else(|| "benches/results".into()));
    let suts: Vec<Sut> = match arg(&args, "--only").as_deref() {
        Some("vhost") => vec![Sut::HeddleVhost, Sut::TestpmdVhost, Sut::OvsVhost],
        Some("memif") => vec![Sut::HeddleMemif, Sut::TestpmdMemif],
        Some("none") => vec![],
        _ => vec![
            Sut::HeddleVhost,
            Sut::TestpmdVhost,
            Sut::OvsVhost,
            Sut::HeddleMemif,
            Sut::TestpmdMemif,
        ],
    };
    if sizes.is_empty() || scale.iter().any(|n| *n < 2 || n % 2 == 1 || *n > 30) {
        bail!("--sizes takes a list like 64,512,1518; --scale a list of even pod counts from 2 to 30 (DPDK here has 32 ethdev ports)");
    }
    require_dpdk_peers(2000)?;

    let mut rows: Vec<Row> = Vec::new();
    let mut plan: Vec<(Sut, usize, u32)> = Vec::new();
    for &z in &sizes {
        for &s in &suts {
            plan.push((s, 2, z));
        }
    }
    for &n in &scale {
        for s in [Sut::HeddleVhost, Sut::TestpmdVhost] {
            plan.push((s, n, 64));
        }
    }
    for &(s, n, z) in &plan {
        rows.push(Row {
            sut: s,
            pods: n,
            size: z,
            mpps: Vec::new(),
            cycles: Vec::new(),
        });
    }
    for r in 0..rounds {
        // Alternate the order each round, so drift on the machine hits every switch alike.
        let order: Vec<_> = if r % 2 == 0 {
            plan.clone()
        } else {
            plan.iter().rev().copied().collect()
        };
        for (s, n, z) in order {
            let sample = round(s, n, z, secs)
                .with_context(|| format!("{s:?}, {n} pods, {z} B, round {r}"))?;
            eprintln!(
                "round {r}: {:<14} {n:>2} pods {z:>4} B {:6.2} Mpps {:7.1} cycles/pkt",
                format!("{s:?}"),
                sample.mpps,
                sample.cycles_per_packet
            );
            let row = rows
                .iter_mut()
                .find(|x| x.sut == s && x.pods == n && x.size == z)
                .expect("planned");
            row.mpps.push(sample.mpps);
            row.cycles.push(sample.cycles_per_packet);
        }
    }
    let churn: Vec<(usize, f64, f64)> = scale
        .iter()
        .map(|&n| port_churn(n).map(|(a, d)| (n, a, d)))
        .collect::<Result<_>>()?;

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let command = format!("benches/loopback.sh {}", args[1..].join(" "));
    let mut md = String::new();
    let _ = writeln!(md, "# Loopback against the peers\n");
    let _ = writeln!(md, "CPU: {cpu}, {} CPUs. Generator: dpdk-testpmd, mac forwarding, CPU 0; switch under test on CPU 1.", std::thread::available_parallelism().map_or(0, |n| n.get()));
    let _ = writeln!(md, "{rounds} interleaved rounds of {secs} s after 1 s of warm-up; medians. Command: `{command}`\n");
    let _ = writeln!(md, "| switch | pods | frame B | Mpps | Gbit/s | cycles/packet | Mpps vs testpmd | cycles vs testpmd | cycles vs OVS |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    let find = |s: Sut, n: usize, z: u32| {
        rows.iter()
            .find(|x| x.sut == s && x.pods == n && x.size == z)
    };
    for x in &rows {
        let (m, c) = (median(&x.mpps), median(&x.cycles));
        let gbps = m * 1e6 * (f64::from(x.size) + 20.0) * 8.0 / 1e9;
        let base = find(x.sut.baseline(), x.pods, x.size);
        let (bm, bc) = base.map_or((f64::NAN, f64::NAN), |b| {
            (median(&b.mpps), median(&b.cycles))
        });
        let ovs = find(Sut::OvsVhost, x.pods, x.size)
            .filter(|_| !x.sut.memif())
            .map_or(f64::NAN, |o| median(&o.cycles));
        let ratio = |a: f64, b: f64| {
            if b.is_finite() && b > 0.0 {
                format!("{:.2}x", a / b)
            } else {
                "-".into()
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {m:.2} | {gbps:.2} | {c:.0} | {} | {} | {} |",
            x.sut.name(),
            x.pods,
            x.size,
            ratio(m, bm),
            ratio(c, bc),
            ratio(c, ovs)
        );
    }
    if !churn.is_empty() {
        let _ = writeln!(
            md,
            "\n| vhost-user ports | adds/s | removes/s |\n|---|---|---|"
        );
        for (n, a, d) in &churn {
            let _ = writeln!(md, "| {n} | {a:.0} | {d:.0} |");
        }
    }
    print!("{md}");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join("loopback.md"), &md)?;
    // Wide tables for the chart: one row per switch, one column per frame size.
    let mut mpps = String::new();
    let mut cycles = String::new();
    for s in &suts {
        let _ = write!(mpps, "\"{s:?}\"");
        let _ = write!(cycles, "\"{s:?}\"");
        for &z in &sizes {
            let x = find(*s, 2, z);
            let _ = write!(mpps, " {:.3}", x.map_or(f64::NAN, |x| median(&x.mpps)));
            let _ = write!(cycles, " {:.1}", x.map_or(f64::NAN, |x| median(&x.cycles)));
        }
        mpps.push('\n');
        cycles.push('\n');
    }
    std::fs::write(out_dir.join("loopback-mpps.dat"), &mpps)?;
    std::fs::write(out_dir.join("loopback-cycles.dat"), &cycles)?;
    if !suts.is_empty() {
        chart(&out_dir, &sizes).unwrap_or_else(|e| eprintln!("no chart: {e:#}"));
    }
    Ok(())
}

/// `loopback.png`: Mpps and cycles per packet by switch and frame size, with gnuplot.
fn chart(dir: &Path, sizes: &[u32]) -> Result<()> {
    let plot = |file: &str| {
        sizes
            .iter()
            .enumerate()
            .map(|(i, z)| {
                format!(
                    "'{}' using {}{} title '{z} B'",
                    dir.join(file).display(),
                    i + 2,
                    if i == 0 { ":xtic(1)" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let script = format!(
        "set terminal png size 1200,520\nset output '{}'\nset multiplot layout 1,2\nset style data histograms\n\
         set style histogram clustered\nset style fill solid 0.8\nset key top right\nset xtics rotate by -25\nset yrange [0:*]\n\
         set title 'generator Mpps received (2 pods)'\nplot {}\nset title 'switch core cycles per packet'\nplot {}\nunset multiplot\n",
        dir.join("loopback.png").display(),
        plot("loopback-mpps.dat"),
        plot("loopback-cycles.dat")
    );
    let gp = dir.join("loopback.gp");
    std::fs::write(&gp, script)?;
    let st = std::process::Command::new("gnuplot")
        .arg(&gp)
        .status()
        .context("running gnuplot (Debian package gnuplot-nox)")?;
    if !st.success() {
        bail!("gnuplot failed on {}", gp.display());
    }
    Ok(())
}
