//! The churn soak: traffic through native vhost-user, memif and kernel pods of a real
//! `heddle-switch` while pods are added and removed every 100 ms through the real
//! `heddle-cni` binary, then the switch's resources compared with a baseline and its
//! counters checked to add up. `benches/churn.sh` runs it for ten minutes (binary
//! `heddle-churn`), `tests/tests/soak.rs` for 60 seconds.
//!
//! Who does what (2 CPUs: the switch's PMD worker on CPU 1, everything else on CPU 0):
//! - **Steady pods**, attached once by CNI ADD: two vhost-user pods (VLAN 100) and two memif
//!   pods (VLAN 101) driven by one dpdk-testpmd in `mac` mode (64-byte frames bounce between
//!   the partners, 16 bursts per stream in flight), two kernel pods (veths in network
//!   namespaces, VLAN 102, host-local IPAM) with a flood ping between them. (testpmd's
//!   `flowgen` would not do: it sends from and to fixed MACs, so everything floods.)
//! - **Churn**: every 100 ms one CNI call: ADD of a new pod (kinds in turn vhost-user, memif,
//!   kernel) or DEL of the oldest, so about eight churn pods live at any time, each for about
//!   1.6 s. The calls come from four threads in turn, one every 400 ms each, so a call may
//!   take up to 400 ms (they do on a loaded machine) without slowing the churn. A kernel churn pod pings a steady kernel pod (flooded ARP, learned MACs, traffic
//!   on a port that is then removed).
//! - **Connected churn**, in its own thread: two vhost-user pods (a vhost-user and a memif
//!   pod with [`SoakConfig::crash_memif`]) are added, a dpdk-testpmd connects to both and
//!   sends at full rate from each to the other (VLAN 103,
//!   `txonly`: it never reads, so its rings fill and the switch drops with `tx_full`), is
//!   killed with SIGKILL (a crashing pod) about a second later, and both pods are deleted;
//!   again and again.
//!
//! Baseline: after the steady pods ran traffic for 2 s and stopped. Final: after the churn
//! ended (every churn pod deleted) and the steady traffic stopped. Both read the switch's
//! stats (`resources`, `totals`, FDB, ports) and the disk (sockets and directories under the
//! pods' socket directory, heddle-cni's state, host-local leases).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use heddle_api::{ResourceStats, StatsReply, TrafficTotals};
use serde_json::{json, Value};

use crate::cni::{require_reference_plugin, CniPlugin};
use crate::{
    exclusive_cpus, require_dpdk_peers, require_tool, wait_until, ForwardMode, Netns,
    SwitchProcess, Testpmd,
};

/// How long and how hard to churn.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Traffic and churn time.
    pub duration: Duration,
    /// One CNI call (ADD or DEL) per period.
    pub churn_every: Duration,
    /// Churn pods alive at once (then every ADD is followed by a DEL of the oldest).
    pub population: usize,
    /// Lifetime of a connected churn pod's traffic before its frontend is killed.
    pub connected_for: Duration,
    /// Connected churn crashes memif pods too (one vhost-user and one memif pod per cycle
    /// instead of two vhost-user pods). DPDK 22.11's `net_memif` unmaps a memif port's
    /// shared memory in its interrupt thread when the peer goes away, while the PMD worker
    /// may be reading the ring: the switch dies with SIGSEGV in `librte_net_memif` (seen
    /// after about 115 such crashes). heddle-cni's memif ports are native now (they unmap
    /// only after the workers let go); off by default until a full soak has run with it.
    pub crash_memif: bool,
}

impl SoakConfig {
    /// The soak: 100 ms churn, eight churn pods, connected pods for 1 s each.
    pub fn for_duration(duration: Duration) -> SoakConfig {
        SoakConfig {
            duration,
            churn_every: Duration::from_millis(100),
            population: 8,
            connected_for: Duration::from_secs(1),
            crash_memif: false,
        }
    }
}

