//! dpdk-testpmd peers: a builder for the command line and a handle on the running process.
//!
//! The process runs as `[ip netns exec NS] [WRAPPER] stdbuf -oL dpdk-testpmd EAL -- APP`.
//! `ip netns exec` and `stdbuf` both exec (and a wrapper must), so the child's PID is
//! testpmd's own. stdout and stderr go to
//! one log file; stdin is a pipe this handle keeps open (testpmd reads commands from it in
//! interactive mode, and waits on it for "Press enter to exit" otherwise: with stdin at EOF
//! a non-interactive testpmd without `--stats-period` quits right after starting).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::env::{free_file_prefix, hugetlbfs_mounts, require_tool, wait_until};
use crate::stats::{parse_port_macs, parse_port_stats_blocks, PortStats};

/// The testpmd binary: `$HEDDLE_TESTPMD` if set, else `dpdk-testpmd` from `PATH`.
pub fn testpmd_binary() -> Result<PathBuf> {
    match std::env::var_os("HEDDLE_TESTPMD") {
        Some(p) => {
            let p = PathBuf::from(p);
            if !p.is_file() {
                bail!("HEDDLE_TESTPMD={} does not exist", p.display());
            }
            Ok(p)
        }
        None => require_tool("dpdk-testpmd"),
    }
}

/// testpmd forwarding engine (`--forward-mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardMode {
    /// Forward as is to the paired port.
    Io,
    /// Forward to the paired port, rewriting source MAC to the port's and destination MAC to
    /// the `--eth-peer` of the TX port.
    Mac,
    /// Generate packets (`--txpkts` bytes, to `--eth-peer`); received packets are not counted.
    TxOnly,
    /// Receive and drop.
    RxOnly,
    /// Any other engine by its testpmd name.
    Other(String),
}

impl ForwardMode {
    fn as_str(&self) -> &str {
        match self {
            ForwardMode::Io => "io",
            ForwardMode::Mac => "mac",
            ForwardMode::TxOnly => "txonly",
            ForwardMode::RxOnly => "rxonly",
            ForwardMode::Other(s) => s,
        }
    }
}

/// How the harness talks to testpmd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// `-i`: commands through stdin; [`Testpmd::port_stats`] sends `show port stats all`.
    Interactive,
    /// `--stats-period N` (non-interactive): testpmd prints all port stats every N seconds;
    /// [`Testpmd::port_stats`] waits for the next complete round.
    StatsPeriod(u32),
}

/// One `--vdev` port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// `net_virtio_userN,path=..,mac=..,queues=Q,server=0|1`: a virtio driver talking
    /// vhost-user to a backend (the switch). `server=1` makes testpmd create the socket and
    /// block in EAL init until a vhost-user client connects, one port after the other.
    VirtioUser {
        /// vhost-user socket path.
        path: PathBuf,
        /// Port MAC, `aa:bb:cc:dd:ee:ff`.
        mac: String,
        /// Queue pairs.
        queues: u16,
        /// testpmd owns the socket (listens) instead of connecting.
        server: bool,
    },
    /// `net_vhostN,iface=..,queues=Q,client=0|1`: a vhost-user backend (testpmd as the switch).
    Vhost {
        /// vhost-user socket path.
        iface: PathBuf,
        /// Queue pairs.
        queues: u16,
        /// Connect (and reconnect) to a server socket instead of listening.
        client: bool,
    },
    /// `net_memifN,role=..,socket=..,socket-abstract=no,id=..,mac=..` (not exercised yet).
    Memif {
        /// memif control socket path (a file, not the abstract namespace).
        socket: PathBuf,
        /// `role=server` when true, `role=client` otherwise.
        server: bool,
        /// Interface id on the socket.
        id: u32,
        /// Port MAC.
        mac: String,
    },
    /// A raw `--vdev` argument, e.g. `net_af_packet0,iface=veth0`.
    Raw(String),
}

