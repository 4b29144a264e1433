//! Runs the real `heddle-cni` binary as a container runtime would: `CNI_*` environment, the
//! network config on stdin, the JSON reply on stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::switch::workspace_binary;

/// Where Debian's containernetworking-plugins installs `host-local`, `bridge`, ...
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// Fails with the package to install unless Debian's reference plugin `name` is there.
pub fn require_reference_plugin(name: &str) -> Result<PathBuf> {
    let p = Path::new(DEBIAN_CNI_DIR).join(name);
    if !p.is_file() {
        bail!(
            "{} is missing: install the Debian package containernetworking-plugins (apt-get install containernetworking-plugins)",
            p.display()
        );
    }
    Ok(p)
}

/// One CNI call's outcome.
#[derive(Debug, Clone)]
pub struct CniReply {
    /// Exit status was 0.
    pub ok: bool,
    /// stdout parsed as JSON (`Null` when empty).
    pub json: Value,
    /// stderr.
    pub stderr: String,
    /// Wall time of the call.
    pub elapsed: Duration,
}

impl CniReply {
    /// The error code of a failed call.
    pub fn code(&self) -> Option<u64> {
        self.json["code"].as_u64()
    }
}

/// A CNI plugin binary and the attachment-independent environment.
#[derive(Debug, Clone)]
pub struct CniPlugin {
    /// The plugin binary.
    pub binary: PathBuf,
    /// `CNI_PATH`.
    pub cni_path: String,
    /// Extra environment for every call (`HEDDLE_SYSFS_ROOT`, `PCIDEVICE_*`).
    pub env: Vec<(String, String)>,
}

/// A CNI plugin directory holding `heddle-ipam`, a symlink to the workspace's
/// `heddle-manager`, as a node installs it next to heddle-cni: `cni-plugins/` beside the
/// binaries. The link is replaced by rename, so tests may call this at the same time.
pub fn heddle_ipam_dir() -> Result<PathBuf> {
    let manager = workspace_binary("heddle-manager")?;
    let dir = manager
        .parent()
        .context("heddle-manager has a directory")?
        .join("cni-plugins");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let link = dir.join("heddle-ipam");
    if std::fs::read_link(&link).ok().as_deref() != Some(manager.as_path()) {
        let tmp = dir.join(format!(".heddle-ipam.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&manager, &tmp)
            .with_context(|| format!("linking {}", tmp.display()))?;
        std::fs::rename(&tmp, &link).with_context(|| format!("installing {}", link.display()))?;
    }
    Ok(dir)
}

impl CniPlugin {
    /// The workspace's `heddle-cni` (found like `heddle-switch`: `HEDDLE_BIN_DIR` or target/).
    /// `CNI_PATH` is [`heddle_ipam_dir`] (when heddle-manager is built) then Debian's plugins.
    pub fn heddle() -> Result<CniPlugin> {
        let cni_path = match heddle_ipam_dir() {
            Ok(d) => format!("{}:{DEBIAN_CNI_DIR}", d.display()),
            Err(_) => DEBIAN_CNI_DIR.into(),
        };
        Ok(CniPlugin {
            binary: workspace_binary("heddle-cni")?,
            cni_path,
            env: vec![],
        })
    }

    /// `heddle-ipam` run directly, through its symlink (argv[0] picks the plugin).
    pub fn heddle_ipam() -> Result<CniPlugin> {
        let dir = heddle_ipam_dir()?;
        Ok(CniPlugin {
            binary: dir.join("heddle-ipam"),
            cni_path: format!("{}:{DEBIAN_CNI_DIR}", dir.display()),
            env: vec![],
        })
    }

    /// A reference plugin from Debian's containernetworking-plugins.
    pub fn reference(name: &str) -> Result<CniPlugin> {
        Ok(CniPlugin {
            binary: require_reference_plugin(name)?,
            cni_path: DEBIAN_CNI_DIR.into(),
            env: vec![],
        })
    }

    /// The same plugin with `key=value` added to the environment of every call.
    pub fn with_env(mut self, key: &str, value: &str) -> CniPlugin {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs `command` for `(container_id, ifname)` in `netns` (may be empty) with `conf` on
    /// stdin.
    pub fn call(
        &self,
        command: &str,
        container_id: &str,
        ifname: &str,
        netns: &str,
        conf: &Value,
    ) -> Result<CniReply> {
        let start = Instant::now();
        let mut child = Command::new(&self.binary)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_IFNAME", ifname)
            .env("CNI_NETNS", netns)
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=test;K8S_POD_NAME=pod",
            )
            .env("CNI_PATH", &self.cni_path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(&serde_json::to_vec(conf)?)?;
        let out = child.wait_with_output()?;
        let elapsed = start.elapsed();
        let text = String::from_utf8_lossy(&out.stdout);
        let json = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| {
                format!("{command} printed something that is not JSON on stdout: {text:?}")
            })?
        };
        Ok(CniReply {
            ok: out.status.success(),
            json,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed,
        })
    }

    /// Like [`CniPlugin::call`] but fails unless the plugin succeeded.
    pub fn ok(
        &self,
        command: &str,
        container_id: &str,
        ifname: &str,
        netns: &str,
        conf: &Value,
    ) -> Result<Value> {
        let r = self.call(command, container_id, ifname, netns, conf)?;
        if !r.ok {
            bail!(
                "{command} {container_id}/{ifname} failed: {} {}",
                r.json,
                r.stderr
            );
        }
        Ok(r.json)
    }
}

/// `p`-th percentile (0-100) of `samples` in milliseconds.
pub fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx.min(v.len() - 1)]
}