/// One reading of everything a leak would grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    /// The switch process's own figures.
    pub resources: ResourceStats,
    /// FDB entries.
    pub fdb_entries: u64,
    /// Ports.
    pub ports: u64,
    /// Unix sockets under the pods' socket directory.
    pub sockets: u64,
    /// Directories under the pods' socket directory.
    pub dirs: u64,
    /// Files in heddle-cni's state directory.
    pub cni_state_files: u64,
    /// host-local leases.
    pub leases: u64,
    /// Listening Unix sockets the switch holds on paths under the pods' socket directory that
    /// no longer exist: DPDK 22.11's `net_memif` never closes a server socket's listener
    /// when its port is removed (it unlinks the file and forgets the fd).
    pub unlinked_listeners: u64,
    /// Hugepage memory the switch maps from the files of DPDK processes other than itself
    /// and the steady pods' generator: guest memory of pods that are gone.
    pub departed_guest_memory: u64,
}

/// What a soak saw.
#[derive(Debug, Clone)]
pub struct SoakReport {
    /// The configuration.
    pub config: SoakConfig,
    /// Before the churn.
    pub baseline: Reading,
    /// After it.
    pub last: Reading,
    /// Switch totals at the end (traffic stopped).
    pub totals: TrafficTotals,
    /// Churn CNI calls made (ADD, DEL), and the time they took in all.
    pub adds: u64,
    /// DELs.
    pub dels: u64,
    /// memif ports removed (churn and connected churn).
    pub memif_removed: u64,
    /// Connected churn cycles completed (frontend connected, sent, killed, pods deleted).
    pub connected_cycles: u64,
    /// Frames the switch received from connected churn pods.
    pub connected_rx: u64,
    /// Frames the steady generator received per port during the churn, and the seconds.
    pub steady_rx: BTreeMap<u16, u64>,
    /// Flood ping replies between the steady kernel pods (from ping's summary).
    pub kernel_ping: String,
    /// Frames the switch received on the steady kernel pods' ports during the churn.
    pub kernel_rx: u64,
    /// Wall time of the churn phase.
    pub elapsed: Duration,
    /// Host veths of churned kernel pods still present at the end.
    pub veths_left: Vec<String>,
    /// Network namespaces of churned pods still present at the end.
    pub netns_left: Vec<String>,
}

impl SoakReport {
    /// Everything that did not come back or add up; empty when the soak passed.
    pub fn problems(&self) -> Vec<String> {
        let (b, l) = (&self.baseline, &self.last);
        let mut p = vec![];
        // DPDK 22.11's net_memif leaks the listener of every memif server socket it removes
        // (`Reading::unlinked_listeners`, one per memif port removed at most): those are
        // shown apart; any other fd left over is a leak.
        let memif_leak = l.unlinked_listeners.saturating_sub(b.unlinked_listeners);
        if memif_leak > self.memif_removed {
            p.push(format!(
                "{memif_leak} unlinked listeners left, more than the {} memif ports removed",
                self.memif_removed
            ));
        }
        let mut same = |what: &str, a: u64, z: u64| {
            if a != z {
                p.push(format!("{what}: baseline {a}, final {z}"));
            }
        };
        same(
            "mbufs in use",
            b.resources.mbufs_in_use,
            l.resources.mbufs_in_use,
        );
        same(
            "open fds (less net_memif's leaked listeners)",
            b.resources.open_fds,
            l.resources.open_fds.saturating_sub(memif_leak),
        );
        same("threads", b.resources.threads, l.resources.threads);
        // The steady generator's memory may grow (DPDK allocates more and sends a new memory
        // table), so the total may change; memory of pods that left must not stay mapped.
        same(
            "hugepage bytes of departed pods still mapped",
            b.departed_guest_memory,
            l.departed_guest_memory,
        );
        same("FDB entries", b.fdb_entries, l.fdb_entries);
        same("ports", b.ports, l.ports);
        same("sockets on disk", b.sockets, l.sockets);
        same("directories on disk", b.dirs, l.dirs);
        same(
            "heddle-cni state files",
            b.cni_state_files,
            l.cni_state_files,
        );
        same("host-local leases", b.leases, l.leases);
        if let Some(bound) = rss_bound(b.resources.rss_bytes) {
            if l.resources.rss_bytes > bound {
                p.push(format!(
                    "RSS: baseline {} B, final {} B (more than {bound} B: 8 MiB + 5%)",
                    b.resources.rss_bytes, l.resources.rss_bytes
                ));
            }
        }
        if self.totals.unaccounted() != 0 {
            p.push(format!(
                "counters do not add up: rx {} + flood copies {} != tx {} + drops {} ({:?}): {} unaccounted",
                self.totals.rx_packets,
                self.totals.flood_copies,
                self.totals.tx_packets,
                self.totals.dropped(),
                self.totals.drops,
                self.totals.unaccounted()
            ));
        }
        if !self.veths_left.is_empty() {
            p.push(format!("host veths left: {:?}", self.veths_left));
        }
        if !self.netns_left.is_empty() {
            p.push(format!("network namespaces left: {:?}", self.netns_left));
        }
        p
    }

