//! Rootful podman (Debian 12's 4.3, CNI backend) driving `heddle-cni` as a real container
//! runtime does. `deploy/scripts/podman-setup.sh` installs podman and builds the local image;
//! each test then gets its own `containers.conf` (via `CONTAINERS_CONF`) whose CNI config and
//! plugin directories are the test's, so nothing under /etc/containers or /etc/cni is touched.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The local busybox image podman-setup.sh builds (no registry involved).
pub const IMAGE: &str = "localhost/heddle-busybox:latest";

/// The podman config podman-setup.sh writes (CNI backend, runc, cgroupfs, file events).
pub const BASE_CONF: &str = "/etc/heddle/podman/containers.conf";

/// `deploy/scripts/podman-setup.sh` in this workspace.
pub fn setup_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/scripts/podman-setup.sh")
}

/// Runs `deploy/scripts/podman-setup.sh` (idempotent; fast when all is in place) and fails
/// with its output and name if it does not succeed.
pub fn require_podman() -> Result<()> {
    let script = setup_script();
    let out = Command::new(&script)
        .env("HEDDLE_PODMAN_CONF", BASE_CONF)
        .env("HEDDLE_PODMAN_IMAGE", IMAGE)
        .output()
        .with_context(|| format!("running {} (run it by hand as root)", script.display()))?;
    if !out.status.success() {
        bail!(
            "deploy/scripts/podman-setup.sh failed ({}); run it by hand as root and fix what it says:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// podman with a test-owned `containers.conf`.
#[derive(Debug, Clone)]
pub struct Podman {
    conf: PathBuf,
}

impl Podman {
    /// Writes `dir/containers.conf`: [`BASE_CONF`] with `network_config_dir` set to
    /// `cni_conf_dir` and `cni_plugin_dirs` to `plugin_dirs`.
    pub fn new(dir: &Path, cni_conf_dir: &Path, plugin_dirs: &[&Path]) -> Result<Podman> {
        let base = std::fs::read_to_string(BASE_CONF).with_context(|| {
            format!("reading {BASE_CONF}: run deploy/scripts/podman-setup.sh as root")
        })?;
        let dirs: Vec<String> = plugin_dirs
            .iter()
            .map(|d| format!("{:?}", d.display().to_string()))
            .collect();
        let mut replaced = 0;
        let text: Vec<String> = base
            .lines()
            .map(|l| {
                if l.starts_with("network_config_dir") {
                    replaced += 1;
                    format!(
                        "network_config_dir = {:?}",
                        cni_conf_dir.display().to_string()
                    )
                } else if l.starts_with("cni_plugin_dirs") {
                    replaced += 1;
                    format!("cni_plugin_dirs = [{}]", dirs.join(", "))
                } else {
                    l.to_owned()
                }
            })
            .collect();
        if replaced != 2 {
            bail!("{BASE_CONF} lacks network_config_dir or cni_plugin_dirs: rerun deploy/scripts/podman-setup.sh");
        }
        let conf = dir.join("containers.conf");
        std::fs::write(&conf, text.join("\n") + "\n")?;
        Ok(Podman { conf })
    }

    /// The containers.conf this podman runs with (`CONTAINERS_CONF`).
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// A `podman` command with this config.
    pub fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf);
        c
    }

    /// Runs `podman <args>`; returns its output whatever the status.
    pub fn output(&self, args: &[&str]) -> Result<Output> {
        self.command()
            .args(args)
            .output()
            .with_context(|| format!("spawning podman {args:?}"))
    }

    /// Runs `podman <args>`, fails unless it succeeds, returns stdout trimmed.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.output(args)?;
        if !out.status.success() {
            bail!(
                "podman {} failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Wall time of a successful `podman <args>`.
    pub fn time(&self, args: &[&str]) -> Result<Duration> {
        let start = Instant::now();
        self.run(args)?;
        Ok(start.elapsed())
    }

    /// The IPv4 address of `container` on `network`, from `podman inspect`.
    pub fn ip(&self, container: &str, network: &str) -> Result<String> {
        let ip = self.run(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks {network:?}).IPAddress}}}}"),
            container,
        ])?;
        if ip.is_empty() {
            bail!("podman inspect shows no IP for {container} on {network}");
        }
        Ok(ip)
    }

    /// Guards `names`: `podman rm -f -t 0` on drop (also when the test fails).
    pub fn guard(&self, names: &[String]) -> Containers {
        Containers {
            podman: self.clone(),
            names: names.to_vec(),
        }
    }
}

/// Containers removed (`podman rm -f -t 0`, which also runs CNI DEL) on drop.
#[derive(Debug)]
pub struct Containers {
    podman: Podman,
    names: Vec<String>,
}

impl Containers {
    /// Removes the containers now; fails if podman does.
    pub fn remove(&mut self) -> Result<()> {
        if self.names.is_empty() {
            return Ok(());
        }
        let mut args = vec!["rm", "-f", "-t", "0"];
        args.extend(self.names.iter().map(String::as_str));
        let r = self.podman.run(&args);
        self.names.clear();
        r.map(|_| ())
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}
