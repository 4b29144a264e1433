//! End-to-end loopback against the peers, one command (`benches/loopback.sh`), read as
//! paired ratios.
//!
//! One generator (dpdk-testpmd in mac mode, ports paired 0-1, 2-3, ..., each addressing its
//! frames to its partner, so a learning switch sees unicast both ways) runs on CPU 0; the
//! switch under test runs its forwarding core on CPU 1. The run is many short rounds: in
//! each round every switch of a cell (transport, workload, pods, frame size) gets one slot,
//! in an order rotated every round; a slot starts the switch and the generators, seeds the
//! loop, warms up, and reads counters over a short window. Ratios are taken between slots of
//! the same round, so drift on a shared machine cancels; the table gives the median ratio
//! over rounds, its bootstrap 95% interval, and a verdict read from the interval only.
//!
//! Switches:
//! - vhost-user (generator: `net_virtio_user` ports): `heddle-native` (heddle-switch, native
//!   Rust vhost-user ports), `heddle-vhost` (heddle-switch, DPDK `net_vhost` ports),
//!   `testpmd-vhost` (dpdk-testpmd io-forwarding between `net_vhost` ports, no switching),
//!   `ovs-vhost` (OVS-DPDK 3.1, NORMAL bridge, `dpdkvhostuser` ports);
//! - memif (generator: `net_memif` client ports): `heddle-memif` (heddle-switch, `net_memif`
//!   server ports), `testpmd-memif` (dpdk-testpmd io-forwarding between `net_memif` ports).
//!
//! Cost, the same for every switch: TSC Hz x window / frames forwarded back to the
//! generators in the window, the window timed between the two generator reads themselves.
//! Switch PMD cores poll without pause, so this is the switch core's cycles per packet
//! while it is saturated; the busy share heddle and OVS report is logged per slot to show
//! whether it was.
//!
//! Topology, the same for every switch: pair i is VLAN 100+i; `best` makes both ports of a
//! pair access ports with static MACs; `trunk` makes the second port a trunk carrying the
//! pair's VLAN (tags pushed towards it, popped from it, its MAC learned). dpdk-testpmd
//! io-fwd has no VLANs or FDB: it is the floor.
//!
//! This DPDK build has `RTE_MAX_ETHPORTS=32`: testpmd (generator and peer) and heddle's
//! `net_vhost`/`net_memif` ports stop at 32 ethdevs. Above 30 pods the generator is several
//! testpmd processes (at most 30 ports each, pairs inside one process, all on CPU 0).

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use heddle_benches::ovs::{Ovs, OvsPort, OvsVlan};
use heddle_benches::paired::{self, Cell, Paired};
use heddle_benches::rounds::{self, Slot, Status};
use heddle_tests::{
    config_yaml, env::free_file_prefix, require_dpdk_peers, ForwardMode, SwitchProcess, Testpmd,
};