    /// The figures as a table: baseline, final, per resource; then the traffic.
    pub fn table(&self) -> String {
        let (b, l) = (&self.baseline, &self.last);
        let mib = |v: u64| format!("{:.1} MiB", v as f64 / (1 << 20) as f64);
        let rows: Vec<(&str, String, String)> = vec![
            (
                "mbufs in use",
                format!(
                    "{} of {}",
                    b.resources.mbufs_in_use, b.resources.mbufs_total
                ),
                format!(
                    "{} of {}",
                    l.resources.mbufs_in_use, l.resources.mbufs_total
                ),
            ),
            (
                "open fds",
                b.resources.open_fds.to_string(),
                l.resources.open_fds.to_string(),
            ),
            (
                "  net_memif's leaked fds",
                b.unlinked_listeners.to_string(),
                format!(
                    "{} ({} memif removed)",
                    l.unlinked_listeners, self.memif_removed
                ),
            ),
            (
                "threads",
                b.resources.threads.to_string(),
                l.resources.threads.to_string(),
            ),
            (
                "RSS",
                mib(b.resources.rss_bytes),
                mib(l.resources.rss_bytes),
            ),
            (
                "hugepages mapped",
                mib(b.resources.hugepage_bytes),
                mib(l.resources.hugepage_bytes),
            ),
            (
                "  of departed pods",
                mib(b.departed_guest_memory),
                mib(l.departed_guest_memory),
            ),
            (
                "FDB entries",
                b.fdb_entries.to_string(),
                l.fdb_entries.to_string(),
            ),
            ("ports", b.ports.to_string(), l.ports.to_string()),
            (
                "sockets on disk",
                b.sockets.to_string(),
                l.sockets.to_string(),
            ),
            (
                "directories on disk",
                b.dirs.to_string(),
                l.dirs.to_string(),
            ),
            (
                "heddle-cni state files",
                b.cni_state_files.to_string(),
                l.cni_state_files.to_string(),
            ),
            (
                "host-local leases",
                b.leases.to_string(),
                l.leases.to_string(),
            ),
        ];
        let mut out = format!("{:<24} {:>22} {:>22}\n", "resource", "baseline", "final");
        for (k, a, z) in rows {
            let _ = writeln!(out, "{k:<24} {a:>22} {z:>22}");
        }
        let secs = self.elapsed.as_secs_f64();
        let t = &self.totals;
        let _ = writeln!(
            out,
            "churn: {} ADD + {} DEL through heddle-cni in {secs:.0} s ({:.1} calls/s); {} connected pod cycles (frontend SIGKILLed), {} frames from them",
            self.adds,
            self.dels,
            (self.adds + self.dels) as f64 / secs.max(1e-9),
            self.connected_cycles,
            self.connected_rx
        );
        let steady: Vec<String> = self
            .steady_rx
            .iter()
            .map(|(p, n)| format!("port {p}: {:.2} Mpps", *n as f64 / secs.max(1e-9) / 1e6))
            .collect();
        let _ = writeln!(
            out,
            "steady pods received (vhost-user a, b, memif a, b): {}; kernel pods: {} frames into the switch, ping {}",
            steady.join(", "),
            self.kernel_rx,
            self.kernel_ping
        );
        let _ = writeln!(
            out,
            "switch totals: rx {} + flood copies {} = {}; tx {} + drops {} = {} ({}); unaccounted {}",
            t.rx_packets,
            t.flood_copies,
            t.rx_packets + t.flood_copies,
            t.tx_packets,
            t.dropped(),
            t.tx_packets + t.dropped(),
            t.drops
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            t.unaccounted()
        );
        out
    }
}

/// RSS may grow by 8 MiB + 5% (allocator caches, lazily touched pages); a per-pod leak
/// over thousands of pods exceeds it.
fn rss_bound(baseline: u64) -> Option<u64> {
    (baseline > 0).then(|| baseline + 8 * (1 << 20) + baseline / 20)
}

