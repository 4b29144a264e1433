//! Runs the real `heddle-switch` binary for a test: a config in a temporary directory, the
//! control socket and state directory inside it, a client, and a clean stop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use heddle_api::Client;

use crate::env::free_file_prefix;

/// Path of a workspace binary built by `cargo build --bins` (debug profile unless
/// `HEDDLE_PROFILE=release`), or as `$HEDDLE_BIN_DIR/<name>`.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let dir = match std::env::var_os("HEDDLE_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            let profile = std::env::var("HEDDLE_PROFILE").unwrap_or_else(|_| "debug".into());
            target.join(profile)
        }
    };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build it first with `cargo build --workspace --bins` (deploy/test.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// Builds the YAML config of a test switch: control on CPU 0, one PMD worker on CPU 1,
/// 256 MiB of 2 MiB hugepages, and the given `ports:` YAML list (may be empty).
pub fn config_yaml(dir: &Path, file_prefix: &str, ports_yaml: &str) -> String {
    format!(
        "cores: {{control: 0, pmd: [1]}}\n\
         memory: {{socket_mem_mb: [256], page_size: 2M, reserve: true, file_prefix: {file_prefix}}}\n\
         mbufs: {{count: 8192, cache: 128, rx_ring: 512, tx_ring: 512}}\n\
         api: {{socket: {}}}\n\
         state_dir: {}\n\
         ports:\n{ports_yaml}\n",
        dir.join("switch.sock").display(),
        dir.join("state").display(),
    )
}

/// A running heddle-switch, stopped (SIGTERM, then SIGKILL) on drop.
pub struct SwitchProcess {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
}

impl SwitchProcess {
    /// Writes `yaml` to `dir/switch.yaml` and starts the daemon on it; waits until its API
    /// answers. On failure the error carries the daemon's log.
    pub fn start(dir: &Path, yaml: &str) -> Result<SwitchProcess> {
        let cfg = dir.join("switch.yaml");
        std::fs::write(&cfg, yaml)?;
        let log = dir.join(format!(
            "switch-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(workspace_binary("heddle-switch")?)
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning heddle-switch")?;
        let mut sw = SwitchProcess {
            child: Some(child),
            dir: dir.to_owned(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if sw.client().health().is_ok() {
                return Ok(sw);
            }
            if let Some(st) = sw.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "heddle-switch exited ({st}) before its API answered:\n{}",
                    sw.log()
                );
            }
            if Instant::now() > deadline {
                bail!("heddle-switch API did not answer in 20 s:\n{}", sw.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A fresh config for `ports_yaml` in `dir`, started.
    pub fn start_with_ports(dir: &Path, ports_yaml: &str) -> Result<SwitchProcess> {
        let prefix = free_file_prefix("heddle-sw");
        Self::start(dir, &config_yaml(dir, &prefix, ports_yaml))
    }

    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("switch.sock")
    }

    /// A client on the control socket.
    pub fn client(&self) -> Client {
        Client::new(self.socket()).with_timeout(Duration::from_secs(10))
    }

    /// The names of the switch's ports, in the daemon's order.
    pub fn port_names(&self) -> Result<Vec<String>> {
        Ok(self
            .client()
            .ports()?
            .into_iter()
            .map(|p| p.spec.name)
            .collect())
    }

    /// The daemon's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the daemon with SIGKILL (a crash: nothing is cleaned up) and reaps it.
    pub fn kill9(&mut self) -> Result<()> {
        let Some(child) = self.child.take() else {
            bail!("heddle-switch already stopped");
        };
        crate::process::kill9(child)
    }

    /// Sends SIGTERM and waits (10 s at most) for a clean exit.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let Some(child) = self.child.take() else {
            bail!("heddle-switch already stopped");
        };
        crate::process::terminate(child, "heddle-switch", || self.log())
    }
}

impl Drop for SwitchProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// Runs `heddle-switch --config <yaml in dir>` expecting it to refuse to start; returns the
/// exit status and everything it printed. Fails if it is still running after 20 s.
pub fn run_expect_failure(dir: &Path, yaml: &str) -> Result<(ExitStatus, String)> {
    let cfg = dir.join("bad.yaml");
    std::fs::write(&cfg, yaml)?;
    run_with_config(&cfg)
}

/// Runs `heddle-switch --config <path>` to completion (20 s at most).
pub fn run_with_config(path: &Path) -> Result<(ExitStatus, String)> {
    let mut child = Command::new(workspace_binary("heddle-switch")?)
        .arg("--config")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait()?.is_some() {
            let out = child.wait_with_output()?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return Ok((out.status, text));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("heddle-switch kept running with a config it should refuse");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A generator with two virtio-user ports (`a` and `b`, each `(socket, MAC)`) in mac mode,
/// each port addressing frames to the other: spawned on `cpu` with `--txpkts` `size`, ready
/// and with both links up.
pub fn mac_pair_generator(
    name: &str,
    cpu: usize,
    a: (&Path, &str),
    b: (&Path, &str),
    size: u32,
) -> Result<crate::Testpmd> {
    let mut gen = crate::Testpmd::builder(name)
        .cpu(cpu)
        .virtio_user(a.0, a.1, false)
        .virtio_user(b.0, b.1, false)
        .forward_mode(crate::ForwardMode::Mac)
        .eth_peer(0, b.1)
        .eth_peer(1, a.1)
        .txpkts(&size.to_string())
        .spawn()?;
    gen.wait_ready(Duration::from_secs(20))?;
    gen.wait_link_up(0, Duration::from_secs(10))?;
    gen.wait_link_up(1, Duration::from_secs(10))?;
    Ok(gen)
}

/// Starts the generator's loop (`start tx_first`), waits until both ports received more
/// than `min_rx` frames, stops it, and returns its settled port counters.
pub fn run_loop(
    gen: &mut crate::Testpmd,
    min_rx: u64,
    timeout: Duration,
) -> Result<std::collections::BTreeMap<u16, crate::PortStats>> {
    gen.start_tx_first()?;
    crate::wait_until(
        "traffic both ways through the switch",
        timeout,
        Duration::from_millis(100),
        || {
            let s = gen.port_stats()?;
            Ok((s[&0].rx_packets > min_rx && s[&1].rx_packets > min_rx).then_some(()))
        },
    )?;
    gen.stop()?;
    gen.settled_port_stats(Duration::from_millis(300), Duration::from_secs(5))
}