/// `RTE_MAX_ETHPORTS` of the DPDK build (Debian's 22.11).
const MAX_ETHDEVS: usize = 32;
/// Ports per generator process: under [`MAX_ETHDEVS`], and even so pairs stay together.
const GEN_PORTS: usize = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
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
            Sut::HeddleNative => "heddle-switch, native vhost-user ports",
            Sut::HeddleVhost => "heddle-switch, net_vhost ports",
            Sut::TestpmdVhost => "dpdk-testpmd io-fwd, net_vhost (no switching)",
            Sut::OvsVhost => "OVS-DPDK 3.1 NORMAL bridge, dpdkvhostuser",
            Sut::HeddleMemif => "heddle-switch, net_memif ports",
            Sut::TestpmdMemif => "dpdk-testpmd io-fwd, net_memif (no switching)",
        }
    }

    /// Short name: the rounds file, chart labels and `--skip`.
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

    fn transport(self) -> Transport {
        if matches!(self, Sut::HeddleMemif | Sut::TestpmdMemif) {
            Transport::Memif
        } else {
            Transport::Vhost
        }
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Transport {
    Vhost,
    Memif,
}

impl Transport {
    fn key(self) -> &'static str {
        match self {
            Transport::Vhost => "vhost",
            Transport::Memif => "memif",
        }
    }

    /// The heddle switch whose cost is compared, and the peers it is compared with.
    fn subject_and_peers(self) -> (Sut, &'static [Sut]) {
        match self {
            Transport::Vhost => (
                Sut::HeddleNative,
                &[Sut::TestpmdVhost, Sut::OvsVhost, Sut::HeddleVhost],
            ),
            Transport::Memif => (Sut::HeddleMemif, &[Sut::TestpmdMemif]),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Both ports of a pair are access ports with static MACs: FDB hits, no tag edits.
    Best,
    /// The second port of a pair is a trunk: a tag pushed one way, popped the other, its
    /// MAC learned.
    Trunk,
}

impl Workload {
    fn key(self) -> &'static str {
        match self {
            Workload::Best => "best",
            Workload::Trunk => "trunk",
        }
    }
}

/// Paired loopback of heddle-switch against dpdk-testpmd io-fwd and OVS-DPDK.
///
/// Every round gives every switch of every cell one short slot (start it, start the
/// generators, seed, warm up, read counters over the window), in an order rotated every
/// round. Each slot is appended to OUT/loopback-rounds.tsv as it ends. The report
/// (OUT/loopback.md, loopback.png) gives per cell the median over rounds of heddle's cost
/// over each peer's, its bootstrap 95% interval, and a verdict from the interval.
#[derive(Parser, Debug)]
#[command(name = "benches/loopback.sh", version)]
struct Args {
    /// Rounds (each switch of each cell once per round).
    #[arg(long, default_value_t = 8)]
    rounds: usize,
    /// Window over which counters are read, seconds.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Warm-up between seeding the loop and the window, seconds.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Frame sizes, bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 1518])]
    sizes: Vec<u32>,
    /// Pod counts (vhost-user or memif ports on the one PMD core, paired), even, 2 to 128.
    #[arg(long, value_delimiter = ',', default_values_t = [2])]
    pods: Vec<usize>,
    /// Workloads.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Workload::Best])]
    workloads: Vec<Workload>,
    /// Only one transport (default: both).
    #[arg(long, value_enum)]
    only: Option<Transport>,
    /// Switches to leave out.
    #[arg(long, value_enum, value_delimiter = ',')]
    skip: Vec<Sut>,
    /// Bursts of 32 frames each generator port sends to seed the loop (`start tx_first N`):
    /// enough to keep the switch busy, under half a 256-entry virtqueue so nothing overflows.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    seed_bursts: u32,
    /// Repeats of a slot that dropped frames (or failed) before the round moves on.
    #[arg(long, default_value_t = 2)]
    retries: usize,
    /// Directory for the rounds file, the report and the chart.
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
    /// Make the report from existing rounds files instead of running (repeat the flag to
    /// join runs of different cells, e.g. a `best` run and a `trunk` run).
    #[arg(long, value_name = "ROUNDS_FILE")]
    from: Vec<PathBuf>,
    /// Print the plan (cells, slots per round) and exit; checks the arguments.
    #[arg(long)]
    plan: bool,
    /// Also measure the API's port add/remove rate at each pod count.
    #[arg(long)]
    churn: bool,
}

fn mac(i: usize) -> String {
    format!("02:00:00:00:{:02x}:{:02x}", 1 + i / 256, i % 256)
}

fn vlan_of(i: usize) -> u16 {
    100 + (i / 2) as u16
}

/// Whether port `i` of a pair is the trunk in `workload`.
fn is_trunk(workload: Workload, i: usize) -> bool {
    workload == Workload::Trunk && i % 2 == 1
}

/// MiB of hugepages for a DPDK process holding `mbufs` default-sized mbufs (about 2.4 KiB
/// each with headers) plus rings and heap: a multiple of 64, at least `floor`.
fn memory_for(mbufs: u32, floor: u32) -> u32 {
    let mib = 160 + (u64::from(mbufs) * 2560).div_ceil(1 << 20) as u32;
    (mib.div_ceil(64) * 64).max(floor)
}

/// One cell: the switches measured in it.
#[derive(Clone, Debug)]
struct PlanCell {
    transport: Transport,
    workload: Workload,
    pods: usize,
    size: u32,
    switches: Vec<Sut>,
    /// Switches of this transport not run here, and why.
    left_out: Vec<(Sut, &'static str)>,
}

fn plan(a: &Args) -> Result<Vec<PlanCell>> {
    if a.sizes.is_empty() || a.sizes.iter().any(|z| !(60..=9000).contains(z)) {
        bail!("--sizes takes frame sizes from 60 to 9000 bytes, like 64,1518");
    }
    if a.pods.is_empty() || a.pods.iter().any(|n| *n < 2 || n % 2 == 1 || *n > 128) {
        bail!("--pods takes even pod counts from 2 to 128, like 2,16,64");
    }
    if a.rounds == 0 || !(a.seconds > 0.0 && a.seconds <= 60.0) || !(0.0..=60.0).contains(&a.warmup)
    {
        bail!("--rounds must be at least 1, --seconds in (0, 60], --warmup in [0, 60]");
    }
    let mut cells = Vec::new();
    for &workload in &a.workloads {
        for &size in &a.sizes {
            for &pods in &a.pods {
                for transport in [Transport::Vhost, Transport::Memif] {
                    if a.only.is_some_and(|o| o != transport) {
                        continue;
                    }
                    let mut switches = Vec::new();
                    let mut left_out = Vec::new();
                    for s in ALL.into_iter().filter(|s| s.transport() == transport) {
                        if a.skip.contains(&s) {
                            continue;
                        }
                        if workload == Workload::Trunk && transport == Transport::Memif {
                            left_out.push((
                                s,
                                "not run: the trunk workload needs VLAN insert and strip in the generator, which net_memif does not offer",
                            ));
                        } else if s.ethdev_ports() && pods > MAX_ETHDEVS {
                            left_out.push((
                                s,
                                "not run: over 32 ethdevs (RTE_MAX_ETHPORTS of this DPDK build)",
                            ));
                        } else {
                            switches.push(s);
                        }
                    }
                    if !switches.is_empty() || !left_out.is_empty() {
                        cells.push(PlanCell {
                            transport,
                            workload,
                            pods,
                            size,
                            switches,
                            left_out,
                        });
                    }
                }
            }
        }
    }
    if cells.iter().all(|c| c.switches.is_empty()) {
        bail!(
            "nothing to run: every switch is skipped or over the ethdev limit at these pod counts"
        );
    }
    Ok(cells)
}

// ---------------------------------------------------------------------------------------
// Machine state per slot.

/// The CPU's time-stamp counter rate, measured against the monotonic clock over 200 ms.
fn tsc_hz() -> Result<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let t0 = Instant::now();
        // SAFETY: RDTSC reads the time-stamp counter into registers; it touches no memory
        // and every x86_64 CPU has it.
        let c0 = unsafe { core::arch::x86_64::_rdtsc() };
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: as above.
        let c1 = unsafe { core::arch::x86_64::_rdtsc() };
        Ok(c1.wrapping_sub(c0) as f64 / t0.elapsed().as_secs_f64())
    }
    #[cfg(not(target_arch = "x86_64"))]
    bail!("the loopback harness reads the x86 TSC; this is not x86_64")
}

/// (steal, total) jiffies of all CPUs from `/proc/stat`.
fn cpu_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    (v.get(7).copied().unwrap_or(0), v.iter().sum())
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------
// Generators.

/// Forwarding counters of one testpmd since its last `start` ("Accumulated forward
/// statistics for all ports" of `show fwd stats all`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Fwd {
    rx: u64,
    rx_dropped: u64,
    tx: u64,
    tx_dropped: u64,
}