/// `(sockets, directories)` below `dir`, recursively.
fn sockets_and_dirs(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::FileTypeExt;
    let (mut s, mut d) = (0, 0);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            d += 1;
            let (s2, d2) = sockets_and_dirs(&e.path());
            s += s2;
            d += d2;
        } else if ft.is_socket() {
            s += 1;
        }
    }
    (s, d)
}

/// Hugepage bytes process `pid` maps from files whose name starts with none of `alive`
/// (DPDK names its hugepage files `<file prefix>map_<n>`), from `/proc/<pid>/smaps`.
fn departed_guest_memory(pid: u32, alive: &[String]) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut total, mut name, mut size_kb) = (0u64, String::new(), 0u64);
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping's header: range perms offset dev inode [path].
            name = f
                .nth(4)
                .and_then(|p| p.rsplit('/').next())
                .unwrap_or_default()
                .to_owned();
            continue;
        }
        let value = f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        match first {
            "Size:" => size_kb = value,
            "KernelPageSize:"
                if value >= 2048
                    && !alive.iter().any(|p| {
                        name.strip_prefix(p.as_str())
                            .is_some_and(|r| r.starts_with("map_"))
                    }) =>
            {
                total += size_kb * 1024;
            }
            _ => {}
        }
    }
    total
}

/// The switch's DPDK `--file-prefix`, from the test config `dir/switch.yaml`.
fn switch_file_prefix(dir: &Path) -> Result<String> {
    let yaml = std::fs::read_to_string(dir.join("switch.yaml"))?;
    let rest = yaml
        .split("file_prefix: ")
        .nth(1)
        .context("no file_prefix in the switch's config")?;
    Ok(rest
        .split(['}', ',', '\n'])
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned())
}

/// Listening Unix sockets of process `pid` bound to a path under `dir` that no longer
/// exists (`/proc/net/unix` keeps the path a socket was bound to).
fn unlinked_listeners(pid: u32, dir: &Path) -> u64 {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    // Num RefCount Protocol Flags Type St Inode Path; St 01 = listening (SS_UNCONNECTED with
    // __SO_ACCEPTCON in Flags 00010000).
    let dir = dir.display().to_string();
    let gone: std::collections::BTreeSet<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (flags, inode, path) = (f.get(3)?, f.get(6)?, f.get(7)?);
            (*flags == "00010000" && path.starts_with(&dir) && !Path::new(path).exists())
                .then(|| format!("socket:[{inode}]"))
        })
        .collect();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| gone.contains(t.to_string_lossy().as_ref()))
        })
        .count() as u64
}

fn count_files(dir: &Path, keep: impl Fn(&str) -> bool) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| keep(&e.file_name().to_string_lossy()))
        .count() as u64
}

/// The soak's directories and the switch.
struct Rig {
    dir: PathBuf,
    switch: SwitchProcess,
    cni: CniPlugin,
}

impl Rig {
    fn conf(&self, kind: &str, vlan: u16) -> Value {
        let mut c = json!({
            "cniVersion": "1.1.0",
            "name": format!("soak-{kind}"),
            "type": "heddle-cni",
            "kind": kind,
            "vlan": vlan,
            "socketDir": self.dir.join("pods"),
            "stateDir": self.dir.join("cni-state"),
            "switchSocket": self.switch.socket(),
        });
        if kind == "memif" {
            c["ringSize"] = json!(1024);
        }
        if kind == "kernel" {
            c["ipam"] = json!({
                "type": "host-local", "subnet": "10.93.0.0/24",
                "dataDir": self.dir.join("ipam"),
            });
        }
        c
    }

    /// `alive`: DPDK file prefixes of the processes whose memory the switch may map.
    fn read(&self, alive: &[String]) -> Result<(Reading, StatsReply)> {
        let client = self.switch.client();
        let stats = client.stats()?;
        let (sockets, dirs) = sockets_and_dirs(&self.dir.join("pods"));
        Ok((
            Reading {
                resources: stats.resources,
                fdb_entries: client.fdb()?.len() as u64,
                ports: stats.ports.len() as u64,
                sockets,
                dirs,
                cni_state_files: count_files(&self.dir.join("cni-state"), |n| n != ".lock"),
                leases: count_files(&self.dir.join("ipam/soak-kernel"), |n| {
                    n.parse::<std::net::IpAddr>().is_ok()
                }),
                unlinked_listeners: self
                    .switch
                    .pid()
                    .map_or(0, |pid| unlinked_listeners(pid, &self.dir.join("pods"))),
                departed_guest_memory: self
                    .switch
                    .pid()
                    .map_or(0, |pid| departed_guest_memory(pid, alive)),
            },
            stats,
        ))
    }