/// Builder for a dpdk-testpmd peer. Defaults: interactive, `io` forwarding, lcores 0 and 1
/// both on CPU 0, `-m 256`, `--single-file-segments`, `--no-pci`, a fresh unique
/// `--file-prefix`, `--total-num-mbufs=16384`, `--nb-cores=1`.
#[derive(Debug, Clone)]
pub struct TestpmdBuilder {
    name: String,
    binary: Option<PathBuf>,
    ports: Vec<PortSpec>,
    cpu: usize,
    memory_mb: Option<u32>,
    single_file_segments: bool,
    no_pci: bool,
    in_memory: bool,
    file_prefix: Option<String>,
    forward_mode: ForwardMode,
    control: Control,
    auto_start: bool,
    tx_first: bool,
    eth_peers: Vec<(u16, String)>,
    txpkts: Option<String>,
    burst: Option<u16>,
    total_num_mbufs: Option<u32>,
    netns: Option<String>,
    wrapper: Vec<String>,
    eal_args: Vec<String>,
    app_args: Vec<String>,
    stop_timeout: Duration,
}

impl TestpmdBuilder {
    /// A builder; `name` only labels logs and error messages.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            binary: None,
            ports: Vec::new(),
            cpu: 0,
            memory_mb: Some(256),
            single_file_segments: true,
            no_pci: true,
            in_memory: false,
            file_prefix: None,
            forward_mode: ForwardMode::Io,
            control: Control::Interactive,
            auto_start: false,
            tx_first: false,
            eth_peers: Vec::new(),
            txpkts: None,
            burst: None,
            total_num_mbufs: Some(16384),
            netns: None,
            wrapper: Vec::new(),
            eal_args: Vec::new(),
            app_args: Vec::new(),
            stop_timeout: Duration::from_secs(5),
        }
    }

    /// Use this testpmd binary instead of [`testpmd_binary`].
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Adds a virtio-user port (one queue pair) connecting to, or with `server` listening on,
    /// the vhost-user socket `path`.
    pub fn virtio_user(mut self, path: impl Into<PathBuf>, mac: &str, server: bool) -> Self {
        self.ports.push(PortSpec::VirtioUser {
            path: path.into(),
            mac: mac.to_owned(),
            queues: 1,
            server,
        });
        self
    }

    /// Adds a `net_vhost` port (one queue pair) listening on, or with `client` connecting to,
    /// the vhost-user socket `iface`.
    pub fn vhost(mut self, iface: impl Into<PathBuf>, client: bool) -> Self {
        self.ports.push(PortSpec::Vhost {
            iface: iface.into(),
            queues: 1,
            client,
        });
        self
    }

    /// Adds a `net_memif` port.
    pub fn memif(mut self, socket: impl Into<PathBuf>, server: bool, id: u32, mac: &str) -> Self {
        self.ports.push(PortSpec::Memif {
            socket: socket.into(),
            server,
            id,
            mac: mac.to_owned(),
        });
        self
    }

    /// Adds any port spec.
    pub fn port(mut self, spec: PortSpec) -> Self {
        self.ports.push(spec);
        self
    }

    /// Runs the main lcore 0 and the forwarding lcore 1 on CPU `cpu`
    /// (`--lcores '0@C,1@C' --main-lcore 0`).
    pub fn cpu(mut self, cpu: usize) -> Self {
        self.cpu = cpu;
        self
    }

    /// `-m MB`, or no `-m` with `None`.
    pub fn memory_mb(mut self, mb: Option<u32>) -> Self {
        self.memory_mb = mb;
        self
    }

    /// `--single-file-segments` (default on; virtio-user needs it).
    pub fn single_file_segments(mut self, on: bool) -> Self {
        self.single_file_segments = on;
        self
    }

    /// `--no-pci` (default on).
    pub fn no_pci(mut self, on: bool) -> Self {
        self.no_pci = on;
        self
    }

    /// `--in-memory` instead of a file prefix: no hugepage files, no runtime directory. All
    /// in-memory processes share `/var/run/dpdk/rte` for telemetry.
    pub fn in_memory(mut self, on: bool) -> Self {
        self.in_memory = on;
        self
    }

    /// A fixed `--file-prefix` instead of a fresh unique one.
    pub fn file_prefix(mut self, prefix: &str) -> Self {
        self.file_prefix = Some(prefix.to_owned());
        self
    }

    /// `--forward-mode`.
    pub fn forward_mode(mut self, mode: ForwardMode) -> Self {
        self.forward_mode = mode;
        self
    }

    /// Interactive (default) or `--stats-period`.
    pub fn control(mut self, control: Control) -> Self {
        self.control = control;
        self
    }

    /// `--auto-start`: forward as soon as the ports are up (works in both control modes).
    pub fn auto_start(mut self, on: bool) -> Self {
        self.auto_start = on;
        self
    }

    /// `--tx-first` (non-interactive only, implies auto-start): send one burst per port
    /// first, which seeds `mac`/`io` loops. Interactive peers use [`Testpmd::start_tx_first`].
    pub fn tx_first(mut self, on: bool) -> Self {
        self.tx_first = on;
        self
    }

    /// `--eth-peer=PORT,MAC`: destination MAC for frames sent on `port` in mac/txonly modes.
    pub fn eth_peer(mut self, port: u16, mac: &str) -> Self {
        self.eth_peers.push((port, mac.to_owned()));
        self
    }

    /// `--txpkts=LEN` (txonly packet length, or segment lengths `a,b,..`).
    pub fn txpkts(mut self, spec: &str) -> Self {
        self.txpkts = Some(spec.to_owned());
        self
    }

    /// `--burst=N`.
    pub fn burst(mut self, n: u16) -> Self {
        self.burst = Some(n);
        self
    }

    /// `--total-num-mbufs=N` (default 16384, ~36 MB; without it testpmd sizes the pool for
    /// its maximum port count, ~340 MB).
    pub fn total_num_mbufs(mut self, n: Option<u32>) -> Self {
        self.total_num_mbufs = n;
        self
    }

    /// Runs testpmd inside the named network namespace (`ip netns exec`).
    pub fn netns(mut self, name: &str) -> Self {
        self.netns = Some(name.to_owned());
        self
    }

    /// Runs testpmd through `argv` (after any `ip netns exec`): a command that prepares
    /// something (e.g. a container's mount namespace) and then execs the rest of its
    /// arguments, so the child's PID stays testpmd's.
    pub fn wrapper(mut self, argv: &[String]) -> Self {
        self.wrapper = argv.to_vec();
        self
    }

    /// An extra EAL argument (before `--`).
    pub fn eal_arg(mut self, arg: &str) -> Self {
        self.eal_args.push(arg.to_owned());
        self
    }

    /// An extra testpmd argument (after `--`).
    pub fn app_arg(mut self, arg: &str) -> Self {
        self.app_args.push(arg.to_owned());
        self
    }

    /// How long drop/[`Testpmd::shutdown`] waits after SIGINT before SIGKILL (default 5 s).
    pub fn stop_timeout(mut self, t: Duration) -> Self {
        self.stop_timeout = t;
        self
    }

    /// The testpmd arguments (without the binary, `stdbuf` or `ip netns exec`). Uses
    /// `file_prefix` when no fixed prefix was set.
    pub fn args(&self, file_prefix: &str) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let c = self.cpu;
        a.extend([
            "--lcores".into(),
            format!("0@{c},1@{c}"),
            "--main-lcore".into(),
            "0".into(),
        ]);
        if self.in_memory {
            a.push("--in-memory".into());
        } else {
            a.extend(["--file-prefix".into(), file_prefix.to_owned()]);
        }
        if let Some(m) = self.memory_mb {
            a.extend(["-m".into(), m.to_string()]);
        }
        if self.no_pci {
            a.push("--no-pci".into());
        }
        if self.single_file_segments {
            a.push("--single-file-segments".into());
        }
        let (mut nv, mut nh, mut nm) = (0, 0, 0);
        for p in &self.ports {
            let vdev = match p {
                PortSpec::VirtioUser {
                    path,
                    mac,
                    queues,
                    server,
                } => {
                    nv += 1;
                    format!(
                        "net_virtio_user{},path={},mac={mac},queues={queues},server={}",
                        nv - 1,
                        path.display(),
                        u8::from(*server)
                    )
                }
                PortSpec::Vhost {
                    iface,
                    queues,
                    client,
                } => {
                    nh += 1;
                    format!(
                        "net_vhost{},iface={},queues={queues},client={}",
                        nh - 1,
                        iface.display(),
                        u8::from(*client)
                    )
                }
                PortSpec::Memif {
                    socket,
                    server,
                    id,
                    mac,
                } => {
                    nm += 1;
                    format!(
                        "net_memif{},role={},socket={},socket-abstract=no,id={id},mac={mac}",
                        nm - 1,
                        if *server { "server" } else { "client" },
                        socket.display()
                    )
                }
                PortSpec::Raw(s) => s.clone(),
            };
            a.extend(["--vdev".into(), vdev]);
        }
        a.extend(self.eal_args.iter().cloned());
        a.push("--".into());
        match self.control {
            Control::Interactive => a.push("-i".into()),
            Control::StatsPeriod(n) => a.push(format!("--stats-period={n}")),
        }
        a.push(format!("--forward-mode={}", self.forward_mode.as_str()));
        a.push("--nb-cores=1".into());
        if let Some(n) = self.total_num_mbufs {
            a.push(format!("--total-num-mbufs={n}"));
        }
        if let Some(b) = self.burst {
            a.push(format!("--burst={b}"));
        }
        if let Some(t) = &self.txpkts {
            a.push(format!("--txpkts={t}"));
        }
        for (port, mac) in &self.eth_peers {
            a.push(format!("--eth-peer={port},{mac}"));
        }
        if self.auto_start || self.tx_first {
            a.push("--auto-start".into());
        }
        if self.tx_first {
            a.push("--tx-first".into());
        }
        a.extend(self.app_args.iter().cloned());
        a
    }

    /// Starts testpmd and returns at once; call [`Testpmd::wait_ready`] next.
    pub fn spawn(self) -> Result<Testpmd> {
        if self.tx_first && self.control == Control::Interactive {
            bail!("--tx-first is ignored by interactive testpmd: use Testpmd::start_tx_first()");
        }
        let binary = match &self.binary {
            Some(b) => b.clone(),
            None => testpmd_binary()?,
        };
        let prefix = self
            .file_prefix
            .clone()
            .unwrap_or_else(|| free_file_prefix("heddle-tp"));
        let args = self.args(&prefix);
        let mut argv: Vec<String> = Vec::new();
        if let Some(ns) = &self.netns {
            argv.extend(["ip".into(), "netns".into(), "exec".into(), ns.clone()]);
        }
        argv.extend(self.wrapper.iter().cloned());
        // Line-buffer stdout: testpmd uses stdio, and a log file would otherwise be block
        // buffered until exit, hiding `show port stats` answers.
        argv.extend(["stdbuf".into(), "-oL".into(), binary.display().to_string()]);
        argv.extend(args);

        let dir = tempfile::Builder::new()
            .prefix(&format!("heddle-testpmd-{}-", self.name))
            .tempdir()?;
        let log_path = dir.path().join("testpmd.log");
        let log = File::create(&log_path)?;
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", argv.join(" ")))?;
        let stdin = child.stdin.take();
        Ok(Testpmd {
            name: self.name,
            child,
            stdin,
            log_path,
            _dir: dir,
            nb_ports: self.ports.len(),
            control: self.control,
            file_prefix: (!self.in_memory).then_some(prefix),
            argv,
            stop_timeout: self.stop_timeout,
            exited: None,
        })
    }
}

