//! End-to-end loopback against the peers, one command (`benches/loopback.sh`).
//!
//! One generator (dpdk-testpmd in mac mode, ports paired 0-1, 2-3, ..., each addressing its
//! frames to its partner, so a learning switch sees unicast both ways) runs on CPU 0; the
//! switch under test runs its forwarding core on CPU 1. Switches, interleaved round by round
//! in one run:
//!
//! - vhost-user (generator: `net_virtio_user` ports):
//!   `heddle-native` heddle-switch with its native Rust vhost-user ports (`vhost-userN`) on
//!   VLAN 100;
//!   `heddle-vhost` heddle-switch with DPDK `net_vhost` ports on VLAN 100;
//!   `testpmd-vhost` dpdk-testpmd io-forwarding between two `net_vhost` ports (no switching);
//!   `ovs-vhost` OVS-DPDK 3.1, NORMAL bridge, `dpdkvhostuser` ports;
//! - memif (generator: two `net_memif` client ports):
//!   `heddle-memif` heddle-switch with `net_memif` server ports on VLAN 100;
//!   `testpmd-memif` dpdk-testpmd io-forwarding between two `net_memif` server ports.
//!
//! Reported per switch and frame size: the median over rounds of the generators' received
//! Mpps and Gbit/s (on the wire, 20 bytes of preamble and gap per frame included) and the
//! switch core's processing cycles per packet (heddle: its PMD counters over the window;
//! testpmd: `--record-core-cycles` over its run; OVS: `pmd-stats-show` over the window).
//! On two CPUs the generator caps the loop, so cycles per packet is what tells switches
//! apart.
//!
//! `--scale 2,16,64` adds the vhost-user switches with that many pods (ports, paired) on the
//! one PMD core, and the API's port add/remove rate for native and `net_vhost` ports. This
//! DPDK build has `RTE_MAX_ETHPORTS=32`: testpmd (generator and peer) and heddle's
//! `net_vhost` ports stop at 32 ethdevs. Above 30 pods the generator is several testpmd
//! processes (at most 30 ports each, pairs inside one process, all on CPU 0), whose
//! counters are summed; the ethdev-based switches are reported as not run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use heddle_benches::ovs::Ovs;
use heddle_tests::{
    config_yaml, env::free_file_prefix, require_dpdk_peers, ForwardMode, SwitchProcess, Testpmd,
};

/// `RTE_MAX_ETHPORTS` of the DPDK build (Debian's 22.11).
const MAX_ETHDEVS: usize = 32;
/// Ports per generator process: under [`MAX_ETHDEVS`], and even so pairs stay together.
const GEN_PORTS: usize = 30;
/// Why an ethdev-based switch does not run above [`MAX_ETHDEVS`] pods.
const ETHDEV_LIMIT: &str = "not run: over 32 ethdevs (RTE_MAX_ETHPORTS of this DPDK build)";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sut {
    HeddleNative,
    HeddleVhost,
    TestpmdVhost,
    OvsVhost,
    HeddleMemif,
    TestpmdMemif,
}

/// How heddle-switch's ports are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Native,
    Vhost,
    Memif,
}

const ALL: [Sut; 6] = [
    Sut::HeddleNative,
    Sut::HeddleVhost,
    Sut::TestpmdVhost,
    Sut::OvsVhost,
    Sut::HeddleMemif,
    Sut::TestpmdMemif,
];