    /// Reads once nothing moves any more: two stats 300 ms apart with the same totals.
    fn read_settled(&self, alive: &[String]) -> Result<(Reading, StatsReply)> {
        let mut prev = self.read(alive)?;
        wait_until(
            "the switch's counters to settle",
            Duration::from_secs(20),
            Duration::from_millis(300),
            || {
                let now = self.read(alive)?;
                let settled = now.1.totals == prev.1.totals;
                prev = now.clone();
                Ok(settled.then_some(()))
            },
        )?;
        Ok(prev)
    }
}

/// A churn pod: its CNI identity, and for kernel pods the namespace and a ping.
struct ChurnPod {
    id: String,
    kind: &'static str,
    vlan: u16,
    netns: Option<Netns>,
    ping: Option<Child>,
}

fn ip_of(r: &Value) -> Option<String> {
    r["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .map(str::to_owned)
}

fn first<'a>(r: &'a Value, key: &str) -> Result<&'a str> {
    r["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find_map(|i| i[key].as_str()))
        .with_context(|| format!("no interface with {key} in {r}"))
}

fn spawn_ping(ns: &str, args: &[&str]) -> Result<Child> {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning ping")
}

fn rx_of(stats: &StatsReply, port: &str) -> u64 {
    stats
        .ports
        .iter()
        .find(|p| p.name == port)
        .map_or(0, |p| p.rx_packets)
}