/// A running dpdk-testpmd. Dropping it stops the process (SIGINT, then SIGKILL after the
/// stop timeout) and removes its hugepage files and runtime directory.
#[derive(Debug)]
pub struct Testpmd {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
    nb_ports: usize,
    control: Control,
    file_prefix: Option<String>,
    argv: Vec<String>,
    stop_timeout: Duration,
    exited: Option<ExitStatus>,
}

impl Testpmd {
    /// A builder, same as [`TestpmdBuilder::new`].
    pub fn builder(name: &str) -> TestpmdBuilder {
        TestpmdBuilder::new(name)
    }

    /// PID of the testpmd process (our direct child).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The full command line that was run.
    pub fn command_line(&self) -> String {
        self.argv.join(" ")
    }

    /// The DPDK file prefix, `None` for `--in-memory`.
    pub fn file_prefix(&self) -> Option<&str> {
        self.file_prefix.as_deref()
    }

    /// Path of the combined stdout/stderr log (deleted on drop).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn log_len(&self) -> usize {
        std::fs::metadata(&self.log_path)
            .map(|m| m.len() as usize)
            .unwrap_or(0)
    }

    fn log_since(&self, offset: usize) -> String {
        let log = std::fs::read(&self.log_path).unwrap_or_default();
        String::from_utf8_lossy(log.get(offset..).unwrap_or_default()).into_owned()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    fn fail(&self, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!(
            "testpmd `{}` (pid {}): {what}\ncommand: {}\nlast log lines:\n{}",
            self.name,
            self.pid(),
            self.command_line(),
            self.log_tail(40)
        )
    }

    /// Fails with the log tail if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.try_wait() {
            None => Ok(()),
            Some(st) => Err(self.fail(format!("exited early with {st}"))),
        }
    }

    /// Polls the log from `offset` until `done` accepts it; fails if testpmd exits first or
    /// `timeout` passes. Returns the log text after `offset`.
    pub fn wait_for_log_since(
        &mut self,
        offset: usize,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_since(offset);
            if done(&text) {
                return Ok(text);
            }
            self.check_running()
                .map_err(|e| e.context(format!("while waiting for {what}")))?;
            if Instant::now() >= deadline {
                return Err(self.fail(format!("timed out after {timeout:?} waiting for {what}")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        self.wait_for_log_since(0, &format!("`{needle}` in the log"), timeout, |t| {
            t.contains(needle)
        })
        .map(|_| ())
    }

    /// Waits until every port was probed and configured (a `Port N: MAC` line each) and
    /// testpmd finished start-up (`testpmd> ` prompt in interactive mode, the link check in
    /// non-interactive mode). Fails at once on "No probed ethernet devices" (testpmd would go
    /// on with zero ports, e.g. when a virtio-user socket did not exist).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let nb_ports = self.nb_ports;
        let interactive = self.control == Control::Interactive;
        let mut probe_failed = false;
        self.wait_for_log_since(0, &format!("{nb_ports} ports ready"), timeout, |t| {
            if t.contains("No probed ethernet devices") || t.contains("Bus (vdev) probe failed") {
                probe_failed = true;
                return true;
            }
            let ports_ok = parse_port_macs(t).len() >= nb_ports;
            let started = if interactive {
                t.contains("testpmd> ")
            } else {
                t.contains("Checking link statuses...")
            };
            ports_ok && started
        })?;
        if probe_failed {
            return Err(self.fail("a --vdev port failed to probe (is the peer's socket there?)"));
        }
        Ok(())
    }

    /// MAC address of each port, from testpmd's start-up lines.
    pub fn port_macs(&self) -> BTreeMap<u16, String> {
        parse_port_macs(&self.log())
    }

    /// Writes one command line to testpmd's stdin (interactive mode).
    pub fn command(&mut self, cmd: &str) -> Result<()> {
        if self.control != Control::Interactive {
            bail!(
                "testpmd `{}` is not interactive; cannot send `{cmd}`",
                self.name
            );
        }
        self.check_running()?;
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        writeln!(stdin, "{cmd}")
            .and_then(|_| stdin.flush())
            .with_context(|| format!("sending `{cmd}` to testpmd `{}`", self.name))
    }

    /// Sends `cmd` and waits until the output after it satisfies `done`; returns that output.
    pub fn command_wait(
        &mut self,
        cmd: &str,
        timeout: Duration,
        done: impl FnMut(&str) -> bool,
    ) -> Result<String> {
        let offset = self.log_len();
        self.command(cmd)?;
        self.wait_for_log_since(offset, &format!("the answer to `{cmd}`"), timeout, done)
    }

    /// `start`: begin forwarding.
    pub fn start(&mut self) -> Result<()> {
        self.command_wait("start", Duration::from_secs(5), |t| {
            t.contains("packet forwarding - ports=")
        })
        .map(|_| ())
    }

    /// `start tx_first`: send one burst per forwarding stream, then forward. Seeds a
    /// closed `mac`/`io` loop through a switch.
    pub fn start_tx_first(&mut self) -> Result<()> {
        self.command_wait("start tx_first", Duration::from_secs(5), |t| {
            t.contains("packet forwarding - ports=")
        })
        .map(|_| ())
    }

    /// `stop`: stop forwarding and wait for testpmd's "Done.".
    pub fn stop(&mut self) -> Result<()> {
        self.command_wait("stop", Duration::from_secs(5), |t| t.contains("Done."))
            .map(|_| ())
    }

    /// `clear port stats all`.
    pub fn clear_stats(&mut self) -> Result<()> {
        let n = self.nb_ports;
        self.command_wait("clear port stats all", Duration::from_secs(5), |t| {
            t.matches("statistics for port").count() >= n
        })
        .map(|_| ())
    }

    /// Whether testpmd reports the link of `port` up (`show port info`, interactive only).
    pub fn link_up(&mut self, port: u16) -> Result<bool> {
        let out = self.command_wait(
            &format!("show port info {port}"),
            Duration::from_secs(5),
            |t| t.contains("Link status:"),
        )?;
        Ok(out.contains("Link status: up"))
    }

    /// Waits until `port`'s link is up (interactive only). For virtio-user this means the
    /// vhost-user backend accepted the device; for net_vhost that a driver connected.
    pub fn wait_link_up(&mut self, port: u16, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.link_up(port)? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.fail(format!("link of port {port} not up after {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Current counters of every port. Interactive: sends `show port stats all` and parses the
    /// answer. `--stats-period`: waits for the next complete round printed after this call.
    pub fn port_stats(&mut self) -> Result<BTreeMap<u16, PortStats>> {
        let n = self.nb_ports;
        let text = match self.control {
            Control::Interactive => {
                self.command_wait("show port stats all", Duration::from_secs(5), |t| {
                    parse_port_stats_blocks(t).len() >= n
                })?
            }
            Control::StatsPeriod(period) => {
                // Skip to the start of the next round so all blocks come from one round.
                let offset = self.log_len();
                let timeout = Duration::from_secs(u64::from(period) * 2 + 5);
                let t = self.wait_for_log_since(offset, "the next stats round", timeout, |t| {
                    t.find("Port statistics =")
                        .is_some_and(|i| parse_port_stats_blocks(&t[i..]).len() >= n)
                })?;
                let i = t.find("Port statistics =").unwrap_or(0);
                t[i..].to_owned()
            }
        };
        let stats: BTreeMap<u16, PortStats> = parse_port_stats_blocks(&text)
            .into_iter()
            .take(n)
            .map(|s| (s.port, s))
            .collect();
        if stats.len() < n {
            return Err(self.fail(format!("stats for {} of {n} ports", stats.len())));
        }
        Ok(stats)
    }

    /// Polls [`Self::port_stats`] until two reads `interval` apart are identical (forwarding
    /// drained) or `timeout` passes; returns the last read.
    pub fn settled_port_stats(
        &mut self,
        interval: Duration,
        timeout: Duration,
    ) -> Result<BTreeMap<u16, PortStats>> {
        let mut prev = self.port_stats()?;
        wait_until("port counters to settle", timeout, Duration::ZERO, || {
            std::thread::sleep(interval);
            let now = self.port_stats()?;
            let same = strip_rates(&now) == strip_rates(&prev);
            prev = now;
            Ok(same.then(|| prev.clone()))
        })
    }

    /// Stops testpmd: `quit`-like SIGINT, SIGKILL after the stop timeout; removes the hugepage
    /// files and runtime directory of its file prefix. Returns the exit status.
    pub fn shutdown(mut self) -> Result<ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<ExitStatus> {
        let status = match self.try_wait() {
            Some(st) => st,
            None => {
                let pid = self.child.id() as libc::pid_t;
                let start = Instant::now();
                let deadline = start + self.stop_timeout;
                let mut sigints = 0u32;
                loop {
                    // A SIGINT that lands during EAL init only interrupts what init was doing
                    // (e.g. a server-mode virtio-user accept()) and testpmd goes on, so repeat
                    // it every 500 ms; closing stdin also ends an interactive prompt.
                    if start.elapsed() >= Duration::from_millis(500) * sigints {
                        // SAFETY: `pid` is our own child and not yet reaped (try_wait saw it
                        // running), so the PID cannot have been reused by another process.
                        unsafe { libc::kill(pid, libc::SIGINT) };
                        sigints += 1;
                        if sigints == 2 {
                            self.stdin = None;
                        }
                    }
                    if let Some(st) = self.try_wait() {
                        break st;
                    }
                    if Instant::now() >= deadline {
                        // Child::kill sends SIGKILL to this child only.
                        let _ = self.child.kill();
                        let st = self.child.wait()?;
                        self.exited = Some(st);
                        break st;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        self.stdin = None;
        self.cleanup_prefix();
        Ok(status)
    }

    /// DPDK leaves `<hugetlbfs>/<prefix>map_*` and `/var/run/dpdk/<prefix>` behind after
    /// exit (and always after SIGKILL); the prefix is ours alone, so remove them.
    fn cleanup_prefix(&self) {
        let Some(prefix) = &self.file_prefix else {
            return;
        };
        for mnt in hugetlbfs_mounts() {
            if let Ok(entries) = std::fs::read_dir(&mnt) {
                for e in entries.flatten() {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    if name
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|r| r.starts_with("map_"))
                    {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(prefix));
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!(
                "stopping testpmd `{}` (pid {}): {e:#}",
                self.name,
                self.child.id()
            );
        }
        if std::env::var_os("HEDDLE_KEEP_LOGS").is_some() {
            let keep = std::env::temp_dir().join(format!(
                "heddle-testpmd-{}-{}.log",
                self.name,
                self.child.id()
            ));
            if std::fs::copy(&self.log_path, &keep).is_ok() {
                eprintln!("testpmd `{}` log kept at {}", self.name, keep.display());
            }
        }
    }
}

fn strip_rates(s: &BTreeMap<u16, PortStats>) -> Vec<PortStats> {
    s.values()
        .map(|p| PortStats {
            rx_pps: None,
            tx_pps: None,
            ..*p
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_for_vhost_switch() {
        let b = TestpmdBuilder::new("sw")
            .cpu(1)
            .vhost("/tmp/a.sock", false)
            .vhost("/tmp/b.sock", true)
            .auto_start(true);
        let a = b.args("pfx").join(" ");
        assert_eq!(
            a,
            "--lcores 0@1,1@1 --main-lcore 0 --file-prefix pfx -m 256 --no-pci --single-file-segments \
             --vdev net_vhost0,iface=/tmp/a.sock,queues=1,client=0 \
             --vdev net_vhost1,iface=/tmp/b.sock,queues=1,client=1 \
             -- -i --forward-mode=io --nb-cores=1 --total-num-mbufs=16384 --auto-start"
        );
    }

    #[test]
    fn command_line_for_virtio_user_generator() {
        let b = TestpmdBuilder::new("gen")
            .virtio_user("/s/a", "02:00:00:00:00:01", false)
            .virtio_user("/s/b", "02:00:00:00:00:02", true)
            .forward_mode(ForwardMode::TxOnly)
            .control(Control::StatsPeriod(1))
            .eth_peer(0, "02:00:00:00:00:02")
            .txpkts("64")
            .in_memory(true)
            .tx_first(true);
        let a = b.args("unused").join(" ");
        assert!(a.contains("--in-memory"));
        assert!(!a.contains("--file-prefix"));
        assert!(a.contains(
            "--vdev net_virtio_user0,path=/s/a,mac=02:00:00:00:00:01,queues=1,server=0 \
             --vdev net_virtio_user1,path=/s/b,mac=02:00:00:00:00:02,queues=1,server=1"
        ));
        assert!(a.ends_with(
            "-- --stats-period=1 --forward-mode=txonly --nb-cores=1 --total-num-mbufs=16384 \
             --txpkts=64 --eth-peer=0,02:00:00:00:00:02 --auto-start --tx-first"
        ));
    }

    #[test]
    fn interactive_tx_first_is_rejected() {
        let err = TestpmdBuilder::new("x")
            .tx_first(true)
            .binary("/bin/true")
            .spawn()
            .unwrap_err();
        assert!(err.to_string().contains("start_tx_first"));
    }
}