impl Sut {
    fn name(self) -> &'static str {
        match self {
            Sut::HeddleNative => "heddle-switch, native vhost-user ports (learning, VLAN)",
            Sut::HeddleVhost => "heddle-switch, net_vhost ports (learning, VLAN)",
            Sut::TestpmdVhost => "dpdk-testpmd io-fwd, net_vhost (no switching)",
            Sut::OvsVhost => "OVS-DPDK 3.1 NORMAL bridge, dpdkvhostuser",
            Sut::HeddleMemif => "heddle-switch, net_memif ports (learning, VLAN)",
            Sut::TestpmdMemif => "dpdk-testpmd io-fwd, net_memif (no switching)",
        }
    }

    /// Short name: chart labels and `--skip`.
    fn key(self) -> &'static str {
        match self {
            Sut::HeddleNative => "heddle-native",
            Sut::HeddleVhost => "heddle-vhost",
            Sut::TestpmdVhost => "testpmd-vhost",
            Sut::OvsVhost => "ovs-vhost",
            Sut::HeddleMemif => "heddle-memif",
            Sut::TestpmdMemif => "testpmd-memif",
        }
    }

    fn memif(self) -> bool {
        matches!(self, Sut::HeddleMemif | Sut::TestpmdMemif)
    }

    /// Each port is a DPDK ethdev in the switch (so at most [`MAX_ETHDEVS`] of them).
    /// OVS drives vhost-user through librte_vhost directly, and heddle's native ports are
    /// its own: neither is an ethdev.
    fn ethdev_ports(self) -> bool {
        !matches!(self, Sut::HeddleNative | Sut::OvsVhost)
    }

    fn heddle(self) -> Option<Kind> {
        match self {
            Sut::HeddleNative => Some(Kind::Native),
            Sut::HeddleVhost => Some(Kind::Vhost),
            Sut::HeddleMemif => Some(Kind::Memif),
            _ => None,
        }
    }

    /// The testpmd peer of the same port type.
    fn testpmd(self) -> Sut {
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

/// MiB of hugepages for a DPDK process holding `mbufs` default-sized mbufs (about 2.4 KiB
/// each with headers) plus rings and heap: a multiple of 64, at least `floor`.
fn memory_for(mbufs: u32, floor: u32) -> u32 {
    let mib = 160 + (u64::from(mbufs) * 2560).div_ceil(1 << 20) as u32;
    (mib.div_ceil(64) * 64).max(floor)
}

/// The generators for `sockets` (an even number, paired 0-1, 2-3, ...): one testpmd per
/// [`GEN_PORTS`] ports, all on CPU 0, each port sending to its partner's MAC; all ready and
/// with every link up.
fn generators(sockets: &[PathBuf], memif: bool, size: u32) -> Result<Vec<Testpmd>> {
    let mut gens = Vec::new();
    for (c, chunk) in sockets.chunks(GEN_PORTS).enumerate() {
        let n = chunk.len() as u32;
        let mbufs = 16384 + 4096 * n;
        let mut b = Testpmd::builder(&format!("gen{c}"))
            .cpu(0)
            .forward_mode(ForwardMode::Mac)
            .txpkts(&size.to_string())
            .memory_mb(Some(memory_for(mbufs, 256)))
            .total_num_mbufs(Some(mbufs));
        for (j, s) in chunk.iter().enumerate() {
            let i = c * GEN_PORTS + j;
            b = if memif {
                b.memif(s, false, 0, &mac(i))
            } else {
                b.virtio_user(s, &mac(i), false)
            };
            b = b.eth_peer(j as u16, &mac(i ^ 1));
        }
        let mut gen = b.spawn()?;
        gen.wait_ready(Duration::from_secs(30))?;
        gens.push(gen);
    }
    for (gen, chunk) in gens.iter_mut().zip(sockets.chunks(GEN_PORTS)) {
        for j in 0..chunk.len() {
            gen.wait_link_up(j as u16, Duration::from_secs(30))?;
        }
    }
    Ok(gens)
}

fn rx_total(gens: &mut [Testpmd]) -> Result<u64> {
    let mut sum = 0;
    for gen in gens {
        sum += gen
            .port_stats()?
            .values()
            .map(|p| p.rx_packets)
            .sum::<u64>();
    }
    Ok(sum)
}

fn heddle_ports(dir: &Path, n: usize, kind: Kind) -> (String, Vec<PathBuf>) {
    let mut yaml = String::new();
    let mut socks = Vec::new();
    for i in 0..n {
        let (devargs, sock) = match kind {
            Kind::Memif => {
                let s = dir.join(format!("p{i}.memif"));
                (
                    format!(
                        "net_memif{i},role=server,socket={},socket-abstract=no,id=0",
                        s.display()
                    ),
                    s,
                )
            }
            Kind::Vhost => {
                let s = dir.join(format!("p{i}.sock"));
                (format!("net_vhost{i},iface={}", s.display()), s)
            }
            Kind::Native => {
                let s = dir.join(format!("p{i}.sock"));
                (format!("vhost-user{i},iface={}", s.display()), s)
            }
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

/// Runs the generators' loop: warm up 1 s, then a window of `secs`. `probe` reads the switch's
/// own counters at both ends of the window (heddle, OVS); returns (Mpps, what `probe` made of
/// the window).
fn window<T>(
    gens: &mut [Testpmd],
    secs: f64,
    mut probe: impl FnMut(bool) -> Result<T>,
) -> Result<(f64, T)> {
    for gen in gens.iter_mut() {
        gen.start_tx_first()?;
    }
    std::thread::sleep(Duration::from_secs(1));
    let r0 = rx_total(gens)?;
    probe(false)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let r1 = rx_total(gens)?;
    let dt = t0.elapsed().as_secs_f64();
    let x = probe(true)?;
    Ok(((r1 - r0) as f64 / dt / 1e6, x))
}

/// Measures one round.
fn round(sut: Sut, pods: usize, size: u32, secs: f64) -> Result<Sample> {
    let dir = tempfile::tempdir()?;
    if let Some(kind) = sut.heddle() {
        let (ports, socks) = heddle_ports(dir.path(), pods, kind);
        // Native ports hold no mbufs in descriptor rings (frames are copied from and into
        // the guest's buffers), so they need fewer per port than ethdevs.
        let per_port = if kind == Kind::Native { 2048 } else { 4096 };
        let mbufs = 16384.max(per_port * pods as u32);
        let yaml = config_yaml(dir.path(), &free_file_prefix("heddle-lb"), &ports)
            .replace(
                "socket_mem_mb: [256]",
                &format!("socket_mem_mb: [{}]", memory_for(mbufs, 512)),
            )
            .replace("count: 8192", &format!("count: {mbufs}"))
            .replace("rx_ring: 512, tx_ring: 512", "rx_ring: 1024, tx_ring: 1024");
        let switch = SwitchProcess::start(dir.path(), &yaml)?;
        let client = switch.client();
        let mut gens = generators(&socks, sut.memif(), size)?;
        let mut p0 = None;
        let (mpps, cycles_per_packet) = window(&mut gens, secs, |end| {
            let p = client.stats()?.pmd[0].clone();
            Ok(match (end, p0.take()) {
                (true, Some((c0, n0))) => {
                    p.busy_cycles.saturating_sub(c0) as f64
                        / p.packets.saturating_sub(n0).max(1) as f64
                }
                _ => {
                    p0 = Some((p.busy_cycles, p.packets));
                    f64::NAN
                }
            })
        })?;
        drop(gens);
        drop(switch);
        return Ok(Sample {
            mpps,
            cycles_per_packet,
        });
    }
    match sut {
        Sut::TestpmdVhost | Sut::TestpmdMemif => {
            let mbufs = 16384.max(4096 * pods as u32);
            let mut b = Testpmd::builder("sut")
                .cpu(1)
                .forward_mode(ForwardMode::Io)
                .app_arg("--record-core-cycles")
                .memory_mb(Some(memory_for(mbufs, 512)))
                .total_num_mbufs(Some(mbufs))
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
            let mut gens = generators(&socks, sut.memif(), size)?;
            let (mpps, ()) = window(&mut gens, secs, |_| Ok(()))?;
            let out = sw.command_wait("stop", Duration::from_secs(10), |s| s.contains("Done."))?;
            let cycles_per_packet = out
                .lines()
                .rev()
                .filter_map(|l| l.split("CPU cycles/packet=").nth(1))
                .find_map(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .with_context(|| format!("testpmd printed no CPU cycles/packet:\n{out}"))?;
            Ok(Sample {
                mpps,
                cycles_per_packet,
            })
        }
        Sut::OvsVhost => {
            let names: Vec<String> = (0..pods).map(|i| format!("p{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let ovs = Ovs::start(dir.path(), 0, 1, if pods > 16 { 1024 } else { 512 }, &refs)?;
            let socks: Vec<PathBuf> = names.iter().map(|n| dir.path().join(n)).collect();
            let mut gens = generators(&socks, false, size)?;
            let (mpps, cycles_per_packet) = window(&mut gens, secs, |end| {
                if end {
                    ovs.processing_cycles_per_packet()
                } else {
                    ovs.clear_pmd_stats().map(|()| f64::NAN)
                }
            })?;
            drop(gens);
            drop(ovs);
            Ok(Sample {
                mpps,
                cycles_per_packet,
            })
        }
        _ => unreachable!("heddle handled above"),
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
    /// Why it was not measured, if it was not.
    skipped: Option<&'static str>,
    mpps: Vec<f64>,
    cycles: Vec<f64>,
}

impl Row {
    fn mpps(&self) -> f64 {
        median(&self.mpps)
    }
    fn cycles(&self) -> f64 {
        median(&self.cycles)
    }
}

/// Port adds/s and removes/s.
type Rate = Option<(f64, f64)>;

/// Adds and removes `n` ports through the API, native vhost-user ones or `net_vhost` ones;
/// returns (adds/s, removes/s).
fn port_churn(n: usize, kind: Kind) -> Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start(
        dir.path(),
        &config_yaml(dir.path(), &free_file_prefix("heddle-churn"), ""),
    )?;
    let client = switch.client();
    let specs: Vec<heddle_api::PortSpec> = (0..n)
        .map(|i| {
            let sock = dir.path().join(format!("p{i}.sock"));
            heddle_api::PortSpec {
                name: format!("p{i}"),
                devargs: match kind {
                    Kind::Native => format!("vhost-user{i},iface={}", sock.display()),
                    _ => format!("net_vhost{i},iface={}", sock.display()),
                },
                mode: heddle_api::PortMode::Access { vlan: 100 },
                mac: Some(mac(i)),
                queues: None,
            }
        })
        .collect();
    let t = Instant::now();
    for s in &specs {
        client
            .add_port(s)
            .with_context(|| format!("adding {}", s.devargs))?;
    }
    let add = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for s in &specs {
        client
            .remove_port(&s.name)
            .with_context(|| format!("removing {}", s.name))?;
    }
    Ok((add, n as f64 / t.elapsed().as_secs_f64()))
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

fn gbps(mpps: f64, size: u32) -> f64 {
    mpps * 1e6 * (f64::from(size) + 20.0) * 8.0 / 1e9
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
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
    let skip: Vec<String> = arg(&args, "--skip")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(bad) = skip.iter().find(|k| !ALL.iter().any(|s| s.key() == *k)) {
        bail!(
            "--skip {bad:?}: switches are {}",
            ALL.map(Sut::key).join(", ")
        );
    }
    let kept = |s: &Sut| !skip.iter().any(|k| k == s.key());
    let suts: Vec<Sut> = match arg(&args, "--only").as_deref() {
        Some("vhost") => ALL.into_iter().filter(|s| !s.memif()).collect(),
        Some("memif") => ALL.into_iter().filter(|s| s.memif()).collect(),
        Some("none") => vec![],
        None => ALL.to_vec(),
        Some(other) => bail!("--only {other:?}: use vhost, memif or none"),
    };
    let suts: Vec<Sut> = suts.into_iter().filter(kept).collect();
    if sizes.is_empty() || scale.iter().any(|n| *n < 2 || n % 2 == 1 || *n > 128) {
        bail!("--sizes takes a list like 64,512,1518; --scale a list of even pod counts from 2 to 128, like 2,16,64");
    }
    require_dpdk_peers(2000)?;
    let load_start = loadavg();

    // The plan: every switch at 2 pods and every size, then the vhost-user switches at each
    // scale with 64-byte frames.
    let mut rows: Vec<Row> = Vec::new();
    for &z in &sizes {
        for &s in &suts {
            rows.push(Row {
                sut: s,
                pods: 2,
                size: z,
                skipped: None,
                mpps: Vec::new(),
                cycles: Vec::new(),
            });
        }
    }
    for &n in &scale {
        for s in ALL.into_iter().filter(|s| !s.memif()).filter(kept) {
            if rows
                .iter()
                .any(|x| x.sut == s && x.pods == n && x.size == 64)
            {
                continue;
            }
            rows.push(Row {
                sut: s,
                pods: n,
                size: 64,
                skipped: (s.ethdev_ports() && n > MAX_ETHDEVS).then_some(ETHDEV_LIMIT),
                mpps: Vec::new(),
                cycles: Vec::new(),
            });
        }
    }
    let plan: Vec<(Sut, usize, u32)> = rows
        .iter()
        .filter(|x| x.skipped.is_none())
        .map(|x| (x.sut, x.pods, x.size))
        .collect();
    let started = Instant::now();
    // Every round's figures, also written to loopback-rounds.txt: medians hide how much
    // single rounds swing.
    let mut log = format!(
        "# benches/loopback.sh {}, started at load average {load_start}\n",
        args[1..].join(" ")
    );
    for r in 0..rounds {
        // Alternate the order each round, so drift on the machine hits every switch alike.
        let order: Vec<_> = if r % 2 == 0 {
            plan.clone()
        } else {
            plan.iter().rev().copied().collect()
        };
        for (s, n, z) in order {
            let sample = round(s, n, z, secs)
                .with_context(|| format!("{}, {n} pods, {z} B, round {r}", s.key()))?;
            let line = format!(
                "[{:5.0} s] round {r}: {:<14} {n:>2} pods {z:>4} B {:6.2} Mpps {:7.1} cycles/pkt",
                started.elapsed().as_secs_f64(),
                s.key(),
                sample.mpps,
                sample.cycles_per_packet
            );
            eprintln!("{line}");
            log.push_str(&line);
            log.push('\n');
            let row = rows
                .iter_mut()
                .find(|x| x.sut == s && x.pods == n && x.size == z)
                .expect("planned");
            row.mpps.push(sample.mpps);
            row.cycles.push(sample.cycles_per_packet);
        }
    }
    // Port churn: native ports at every scale; net_vhost ports up to the ethdev limit.
    let mut churn: Vec<(usize, Rate, Rate)> = Vec::new();
    for &n in &scale {
        let native = kept(&Sut::HeddleNative)
            .then(|| port_churn(n, Kind::Native))
            .transpose()
            .with_context(|| format!("churn of {n} native ports"))?;
        let vhost = (kept(&Sut::HeddleVhost) && n <= MAX_ETHDEVS)
            .then(|| port_churn(n, Kind::Vhost))
            .transpose()
            .with_context(|| format!("churn of {n} net_vhost ports"))?;
        let line = format!("churn {n} ports: native {native:?}, net_vhost {vhost:?}");
        eprintln!("{line}");
        log.push_str(&line);
        log.push('\n');
        churn.push((n, native, vhost));
    }
    let load_end = loadavg();

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
    let find = |s: Sut, n: usize, z: u32| {
        rows.iter()
            .find(|x| x.sut == s && x.pods == n && x.size == z && x.skipped.is_none())
    };
    let med = |s: Sut, n: usize, z: u32| {
        find(s, n, z).map_or((f64::NAN, f64::NAN), |x| (x.mpps(), x.cycles()))
    };
    let mut md = String::new();
    let _ = writeln!(md, "# Loopback against the peers\n");
    let _ = writeln!(
        md,
        "CPU: {cpu}, {} CPUs. Generator: dpdk-testpmd, mac forwarding, CPU 0; switch under test on CPU 1.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        md,
        "Above {GEN_PORTS} pods the generator is several testpmd processes ({GEN_PORTS} virtio-user ports at most each, pairs kept inside one process, all time-sharing CPU 0), received counters summed."
    );
    let _ = writeln!(
        md,
        "{rounds} interleaved rounds of {secs} s after 1 s of warm-up; medians. Load average (1/5/15 min) at start {load_start}, at end {load_end}."
    );
    let _ = writeln!(
        md,
        "Command: `{command}`. Every round's figures: `loopback-rounds.txt`.\n"
    );
    let _ = writeln!(md, "| switch | pods | frame B | Mpps | Gbit/s | cycles/packet | Mpps vs testpmd | Mpps vs OVS | cycles vs testpmd | cycles vs OVS |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for x in &rows {
        if let Some(why) = x.skipped {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {why} | - | - | - | - | - | - |",
                x.sut.name(),
                x.pods,
                x.size
            );
            continue;
        }
        let (m, c) = (x.mpps(), x.cycles());
        let (tm, tc) = med(x.sut.testpmd(), x.pods, x.size);
        let (om, oc) = if x.sut.memif() {
            (f64::NAN, f64::NAN)
        } else {
            med(Sut::OvsVhost, x.pods, x.size)
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {m:.2} | {:.2} | {c:.0} | {} | {} | {} | {} |",
            x.sut.name(),
            x.pods,
            x.size,
            gbps(m, x.size),
            ratio(m, tm),
            ratio(m, om),
            ratio(c, tc),
            ratio(c, oc)
        );
    }
    // The native ports against the others, and the bar: cycles/packet at most 0.6x OVS's
    // and below testpmd's, Mpps not behind testpmd, 1518 B Gbit/s not behind either peer.
    let natives: Vec<&Row> = rows
        .iter()
        .filter(|x| x.sut == Sut::HeddleNative && x.skipped.is_none())
        .collect();
    if !natives.is_empty() {
        let _ = writeln!(
            md,
            "\n## Native vhost-user ports against net_vhost, testpmd and OVS\n"
        );
        let _ = writeln!(md, "Ratios of the medians (native / other). The bar: cycles/packet at most 0.60x OVS's and below testpmd's, Mpps not behind testpmd's, Gbit/s at 1518 B not behind either peer's.\n");
        let _ = writeln!(md, "| pods | frame B | cycles vs net_vhost | cycles vs testpmd | cycles vs OVS | Mpps vs net_vhost | Mpps vs testpmd | Mpps vs OVS | bar |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        for x in natives {
            let (m, c) = (x.mpps(), x.cycles());
            let (vm, vc) = med(Sut::HeddleVhost, x.pods, x.size);
            let (tm, tc) = med(Sut::TestpmdVhost, x.pods, x.size);
            let (om, oc) = med(Sut::OvsVhost, x.pods, x.size);
            let mut misses = Vec::new();
            let mut checked = 0;
            if oc.is_finite() {
                checked += 1;
                if c > 0.6 * oc {
                    misses.push("cycles > 0.6x OVS");
                }
            }
            if tc.is_finite() {
                checked += 1;
                if c >= tc {
                    misses.push("cycles not below testpmd");
                }
            }
            if tm.is_finite() {
                checked += 1;
                if m < tm {
                    misses.push("Mpps behind testpmd");
                }
            }
            if x.size == 1518 {
                if tm.is_finite() && m < tm || om.is_finite() && m < om {
                    misses.push("1518 B Gbit/s behind a peer");
                }
                checked += 1;
            }
            let bar = match (checked, misses.is_empty()) {
                (0, _) => "- (no peer measured)".to_owned(),
                (_, true) => "met".to_owned(),
                (_, false) => format!("missed: {}", misses.join(", ")),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {bar} |",
                x.pods,
                x.size,
                ratio(c, vc),
                ratio(c, tc),
                ratio(c, oc),
                ratio(m, vm),
                ratio(m, tm),
                ratio(m, om)
            );
        }
    }
    if !churn.is_empty() {
        let _ = writeln!(md, "\n## Port add/remove rate through the API\n");
        let _ = writeln!(md, "Ports added one by one, then removed one by one, on a switch with no other ports and no frontend connected.\n");
        let _ = writeln!(
            md,
            "| ports | native adds/s | native removes/s | net_vhost adds/s | net_vhost removes/s |\n|---|---|---|---|---|"
        );
        let cell = |x: &Rate, n: usize, native: bool| match x {
            Some((a, d)) => format!("{a:.0} | {d:.0}"),
            None if !native && n > MAX_ETHDEVS => "- (over 32 ethdevs) | -".to_owned(),
            None => "- | -".to_owned(),
        };
        for (n, native, vhost) in &churn {
            let _ = writeln!(
                md,
                "| {n} | {} | {} |",
                cell(native, *n, true),
                cell(vhost, *n, false)
            );
        }
    }
    print!("{md}");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join("loopback.md"), &md)?;
    std::fs::write(out_dir.join("loopback-rounds.txt"), &log)?;
    // Wide tables for the chart: one row per switch, one column per frame size; and one row
    // per pod count, two columns (Mpps, cycles) per vhost-user switch.
    let mut mpps = String::new();
    let mut cycles = String::new();
    for s in &suts {
        let _ = write!(mpps, "\"{}\"", s.key());
        let _ = write!(cycles, "\"{}\"", s.key());
        for &z in &sizes {
            let (m, c) = med(*s, 2, z);
            let _ = write!(mpps, " {m:.3}");
            let _ = write!(cycles, " {c:.1}");
        }
        mpps.push('\n');
        cycles.push('\n');
    }
    std::fs::write(out_dir.join("loopback-mpps.dat"), &mpps)?;
    std::fs::write(out_dir.join("loopback-cycles.dat"), &cycles)?;
    let scale_suts: Vec<Sut> = ALL
        .into_iter()
        .filter(|s| !s.memif())
        .filter(kept)
        .collect();
    let mut pods: Vec<usize> = scale.clone();
    pods.sort_unstable();
    pods.dedup();
    let mut sc = format!(
        "# pods {}\n",
        scale_suts
            .iter()
            .map(|s| format!("{0}-Mpps {0}-cycles", s.key()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for &n in &pods {
        let _ = write!(sc, "{n}");
        for s in &scale_suts {
            let (m, c) = med(*s, n, 64);
            let _ = write!(sc, " {m:.3} {c:.1}");
        }
        sc.push('\n');
    }
    if pods.is_empty() {
        let _ = std::fs::remove_file(out_dir.join("loopback-scale.dat"));
    } else {
        std::fs::write(out_dir.join("loopback-scale.dat"), &sc)?;
    }
    if !suts.is_empty() {
        let scale_keys: Vec<&str> = scale_suts.iter().map(|s| s.key()).collect();
        chart(
            &out_dir,
            &sizes,
            (!pods.is_empty()).then_some(&scale_keys[..]),
        )
        .unwrap_or_else(|e| eprintln!("no chart: {e:#}"));
    }
    Ok(())
}

/// `loopback.png`: Mpps and cycles per packet by switch and frame size (2 pods), and with
/// `scale`, by pod count (64 B) for those switches, with gnuplot.
fn chart(dir: &Path, sizes: &[u32], scale: Option<&[&str]>) -> Result<()> {
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
    let mut script = format!(
        "set terminal png size 1200,{}\nset output '{}'\nset multiplot layout {},2\nset style data histograms\n\
         set style histogram clustered\nset style fill solid 0.8\nset key top right\nset xtics rotate by -25\nset yrange [0:*]\n\
         set title 'generator Mpps received (2 pods)'\nplot {}\nset title 'switch core cycles per packet (2 pods)'\nplot {}\n",
        if scale.is_some() { 1000 } else { 520 },
        dir.join("loopback.png").display(),
        if scale.is_some() { 2 } else { 1 },
        plot("loopback-mpps.dat"),
        plot("loopback-cycles.dat")
    );
    if let Some(keys) = scale {
        let data = dir.join("loopback-scale.dat");
        let lines = |col: usize| {
            keys.iter()
                .enumerate()
                .map(|(i, k)| {
                    format!(
                        "'{}' using 1:{} with linespoints title '{k}'",
                        data.display(),
                        2 + 2 * i + col
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = write!(
            script,
            "set style data linespoints\nunset xtics\nset xtics nomirror\nset logscale x 2\nset xlabel 'pods (vhost-user ports) on one PMD core'\n\
             set key top right\nset title 'generator Mpps received by pods (64 B)'\nplot {}\n\
             set title 'switch core cycles per packet by pods (64 B)'\nplot {}\n",
            lines(0),
            lines(1)
        );
    }
    script.push_str("unset multiplot\n");
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