fn parse_fwd(text: &str) -> Option<Fwd> {
    let i = text.rfind("Accumulated forward statistics")?;
    let t = &text[i..];
    let val =
        |key: &str| -> Option<u64> { t.split(key).nth(1)?.split_whitespace().next()?.parse().ok() };
    Some(Fwd {
        rx: val("RX-packets:")?,
        rx_dropped: val("RX-dropped:")?,
        tx: val("TX-packets:")?,
        tx_dropped: val("TX-dropped:")?,
    })
}

fn fwd_stats(tp: &mut Testpmd) -> Result<Fwd> {
    let out = tp.command_wait("show fwd stats all", Duration::from_secs(5), |t| {
        t.rfind("Accumulated forward statistics")
            .is_some_and(|i| t[i..].contains("TX-total:"))
    })?;
    parse_fwd(&out).with_context(|| format!("no accumulated forward statistics in:\n{out}"))
}

/// The generators for `sockets` (an even number, paired 0-1, 2-3, ...): one testpmd per
/// [`GEN_PORTS`] ports, all on CPU 0, each port sending to its partner's MAC; all ready and
/// with every link up.
/// In the `trunk` workload the second port of each pair faces the switch's trunk: the
/// generator inserts the pair's tag on it (`tx_vlan set`, which wants the port stopped) and
/// strips tags on every port (`vlan set strip on`), so a frame crosses the loop once tagged
/// and once untagged whatever the switch.
fn generators(
    sockets: &[PathBuf],
    memif: bool,
    size: u32,
    workload: Workload,
) -> Result<Vec<Testpmd>> {
    let mut gens = Vec::new();
    for (c, chunk) in sockets.chunks(GEN_PORTS).enumerate() {
        let n = chunk.len() as u32;
        let mbufs = 16384 + 4096 * n;
        let mut b = Testpmd::builder(&format!("gen{c}"))
            .cpu(0)
            .forward_mode(ForwardMode::Mac)
            .txpkts(&size.to_string())
            .memory_mb(Some(memory_for(mbufs, 256)))
            .total_num_mbufs(Some(mbufs))
            // The virtio driver logs the features it negotiated with the backend.
            .eal_arg("--log-level=pmd.net.virtio.init:debug");
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
    if workload == Workload::Trunk {
        let t = Duration::from_secs(10);
        for (c, (gen, chunk)) in gens.iter_mut().zip(sockets.chunks(GEN_PORTS)).enumerate() {
            for j in 0..chunk.len() {
                let i = c * GEN_PORTS + j;
                if is_trunk(workload, i) {
                    gen.command_wait(&format!("port stop {j}"), t, |o| o.contains("Done"))?;
                    gen.command(&format!("tx_vlan set {j} {}", vlan_of(i)))?;
                    gen.command_wait(&format!("port start {j}"), t, |o| o.contains("Done"))?;
                    let out = gen.command_wait(
                        &format!("show port {j} tx_offload configuration"),
                        t,
                        |o| o.contains("Queue["),
                    )?;
                    if !out.contains("VLAN_INSERT") {
                        bail!("generator port {j}: VLAN insert not on after `tx_vlan set`:\n{out}");
                    }
                }
                gen.command(&format!("vlan set strip on {j}"))?;
                let out =
                    gen.command_wait(&format!("show port {j} rx_offload configuration"), t, |o| {
                        o.contains("Queue[")
                    })?;
                if !out.contains("VLAN_STRIP") {
                    bail!(
                        "generator port {j}: VLAN strip not on after `vlan set strip on`:\n{out}"
                    );
                }
            }
            for j in 0..chunk.len() {
                gen.wait_link_up(j as u16, t)?;
            }
        }
    }
    Ok(gens)
}

/// The distinct virtio feature sets the generators' ports negotiated, as `0x...` joined by
/// `/`; `-` when none was logged (memif).
fn negotiated_features(gens: &[Testpmd]) -> String {
    let mut f: Vec<String> = gens
        .iter()
        .flat_map(|g| {
            g.log()
                .lines()
                .filter_map(|l| l.split("features after negotiate =").nth(1))
                .map(|v| format!("0x{}", v.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    f.sort();
    f.dedup();
    if f.is_empty() {
        "-".into()
    } else {
        f.join("/")
    }
}

/// One read of every generator: its counters and when they were read (the midpoint of the
/// command's round trip).
fn read_gens(gens: &mut [Testpmd]) -> Result<Vec<(Fwd, Instant)>> {
    gens.iter_mut()
        .map(|g| {
            let t0 = Instant::now();
            let f = fwd_stats(g)?;
            Ok((f, t0 + t0.elapsed() / 2))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Switches under test.

enum Running {
    Heddle(SwitchProcess),
    Testpmd(Testpmd),
    Ovs(Ovs),
}

/// What a switch says about itself at one end of the window.
struct Probe {
    drops: Option<u64>,
    /// (busy cycles, all cycles) of the PMD core, where counted.
    cycles: Option<(u64, u64)>,
    /// Busy percent since the last probe, where the switch computes it (OVS).
    busy_pct: Option<f64>,
}

impl Running {
    fn probe(&mut self, start: bool) -> Result<Probe> {
        match self {
            Running::Heddle(sw) => {
                let st = sw.client().stats()?;
                let drops = st
                    .ports
                    .iter()
                    .map(|p| {
                        p.drops.values().sum::<u64>()
                            + p.device.imissed
                            + p.device.oerrors
                            + p.device.rx_nombuf
                    })
                    .sum();
                let pmd = st.pmd.first().context("heddle reports no PMD worker")?;
                Ok(Probe {
                    drops: Some(drops),
                    cycles: Some((pmd.busy_cycles, pmd.busy_cycles + pmd.idle_cycles)),
                    busy_pct: None,
                })
            }
            Running::Testpmd(tp) => {
                let f = fwd_stats(tp)?;
                Ok(Probe {
                    drops: Some(f.rx_dropped + f.tx_dropped),
                    cycles: None,
                    busy_pct: None,
                })
            }
            Running::Ovs(ovs) => {
                let busy_pct = if start {
                    ovs.clear_pmd_stats()?;
                    None
                } else {
                    Some(ovs.busy_percent()?)
                };
                Ok(Probe {
                    drops: Some(ovs.dropped()?),
                    cycles: None,
                    busy_pct,
                })
            }
        }
    }
}

fn heddle_ports(dir: &Path, n: usize, kind: Kind, workload: Workload) -> (String, Vec<PathBuf>) {
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
        if is_trunk(workload, i) {
            let _ = writeln!(
                yaml,
                "  - {{name: p{i}, devargs: \"{devargs}\", mode: trunk, vlans: [{}]}}",
                vlan_of(i)
            );
        } else {
            let _ = writeln!(
                yaml,
                "  - {{name: p{i}, devargs: \"{devargs}\", mode: access, vlan: {}, mac: \"{}\"}}",
                vlan_of(i),
                mac(i)
            );
        }
        socks.push(sock);
    }
    (yaml, socks)
}

/// Starts `sut` for `pods` ports in `dir`; returns it and the sockets the generators use.
fn start_switch(
    sut: Sut,
    pods: usize,
    size: u32,
    workload: Workload,
    dir: &Path,
) -> Result<(Running, Vec<PathBuf>)> {
    if let Some(kind) = sut.heddle() {
        let (ports, socks) = heddle_ports(dir, pods, kind, workload);
        // Native ports hold no mbufs in descriptor rings (frames are copied from and into
        // the guest's buffers), so they need fewer per port than ethdevs.
        let per_port = if kind == Kind::Native { 2048 } else { 4096 };
        let mbufs = 16384.max(per_port * pods as u32);
        let yaml = config_yaml(dir, &free_file_prefix("heddle-lb"), &ports)
            .replace(
                "socket_mem_mb: [256]",
                &format!("socket_mem_mb: [{}]", memory_for(mbufs, 512)),
            )
            .replace("count: 8192", &format!("count: {mbufs}"))
            .replace("rx_ring: 512, tx_ring: 512", "rx_ring: 1024, tx_ring: 1024");
        let switch = SwitchProcess::start(dir, &yaml)?;
        return Ok((Running::Heddle(switch), socks));
    }
    match sut {
        Sut::TestpmdVhost | Sut::TestpmdMemif => {
            let mbufs = 16384.max(4096 * pods as u32);
            let mut b = Testpmd::builder("sut")
                .cpu(1)
                .forward_mode(ForwardMode::Io)
                .memory_mb(Some(memory_for(mbufs, 512)))
                .total_num_mbufs(Some(mbufs))
                .auto_start(true);
            let mut socks = Vec::new();
            for i in 0..pods {
                if sut == Sut::TestpmdMemif {
                    let s = dir.join(format!("p{i}.memif"));
                    b = b.memif(&s, true, 0, &mac(100 + i));
                    socks.push(s);
                } else {
                    let s = dir.join(format!("p{i}.sock"));
                    b = b.vhost(&s, false);
                    socks.push(s);
                }
            }
            let mut sw = b.spawn()?;
            sw.wait_ready(Duration::from_secs(30))?;
            Ok((Running::Testpmd(sw), socks))
        }
        Sut::OvsVhost => {
            let ports: Vec<OvsPort> = (0..pods)
                .map(|i| OvsPort {
                    name: format!("p{i}"),
                    vlan: if is_trunk(workload, i) {
                        OvsVlan::Trunk(vlan_of(i))
                    } else {
                        OvsVlan::Access(vlan_of(i))
                    },
                    static_mac: (!is_trunk(workload, i)).then(|| mac(i)),
                    // OVS sends at most MTU + 18 bytes to a vhost-user port: a trunk port
                    // carrying `size`-byte frames plus their tag needs more than 1500.
                    mtu: {
                        let need = size + if is_trunk(workload, i) { 4 } else { 0 } - 18;
                        (need > 1500).then_some(need)
                    },
                })
                .collect();
            let ovs = Ovs::start(dir, 0, 1, if pods > 16 { 1024 } else { 512 }, &ports)?;
            let socks = ports.iter().map(|p| dir.join(&p.name)).collect();
            Ok((Running::Ovs(ovs), socks))
        }
        _ => unreachable!("heddle handled above"),
    }
}

struct Measured {
    unix_s: f64,
    window_s: f64,
    gen: Fwd,
    switch_drops: Option<u64>,
    mpps: f64,
    busy_pct: Option<f64>,
    steal_pct: f64,
    features: String,
}

/// One slot: start the switch and the generators, seed, warm up, read over the window.
fn measure(sut: Sut, c: &PlanCell, a: &Args) -> Result<Measured> {
    let dir = tempfile::tempdir()?;
    let (mut switch, socks) = start_switch(sut, c.pods, c.size, c.workload, dir.path())?;
    let mut gens = generators(&socks, c.transport == Transport::Memif, c.size, c.workload)?;
    let features = negotiated_features(&gens);
    for g in gens.iter_mut() {
        g.command_wait(
            &format!("start tx_first {}", a.seed_bursts),
            Duration::from_secs(5),
            |t| t.contains("packet forwarding - ports="),
        )?;
    }
    std::thread::sleep(Duration::from_secs_f64(a.warmup));
    let p0 = switch.probe(true)?;
    let (steal0, total0) = cpu_jiffies();
    let unix_s = unix_now();
    let g0 = read_gens(&mut gens)?;
    std::thread::sleep(Duration::from_secs_f64(a.seconds));
    let g1 = read_gens(&mut gens)?;
    let (steal1, total1) = cpu_jiffies();
    let p1 = switch.probe(false)?;
    // Each generator's frames over its own window (the two reads bracket it exactly).
    let mut gen = Fwd::default();
    let mut pps = 0.0;
    let mut window = 0.0;
    for ((f0, t0), (f1, t1)) in g0.iter().zip(&g1) {
        let dt = t1.duration_since(*t0).as_secs_f64();
        let rx = f1.rx - f0.rx;
        gen.rx += rx;
        gen.tx += f1.tx - f0.tx;
        gen.rx_dropped += f1.rx_dropped - f0.rx_dropped;
        gen.tx_dropped += f1.tx_dropped - f0.tx_dropped;
        pps += rx as f64 / dt;
        window += dt / g0.len() as f64;
    }
    let busy_pct = match (p0.cycles, p1.cycles, p1.busy_pct) {
        (Some((b0, a0)), Some((b1, a1)), _) if a1 > a0 => {
            Some(100.0 * (b1 - b0) as f64 / (a1 - a0) as f64)
        }
        (_, _, b) => b,
    };
    let switch_drops = match (p0.drops, p1.drops) {
        (Some(d0), Some(d1)) => Some(d1.saturating_sub(d0)),
        _ => None,
    };
    drop(gens);
    drop(switch);
    let dj = total1.saturating_sub(total0).max(1);
    Ok(Measured {
        unix_s,
        window_s: window,
        gen,
        switch_drops,
        mpps: pps / 1e6,
        busy_pct,
        steal_pct: 100.0 * steal1.saturating_sub(steal0) as f64 / dj as f64,
        features,
    })
}

// ---------------------------------------------------------------------------------------
// The run.

/// The rounds file, each slot appended and flushed as it ends.
struct RoundsFile {
    file: File,
}

impl RoundsFile {
    fn create(path: &Path, head: &[String]) -> Result<RoundsFile> {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        for h in head {
            writeln!(file, "# {h}")?;
        }
        writeln!(file, "{}", rounds::HEADER)?;
        file.sync_data()?;
        Ok(RoundsFile { file })
    }

    fn append(&mut self, s: &Slot) -> Result<()> {
        writeln!(self.file, "{}", s.line())?;
        self.file.flush()?;
        Ok(())
    }
}

fn run(a: &Args, cells: &[PlanCell], command: &str) -> Result<PathBuf> {
    require_dpdk_peers(2000)?;
    let tsc = tsc_hz()?;
    std::fs::create_dir_all(&a.out)?;
    let path = a.out.join("loopback-rounds.tsv");
    let mut file = RoundsFile::create(
        &path,
        &[
            format!("command: {command}"),
            format!("tsc_hz: {tsc:.0}"),
            format!(
                "config: rounds={} seconds={} warmup={} seed_bursts={} retries={}",
                a.rounds, a.seconds, a.warmup, a.seed_bursts, a.retries
            ),
            format!("cpu: {} x {}", cpu_model(), cpus()),
            format!("started: {:.0} (Unix seconds)", unix_now()),
        ],
    )?;
    let started = Instant::now();
    for r in 0..a.rounds {
        for c in cells {
            let k = c.switches.len();
            for order in 0..k {
                // Rotated: round r starts at switch r mod k, so each switch goes first, second,
                // ... equally often.
                let sut = c.switches[(order + r) % k];
                for attempt in 0..=a.retries {
                    let m = measure(sut, c, a);
                    let mut slot = Slot {
                        round: r,
                        transport: c.transport.key().into(),
                        workload: c.workload.key().into(),
                        pods: c.pods,
                        size: c.size,
                        switch: sut.key().into(),
                        order,
                        attempt,
                        status: Status::Error,
                        unix_s: unix_now(),
                        window_s: 0.0,
                        gen_tx: 0,
                        gen_rx: 0,
                        gen_drops: 0,
                        switch_drops: None,
                        mpps: 0.0,
                        cycles_per_packet: 0.0,
                        busy_pct: None,
                        load1: load1(),
                        steal_pct: 0.0,
                        features: "-".into(),
                        note: String::new(),
                    };
                    match m {
                        Ok(m) => {
                            let gen_drops = m.gen.rx_dropped + m.gen.tx_dropped;
                            let dropped = gen_drops > 0 || m.switch_drops.is_some_and(|d| d > 0);
                            slot = Slot {
                                status: if m.gen.rx == 0 {
                                    Status::Error
                                } else if dropped {
                                    Status::Dropped
                                } else {
                                    Status::Ok
                                },
                                note: if m.gen.rx == 0 {
                                    "no frame came back to the generators in the window (the seeded frames were lost before it)".into()
                                } else {
                                    String::new()
                                },
                                unix_s: m.unix_s,
                                window_s: m.window_s,
                                gen_tx: m.gen.tx,
                                gen_rx: m.gen.rx,
                                gen_drops,
                                switch_drops: m.switch_drops,
                                mpps: m.mpps,
                                cycles_per_packet: if m.mpps > 0.0 {
                                    tsc / (m.mpps * 1e6)
                                } else {
                                    f64::INFINITY
                                },
                                busy_pct: m.busy_pct,
                                steal_pct: m.steal_pct,
                                features: m.features,
                                ..slot
                            };
                        }
                        Err(e) => slot.note = format!("{e:#}"),
                    }
                    file.append(&slot)?;
                    eprintln!(
                        "[{:5.0} s] round {r} {} {} {:>2} pods {:>4} B {:<14} try {attempt}: {} {:6.2} Mpps {:7.1} cycles/pkt busy {} drops gen {} switch {} {}",
                        started.elapsed().as_secs_f64(),
                        slot.transport,
                        slot.workload,
                        slot.pods,
                        slot.size,
                        slot.switch,
                        slot.status,
                        slot.mpps,
                        slot.cycles_per_packet,
                        slot.busy_pct.map_or("-".into(), |b| format!("{b:.0}%")),
                        slot.gen_drops,
                        slot.switch_drops.map_or("-".into(), |d| d.to_string()),
                        if slot.note.is_empty() { "" } else { &slot.note },
                    );
                    if slot.status == Status::Ok {
                        break;
                    }
                }
            }
        }
    }
    Ok(path)
}

/// Port churn at one pod count: (ports, native (adds/s, removes/s), net_vhost's).
type Churn = (usize, Option<(f64, f64)>, Option<(f64, f64)>);

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
                mtu: None,
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

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default()
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

// ---------------------------------------------------------------------------------------
// The report.

fn gbps(mpps: f64, size: u32) -> f64 {
    mpps * 1e6 * (f64::from(size) + 20.0) * 8.0 / 1e9
}

fn peer_label(s: Sut) -> &'static str {
    match s {
        Sut::TestpmdVhost | Sut::TestpmdMemif => "testpmd io-fwd",
        Sut::OvsVhost => "OVS-DPDK",
        Sut::HeddleVhost => "heddle net_vhost",
        Sut::HeddleNative | Sut::HeddleMemif => "heddle",
    }
}

/// The report from the rounds file's text: markdown, and the chart's data (one line per cell,
/// the median, low and high ratio against testpmd, OVS and net_vhost).
/// The report from rounds files' texts (name, text): their slots are joined (each file's
/// cells are paired within that file's rounds, so files should not share cells).
fn report(texts: &[(String, String)], churn: &[Churn]) -> Result<(String, String)> {
    let mut slots = Vec::new();
    let mut rounds_per_file = Vec::new();
    for (name, text) in texts {
        let v = rounds::parse_file(text).with_context(|| format!("rounds file {name}"))?;
        rounds_per_file.push(v.iter().map(|s| s.round + 1).max().unwrap_or(0).to_string());
        slots.extend(v);
    }
    let rounds_run = rounds_per_file.join(" + ");
    // A header value of every file, distinct ones joined.
    let meta = |key: &str| {
        let mut v: Vec<String> = texts
            .iter()
            .filter_map(|(_, t)| {
                t.lines()
                    .filter_map(|l| l.strip_prefix("# "))
                    .find_map(|l| l.strip_prefix(key))
                    .map(|x| x.trim().to_owned())
            })
            .collect();
        v.dedup();
        if v.is_empty() {
            "?".to_owned()
        } else {
            v.join("; ")
        }
    };
    let files = texts
        .iter()
        .map(|(n, _)| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let commands = texts
        .iter()
        .filter_map(|(_, t)| {
            t.lines()
                .find_map(|l| l.strip_prefix("# command: "))
                .map(|c| format!("`{}`", c.trim()))
        })
        .collect::<Vec<_>>()
        .join(", then ");
    let mut cells: Vec<Cell> = slots.iter().map(Cell::of).collect();
    // Table order: transport, workload, size, pods.
    cells.sort_by(|a, b| {
        (&a.transport, &a.workload, a.size, a.pods).cmp(&(
            &b.transport,
            &b.workload,
            b.size,
            b.pods,
        ))
    });
    cells.dedup();
    let n_ok = slots.iter().filter(|s| s.status == Status::Ok).count();
    let n_drop = slots.iter().filter(|s| s.status == Status::Dropped).count();
    let n_err = slots.iter().filter(|s| s.status == Status::Error).count();
    let mut loads: Vec<f64> = slots.iter().map(|s| s.load1).collect();
    loads.sort_by(f64::total_cmp);
    let steal: Vec<f64> = slots.iter().map(|s| s.steal_pct).collect();
    let steal_max = steal.iter().copied().fold(0.0, f64::max);

    let mut md = String::new();
    let _ = writeln!(md, "# Loopback against the peers: paired rounds\n");
    let _ = writeln!(
        md,
        "CPU: {}; TSC {} Hz. Generator: dpdk-testpmd, mac forwarding, CPU 0; switch under test on CPU 1. {}.",
        meta("cpu:"),
        meta("tsc_hz:"),
        meta("config:"),
    );
    let _ = writeln!(
        md,
        "{rounds_run} rounds started (a run stopped before its `--rounds` keeps every finished slot; a cell counts only rounds where both switches have a kept slot); in each, every switch of a cell once, order rotated round by round. Slots: {n_ok} kept, {n_drop} repeated after drops, {n_err} failed. \
         1-minute load average over the slots: min {:.2}, median {:.2}, max {:.2}; steal time median {:.2}%, max {steal_max:.2}%.",
        loads.first().copied().unwrap_or(f64::NAN),
        paired::median(&loads),
        loads.last().copied().unwrap_or(f64::NAN),
        paired::median(&steal),
    );
    let _ = writeln!(md, "Commands: {commands}. Every slot: {files}.\n");
    let _ = writeln!(
        md,
        "Cost is the same quantity for every switch: TSC Hz x window / frames forwarded back to the generators in that window (the window timed between the generator reads themselves). \
         The ratio is heddle's cost over the peer's within one round; the table gives its median over rounds, a bootstrap 95% interval of that median, and the verdict from the interval only: \
         **ahead** (all of it below 1), **behind** (all above 1), **not separable** (it holds 1, or fewer than 3 rounds). \
         Workload `best`: both ports of a pair are access ports with static MACs; `trunk`: the second port is a trunk (tag pushed towards it, popped from it, its MAC learned). \
         testpmd io-fwd does no switching in either: it is the floor. \
         Above 32 pods only heddle's native ports and OVS-DPDK run (testpmd and heddle's net_vhost and net_memif ports are DPDK ethdevs, and this DPDK build has RTE_MAX_ETHPORTS=32); \
         the trunk workload runs on vhost-user only (net_memif offers the generator no VLAN insert or strip).\n"
    );
    let _ = writeln!(md, "## heddle's cost over each peer's (per-round ratios)\n");
    let _ = writeln!(md, "| transport | workload | pods | frame B | heddle vs | rounds | cost ratio | 95% interval | verdict | heddle Mpps | peer Mpps |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    let mut dat =
        String::from("# cell  vs-testpmd(med lo hi)  vs-OVS(med lo hi)  vs-net_vhost(med lo hi)\n");
    for c in &cells {
        let t = if c.transport == "memif" {
            Transport::Memif
        } else {
            Transport::Vhost
        };
        let (subject, peers) = t.subject_and_peers();
        let mpps_of = |s: Sut| {
            paired::median(
                &paired::kept_slots(&slots, c, s.key())
                    .iter()
                    .map(|x| x.mpps)
                    .collect::<Vec<_>>(),
            )
        };
        let _ = write!(
            dat,
            "\"{} {} {}p {}B\"",
            c.transport, c.workload, c.pods, c.size
        );
        for slot_peer in [Sut::TestpmdVhost, Sut::OvsVhost, Sut::HeddleVhost] {
            let peer = match (t, slot_peer) {
                (Transport::Memif, Sut::TestpmdVhost) => Some(Sut::TestpmdMemif),
                (Transport::Memif, _) => None,
                (Transport::Vhost, p) => Some(p),
            };
            let p =
                peer.map(|p| Paired::of(&paired::round_ratios(&slots, c, subject.key(), p.key())));
            match p {
                Some(p) if p.rounds > 0 => {
                    let (lo, hi) = p.ci.unwrap_or((f64::NAN, f64::NAN));
                    let _ = write!(dat, " {:.4} {lo:.4} {hi:.4}", p.median);
                }
                _ => dat.push_str(" NaN NaN NaN"),
            }
        }
        dat.push('\n');
        for &peer in peers {
            let ratios = paired::round_ratios(&slots, c, subject.key(), peer.key());
            if ratios.is_empty() {
                continue;
            }
            let p = Paired::of(&ratios);
            let ci = p.ci.map_or("- (under 3 rounds)".to_owned(), |(lo, hi)| {
                format!("{lo:.2}-{hi:.2}")
            });
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {:.2}x | {ci} | {} | {:.2} | {:.2} |",
                c.transport,
                c.workload,
                c.pods,
                c.size,
                peer_label(peer),
                p.rounds,
                p.median,
                p.verdict.as_str(),
                mpps_of(subject),
                mpps_of(peer),
            );
        }
    }
    let _ = writeln!(md, "\n## Every switch (medians of kept slots)\n");
    let _ = writeln!(md, "Busy: the share of the PMD core's cycles the switch itself counts as packet work (heddle's PMD counters, OVS's `pmd-stats-show`; testpmd does not say). Well under 100% means the generator, not the switch, limited the loop in that cell. Features: what the generator's virtio-user ports negotiated with the switch.\n");
    let _ = writeln!(md, "| transport | workload | pods | frame B | switch | slots | Mpps | Gbit/s | cycles/packet | busy | virtio features |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for c in &cells {
        for s in ALL {
            let kept = paired::kept_slots(&slots, c, s.key());
            if kept.is_empty() {
                continue;
            }
            let m = paired::median(&kept.iter().map(|x| x.mpps).collect::<Vec<_>>());
            let cy = paired::median(&kept.iter().map(|x| x.cycles_per_packet).collect::<Vec<_>>());
            let busy: Vec<f64> = kept.iter().filter_map(|x| x.busy_pct).collect();
            let busy = if busy.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.0}%", paired::median(&busy))
            };
            let mut feats: Vec<&str> = kept.iter().map(|x| x.features.as_str()).collect();
            feats.sort_unstable();
            feats.dedup();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {m:.2} | {:.2} | {cy:.0} | {busy} | {} |",
                c.transport,
                c.workload,
                c.pods,
                c.size,
                s.name(),
                kept.len(),
                gbps(m, c.size),
                feats.join(", "),
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
        let cell = |x: &Option<(f64, f64)>, n: usize, native: bool| match x {
            Some((a, d)) => format!("{a:.0} | {d:.0}"),
            None if !native && n > MAX_ETHDEVS => "- (over 32 ethdevs) | -".to_owned(),
            None => "- | -".to_owned(),
        };
        for (n, native, vhost) in churn {
            let _ = writeln!(
                md,
                "| {n} | {} | {} |",
                cell(native, *n, true),
                cell(vhost, *n, false)
            );
        }
    }
    Ok((md, dat))
}

/// `loopback.png`: per cell, the median cost ratio against each peer with its 95% interval,
/// and the line at 1.
fn chart(dir: &Path, cells: usize) -> Result<()> {
    let data = dir.join("loopback-ratios.dat");
    let script = format!(
        "set terminal png size {},620\nset output '{}'\nset title \"heddle's cost per packet over each peer's (median of per-round ratios, 95% interval); below 1: heddle ahead\"\n\
         set style data histograms\nset style histogram errorbars gap 2 lw 1\nset style fill solid 0.7\nset key top left\n\
         set xtics rotate by -35 scale 0\nset rmargin 12\nset yrange [0:*]\nset grid ytics\nset arrow from graph 0, first 1 to graph 1, first 1 nohead lw 2 dt 2\n\
         plot '{d}' using 2:3:4:xtic(1) title 'vs testpmd io-fwd', '{d}' using 5:6:7 title 'vs OVS-DPDK', '{d}' using 8:9:10 title 'vs heddle net\\_vhost'\n",
        (300 + 70 * cells).min(2400),
        dir.join("loopback.png").display(),
        d = data.display(),
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

fn write_report(out: &Path, rounds_files: &[PathBuf], churn: &[Churn]) -> Result<()> {
    let mut texts = Vec::new();
    for f in rounds_files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let name = f
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        texts.push((name, text));
    }
    let (md, dat) = report(&texts, churn)?;
    print!("{md}");
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("loopback.md"), &md)?;
    std::fs::write(out.join("loopback-ratios.dat"), &dat)?;
    let cells = dat.lines().filter(|l| !l.starts_with('#')).count();
    chart(out, cells).unwrap_or_else(|e| eprintln!("no chart: {e:#}"));
    Ok(())
}

fn main() -> Result<()> {
    let a = Args::parse();
    let command = format!(
        "benches/loopback.sh {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    if !a.from.is_empty() {
        return write_report(&a.out, &a.from, &[]);
    }
    let cells = plan(&a)?;
    let per_round: usize = cells.iter().map(|c| c.switches.len()).sum();
    if a.plan {
        for c in &cells {
            println!(
                "{} {} {:>2} pods {:>4} B: {}{}",
                c.transport.key(),
                c.workload.key(),
                c.pods,
                c.size,
                c.switches
                    .iter()
                    .map(|s| s.key())
                    .collect::<Vec<_>>()
                    .join(", "),
                c.left_out
                    .iter()
                    .map(|(s, why)| format!("; {} {why}", s.key()))
                    .collect::<String>()
            );
        }
        println!("{per_round} slots per round, {} rounds", a.rounds);
        return Ok(());
    }
    let path = run(&a, &cells, &command)?;
    let mut churn = Vec::new();
    if a.churn {
        for &n in &a.pods {
            let native = (!a.skip.contains(&Sut::HeddleNative))
                .then(|| port_churn(n, Kind::Native))
                .transpose()
                .with_context(|| format!("churn of {n} native ports"))?;
            let vhost = (!a.skip.contains(&Sut::HeddleVhost) && n <= MAX_ETHDEVS)
                .then(|| port_churn(n, Kind::Vhost))
                .transpose()
                .with_context(|| format!("churn of {n} net_vhost ports"))?;
            churn.push((n, native, vhost));
        }
    }
    write_report(&a.out, &[path], &churn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_parses_and_bad_arguments_are_refused() {
        let e = Args::try_parse_from(["loopback", "--help"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        assert!(e.to_string().contains("--rounds"));
        let e = Args::try_parse_from(["loopback", "--skip", "nope"]).unwrap_err();
        assert!(e.to_string().contains("heddle-native"), "{e}");
        let a = Args::try_parse_from(["loopback", "--pods", "3"]).unwrap();
        assert!(format!("{:#}", plan(&a).unwrap_err()).contains("even pod counts"));
    }

    #[test]
    fn the_plan_leaves_ethdev_switches_out_above_32_pods() {
        let a = Args::try_parse_from([
            "loopback",
            "--pods",
            "2,64",
            "--sizes",
            "64",
            "--workloads",
            "best,trunk",
        ])
        .unwrap();
        let cells = plan(&a).unwrap();
        // vhost and memif at 2 pods, vhost at 64 (memif's two switches are ethdevs: listed
        // as left out), per workload.
        assert_eq!(cells.len(), 8);
        let big = cells
            .iter()
            .find(|c| c.pods == 64 && c.transport == Transport::Vhost)
            .unwrap();
        assert_eq!(big.switches, vec![Sut::HeddleNative, Sut::OvsVhost]);
        let memif = cells
            .iter()
            .find(|c| c.pods == 64 && c.transport == Transport::Memif)
            .unwrap();
        assert!(memif.switches.is_empty());
        for s in ALL {
            assert_eq!(
                Sut::from_str(s.key(), false),
                Ok(s),
                "--skip takes the report's keys"
            );
        }
    }

    #[test]
    fn the_report_pairs_rounds_and_reads_the_verdict_from_the_interval() {
        let mut text = format!(
            "# command: benches/loopback.sh --rounds 5\n{}\n",
            rounds::HEADER
        );
        for r in 0..5 {
            for (sw, cycles, mpps) in [("heddle-native", 100.0, 2.0), ("testpmd-vhost", 200.0, 1.0)]
            {
                let s = Slot {
                    round: r,
                    transport: "vhost".into(),
                    workload: "best".into(),
                    pods: 2,
                    size: 64,
                    switch: sw.into(),
                    order: 0,
                    attempt: 0,
                    status: Status::Ok,
                    unix_s: 0.0,
                    window_s: 1.0,
                    gen_tx: 1,
                    gen_rx: 1,
                    gen_drops: 0,
                    switch_drops: Some(0),
                    mpps,
                    cycles_per_packet: cycles + r as f64,
                    busy_pct: None,
                    load1: 1.0,
                    steal_pct: 0.0,
                    features: "0x1".into(),
                    note: String::new(),
                };
                text.push_str(&s.line());
                text.push('\n');
            }
        }
        let (md, dat) = report(&[("r.tsv".into(), text)], &[]).unwrap();
        let row = md
            .lines()
            .find(|l| l.contains("| testpmd io-fwd |"))
            .expect("a paired row");
        assert!(row.contains("| 5 | 0.50x |"), "{row}");
        assert!(row.contains("| ahead |"), "{row}");
        assert!(row.contains("| 2.00 | 1.00 |"), "{row}");
        assert!(md.contains("`benches/loopback.sh --rounds 5`"));
        assert!(
            dat.lines()
                .any(|l| l.starts_with("\"vhost best 2p 64B\" 0.50")),
            "{dat}"
        );
    }

    #[test]
    fn forward_statistics_parse() {
        let text = "\n  +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++\n  RX-packets: 1234           RX-dropped: 5              RX-total: 1239\n  TX-packets: 1230           TX-dropped: 4              TX-total: 1234\n  ++++++++++++++++\n";
        assert_eq!(
            parse_fwd(text),
            Some(Fwd {
                rx: 1234,
                rx_dropped: 5,
                tx: 1230,
                tx_dropped: 4
            })
        );
        assert_eq!(parse_fwd("nothing"), None);
    }
}