/// Runs the soak. Fails when the rig cannot be set up or a call fails; leaks and counters
/// that do not add up are in [`SoakReport::problems`].
pub fn run(cfg: SoakConfig) -> Result<SoakReport> {
    require_dpdk_peers(900)?;
    require_reference_plugin("host-local")?;
    require_tool("ping").context("ping comes from the Debian package iputils-ping")?;
    let _cpus = exclusive_cpus();
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_owned();
    let switch = SwitchProcess::start_with_ports(&dir, "  []")?;
    let rig = Arc::new(Rig {
        dir: dir.clone(),
        switch,
        cni: CniPlugin::heddle()?,
    });
    let r = run_on(&rig, &cfg);
    if r.is_err() {
        eprintln!("switch log (tail):\n{}", tail(&rig.switch.log(), 40));
    }
    r
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn run_on(rig: &Arc<Rig>, cfg: &SoakConfig) -> Result<SoakReport> {
    let cni = &rig.cni;
    // Steady pods.
    let (cv, cm, ck) = (
        rig.conf("vhost-user", 100),
        rig.conf("memif", 101),
        rig.conf("kernel", 102),
    );
    let va = cni.ok("ADD", "steady-va", "net1", "/run/netns/none", &cv)?;
    let vb = cni.ok("ADD", "steady-vb", "net1", "/run/netns/none", &cv)?;
    let ma = cni.ok("ADD", "steady-ma", "net1", "/run/netns/none", &cm)?;
    let mb = cni.ok("ADD", "steady-mb", "net1", "/run/netns/none", &cm)?;
    let (nka, nkb) = (Netns::unique("soak-ka")?, Netns::unique("soak-kb")?);
    let ka = cni.ok(
        "ADD",
        "steady-ka",
        "eth0",
        &nka.path().display().to_string(),
        &ck,
    )?;
    let kb = cni.ok(
        "ADD",
        "steady-kb",
        "eth0",
        &nkb.path().display().to_string(),
        &ck,
    )?;
    let kb_ip = ip_of(&kb).context("steady-kb has no address")?;
    let _ = ip_of(&ka).context("steady-ka has no address")?;
    let (sva, mva) = (first(&va, "socketPath")?, first(&va, "mac")?);
    let (svb, mvb) = (first(&vb, "socketPath")?, first(&vb, "mac")?);
    let (sma, mma) = (first(&ma, "socketPath")?, first(&ma, "mac")?);
    let (smb, mmb) = (first(&mb, "socketPath")?, first(&mb, "mac")?);
    let mut gen = Testpmd::builder("soak-steady")
        .cpu(0)
        .virtio_user(sva, mva, false)
        .virtio_user(svb, mvb, false)
        .memif(sma, false, 0, mma)
        .memif(smb, false, 0, mmb)
        .forward_mode(ForwardMode::Mac)
        .eth_peer(0, mvb)
        .eth_peer(1, mva)
        .eth_peer(2, mmb)
        .eth_peer(3, mma)
        .spawn()?;
    gen.wait_ready(Duration::from_secs(30))?;
    for p in 0..4 {
        gen.wait_link_up(p, Duration::from_secs(15))?;
    }
    // Warm up (first connections, lazily touched memory, learned MACs), then the baseline.
    wait_until(
        "the kernel pods to reach each other",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || Ok(nka.exec(&["ping", "-c", "1", "-W", "1", &kb_ip]).ok()),
    )?;
    seed_loop(&mut gen)?;
    std::thread::sleep(Duration::from_secs(2));
    gen.stop()?;
    // The switch maps its own hugepages and the steady generator's (guest memory); any
    // other hugepage file it maps belongs to a pod that is gone.
    let alive = [
        switch_file_prefix(&rig.dir)?,
        gen.file_prefix()
            .context("the generator runs with a file prefix")?
            .to_owned(),
    ];
    let (baseline, _) = rig.read_settled(&alive)?;

    // Steady traffic during the churn.
    gen.clear_stats()?;
    let sk_before = rig.switch.client().stats()?;
    seed_loop(&mut gen)?;
    let secs = cfg.duration.as_secs().max(1).to_string();
    let mut flood = spawn_ping(nka.name(), &["-f", "-q", "-w", &secs, &kb_ip])?;

    let stop = Arc::new(AtomicBool::new(false));
    let connected = {
        let (rig, stop, cfg, alive) = (rig.clone(), stop.clone(), cfg.clone(), alive.clone());
        std::thread::spawn(move || connected_churn(&rig, &stop, &cfg, &alive))
    };

    let started = Instant::now();
    let lanes: Vec<_> = (0..LANES)
        .map(|lane| {
            let (rig, cfg, kb_ip) = (rig.clone(), cfg.clone(), kb_ip.clone());
            std::thread::spawn(move || churn_lane(&rig, &cfg, &kb_ip, lane, started))
        })
        .collect();
    let mut lane_results = Vec::new();
    for l in lanes {
        lane_results.push(
            l.join()
                .map_err(|_| anyhow::anyhow!("a churn thread panicked"))?,
        );
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let conn = connected
        .join()
        .map_err(|_| anyhow::anyhow!("the connected churn thread panicked"))?;
    let mut churned = Churned::default();
    for r in lane_results {
        let r = r?;
        churned.adds += r.adds;
        churned.dels += r.dels;
        churned.memif_removed += r.memif_removed;
        churned.veths.extend(r.veths);
        churned.netns.extend(r.netns);
    }
    let Churned {
        adds,
        dels,
        memif_removed,
        veths,
        netns: netns_names,
    } = churned;
    let (connected_cycles, connected_rx) = conn?;

    gen.stop()?;
    let steady = gen.settled_port_stats(Duration::from_millis(300), Duration::from_secs(5))?;
    let _ = flood.kill();
    let out = flood.wait_with_output()?;
    let kernel_ping = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("transmitted"))
        .unwrap_or("(no summary)")
        .to_owned();
    let (last, stats) = rig.read_settled(&alive)?;
    let kernel_rx = ["cni/steady-ka/eth0", "cni/steady-kb/eth0"]
        .iter()
        .map(|p| rx_of(&stats, p).saturating_sub(rx_of(&sk_before, p)))
        .sum();

    let veths_left = veths
        .into_iter()
        .filter(|v| Path::new("/sys/class/net").join(v).exists())
        .collect();
    let netns_left = netns_names
        .into_iter()
        .filter(|n| Path::new("/run/netns").join(n).exists())
        .collect();
    // The steady pods go too; a DEL of each must succeed.
    for (id, ifname, c) in [
        ("steady-va", "net1", &cv),
        ("steady-vb", "net1", &cv),
        ("steady-ma", "net1", &cm),
        ("steady-mb", "net1", &cm),
        ("steady-ka", "eth0", &ck),
        ("steady-kb", "eth0", &ck),
    ] {
        cni.ok("DEL", id, ifname, "", c)?;
    }
    // Only now the generator goes: the switch closed its memif ports first, in the order
    // that keeps DPDK's net_memif from unmapping a ring under the PMD worker.
    gen.shutdown()?;
    Ok(SoakReport {
        config: cfg.clone(),
        baseline,
        last,
        totals: stats.totals,
        adds,
        dels,
        memif_removed: memif_removed + if cfg.crash_memif { connected_cycles } else { 0 },
        connected_cycles,
        connected_rx,
        steady_rx: steady.iter().map(|(p, s)| (*p, s.rx_packets)).collect(),
        kernel_ping,
        kernel_rx,
        elapsed,
        veths_left,
        netns_left,
    })
}

/// Starts the steady pods' mac-forwarding loop with 16 bursts per stream in flight: with one
/// (`start tx_first`) the loop's rate is bound by how often the generator gets CPU 0, which
/// it shares with everything else here.
fn seed_loop(gen: &mut Testpmd) -> Result<()> {
    gen.command_wait("start tx_first 16", Duration::from_secs(5), |t| {
        t.contains("packet forwarding - ports=")
    })
    .map(|_| ())
}

/// Churn threads: each makes one CNI call every `LANES * churn_every`, the lanes offset by
/// `churn_every`, so together they make one every `churn_every` while a call takes up to
/// `LANES` periods (a call takes 100-400 ms on a loaded 2-CPU machine).
const LANES: u64 = 4;

/// What a churn lane did.
#[derive(Debug, Default)]
struct Churned {
    adds: u64,
    dels: u64,
    memif_removed: u64,
    veths: Vec<String>,
    netns: Vec<String>,
}

/// One churn lane until `cfg.duration` after `started`, then every pod it holds deleted.
fn churn_lane(
    rig: &Rig,
    cfg: &SoakConfig,
    kb_ip: &str,
    lane: u64,
    started: Instant,
) -> Result<Churned> {
    let cni = &rig.cni;
    let kinds: [(&str, u16); 3] = [("vhost-user", 100), ("memif", 101), ("kernel", 102)];
    let population = cfg.population.div_ceil(LANES as usize).max(1);
    let mut live: VecDeque<ChurnPod> = VecDeque::new();
    let mut out = Churned::default();
    let mut n = 0u64;
    let churn = (|| -> Result<()> {
        let mut next = started + cfg.churn_every * lane as u32;
        while started.elapsed() < cfg.duration {
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            next += cfg.churn_every * LANES as u32;
            if live.len() >= population && (out.adds + out.dels) % 2 == 1 {
                let pod = live.pop_front().expect("population > 0");
                out.memif_removed += u64::from(pod.kind == "memif");
                del_churn_pod(cni, rig, pod)?;
                out.dels += 1;
            } else {
                // Kinds in turn across all lanes.
                let (kind, vlan) = kinds[((n * LANES + lane) % 3) as usize];
                n += 1;
                let id = format!("churn-{lane}-{n}");
                let (netns, path) = if kind == "kernel" {
                    let ns = Netns::unique("soak-c")?;
                    out.netns.push(ns.name().to_owned());
                    let p = ns.path().display().to_string();
                    (Some(ns), p)
                } else {
                    (None, "/run/netns/none".to_owned())
                };
                let ifname = if kind == "kernel" { "eth0" } else { "net1" };
                let r = cni.ok("ADD", &id, ifname, &path, &rig.conf(kind, vlan))?;
                out.adds += 1;
                let mut pod = ChurnPod {
                    id,
                    kind,
                    vlan,
                    netns,
                    ping: None,
                };
                if let Some(ns) = &pod.netns {
                    out.veths.push(first(&r, "name")?.to_owned());
                    pod.ping = Some(spawn_ping(
                        ns.name(),
                        &["-q", "-i", "0.01", "-W", "1", kb_ip],
                    )?);
                }
                live.push_back(pod);
            }
        }
        Ok(())
    })();
    let mut cleanup = Ok(());
    while let Some(pod) = live.pop_front() {
        out.memif_removed += u64::from(pod.kind == "memif");
        match del_churn_pod(cni, rig, pod) {
            Ok(()) => out.dels += 1,
            Err(e) => cleanup = Err(e),
        }
    }
    churn?;
    cleanup?;
    Ok(out)
}

fn del_churn_pod(cni: &CniPlugin, rig: &Rig, mut pod: ChurnPod) -> Result<()> {
    let ifname = if pod.kind == "kernel" { "eth0" } else { "net1" };
    // DEL as containerd sends it: no netns. The ping is still running.
    cni.ok("DEL", &pod.id, ifname, "", &rig.conf(pod.kind, pod.vlan))?;
    if let Some(mut ping) = pod.ping.take() {
        let _ = ping.kill();
        let _ = ping.wait();
    }
    drop(pod.netns.take());
    Ok(())
}

/// Connected churn until `stop`: returns the cycles completed and the frames the switch
/// received from those pods.
fn connected_churn(
    rig: &Rig,
    stop: &AtomicBool,
    cfg: &SoakConfig,
    alive: &[String],
) -> Result<(u64, u64)> {
    let cni = &rig.cni;
    // Two pods on VLAN 103 in one testpmd, each sending to the other and never reading
    // (txonly): a vhost-user pod and a second vhost-user pod, or a memif pod with
    // `crash_memif`.
    let second = if cfg.crash_memif {
        "memif"
    } else {
        "vhost-user"
    };
    let (cv, c2) = (rig.conf("vhost-user", 103), rig.conf(second, 103));
    let (mut cycles, mut rx) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let (idv, id2) = (format!("conn-v{cycles}"), format!("conn-x{cycles}"));
        let v = cni.ok("ADD", &idv, "net1", "/run/netns/none", &cv)?;
        let x = cni.ok("ADD", &id2, "net1", "/run/netns/none", &c2)?;
        let attempt = (|| -> Result<u64> {
            let pod = Testpmd::builder("soak-conn")
                .cpu(0)
                .memory_mb(Some(128))
                .total_num_mbufs(Some(4096))
                .virtio_user(first(&v, "socketPath")?, first(&v, "mac")?, false);
            let pod = if cfg.crash_memif {
                pod.memif(first(&x, "socketPath")?, false, 0, first(&x, "mac")?)
            } else {
                pod.virtio_user(first(&x, "socketPath")?, first(&x, "mac")?, false)
            };
            let mut pod = pod
                .forward_mode(ForwardMode::TxOnly)
                .eth_peer(0, first(&x, "mac")?)
                .eth_peer(1, first(&v, "mac")?)
                .spawn()?;
            pod.wait_ready(Duration::from_secs(60))?;
            pod.wait_link_up(0, Duration::from_secs(30))?;
            pod.wait_link_up(1, Duration::from_secs(30))?;
            pod.start()?;
            std::thread::sleep(cfg.connected_for);
            let stats = rig.switch.client().stats()?;
            let got = rx_of(&stats, &format!("cni/{idv}/net1"))
                + rx_of(&stats, &format!("cni/{id2}/net1"));
            // The measure of departed pods' memory sees this pod's while it is connected,
            // so the final reading's zero means the switch unmapped it.
            let pid = rig.switch.pid().context("the switch runs")?;
            ensure!(
                departed_guest_memory(pid, alive) > 0,
                "the switch maps no hugepage memory of a connected pod"
            );
            // A crashing pod: SIGKILL, no goodbye on either socket.
            // SAFETY: kill(2) on our own child, not reaped yet (the Testpmd owns it), so the
            // PID cannot have been reused.
            unsafe { libc::kill(pod.pid() as libc::pid_t, libc::SIGKILL) };
            drop(pod);
            Ok(got)
        })();
        cni.ok("DEL", &idv, "net1", "", &cv)?;
        cni.ok("DEL", &id2, "net1", "", &c2)?;
        let got = attempt.with_context(|| format!("connected churn cycle {cycles}"))?;
        ensure!(
            got > 0,
            "connected churn cycle {cycles}: the switch received nothing from the pods"
        );
        rx += got;
        cycles += 1;
    }
    if cycles == 0 {
        bail!("no connected churn cycle completed");
    }
    Ok((cycles, rx))
}
