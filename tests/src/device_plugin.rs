//! Runs the real `heddle-manager device-plugin` binary for a test: a config in a temporary
//! directory, its log in a file, SIGTERM or SIGKILL to stop it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::switch::workspace_binary;

/// A device-plugin config: `kubeletDir`, `deviceRoot`, `switchSocket` and the given
/// `resources:` YAML list items (one per line, already indented).
pub fn config_yaml(
    kubelet_dir: &Path,
    device_root: &Path,
    switch_socket: &Path,
    resources_yaml: &str,
) -> String {
    format!(
        "kubeletDir: {}\ndeviceRoot: {}\nswitchSocket: {}\nresources:\n{resources_yaml}\n",
        kubelet_dir.display(),
        device_root.display(),
        switch_socket.display()
    )
}

/// A running device plugin, stopped (SIGTERM, then SIGKILL) on drop.
pub struct DevicePluginProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl DevicePluginProcess {
    /// Writes `yaml` to `dir/device-plugin.yaml` and starts the plugin on it (logging at
    /// info level to a file in `dir`). Returns at once; wait on the test kubelet for its
    /// registration.
    pub fn start(dir: &Path, yaml: &str) -> Result<DevicePluginProcess> {
        Self::start_with_args(dir, yaml, &[])
    }

    /// [`DevicePluginProcess::start`] with extra command-line arguments (e.g. `--sysfs`).
    pub fn start_with_args(dir: &Path, yaml: &str, args: &[&str]) -> Result<DevicePluginProcess> {
        let cfg = dir.join("device-plugin.yaml");
        std::fs::write(&cfg, yaml)?;
        let log = dir.join(format!(
            "device-plugin-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        ));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(workspace_binary("heddle-manager")?)
            .args(["device-plugin", "--config"])
            .arg(&cfg)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning heddle-manager device-plugin")?;
        Ok(DevicePluginProcess {
            child: Some(child),
            log,
        })
    }

    /// The plugin's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails with the log when the plugin has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(st) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            bail!("the device plugin exited ({st}):\n{}", self.log());
        }
        Ok(())
    }

    /// Kills the plugin with SIGKILL (a crash: its sockets stay behind) and reaps it.
    pub fn kill9(&mut self) -> Result<()> {
        let Some(child) = self.child.take() else {
            bail!("the device plugin already stopped");
        };
        crate::process::kill9(child)
    }

    /// Sends SIGTERM and waits (10 s at most) for a clean exit.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let Some(child) = self.child.take() else {
            bail!("the device plugin already stopped");
        };
        crate::process::terminate(child, "the device plugin", || self.log())
    }
}

impl Drop for DevicePluginProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// Runs `heddle-manager device-plugin <args> --config <path>` to completion (20 s at most):
/// the exit status and everything it printed.
pub fn run_device_plugin(args: &[&str], config: &Path) -> Result<(ExitStatus, String)> {
    let mut child = Command::new(workspace_binary("heddle-manager")?)
        .arg("device-plugin")
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait()?.is_some() {
            let out = child.wait_with_output()?;
            return Ok((
                out.status,
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("heddle-manager device-plugin {args:?} kept running for 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
