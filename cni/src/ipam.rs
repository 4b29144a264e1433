//! Delegated IPAM: runs the plugin named by `ipam.type` from `CNI_PATH` (e.g. `host-local`)
//! with the same environment and the network config on stdin, as the spec prescribes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use crate::error::{code, CniError};
use crate::result::CniResult;

/// The attachment-level environment an IPAM call gets.
#[derive(Debug, Clone)]
pub struct IpamCall<'a> {
    /// `ADD`, `DEL`, `CHECK` or `GC`.
    pub command: &'a str,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_NETNS` (may be empty for DEL).
    pub netns: Option<&'a Path>,
    /// `CNI_PATH` directories.
    pub path: &'a [PathBuf],
}

/// Finds `plugin` in the `CNI_PATH` directories.
pub fn find_plugin(plugin: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    path.iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::IPAM,
                format!(
                    "IPAM plugin {plugin:?} not found in CNI_PATH: install it (Debian: containernetworking-plugins puts host-local in /usr/lib/cni)"
                ),
                format!("searched {path:?}"),
            )
        })
}

/// The version to speak with a delegate: `ours` when it supports it, else the newest version
/// both support that is older than `ours` (Debian 12's host-local stops at 1.0.0).
pub fn common_version(ours: &str, theirs: &[String]) -> Option<String> {
    let key = |v: &str| -> Vec<u32> { v.split('.').filter_map(|p| p.parse().ok()).collect() };
    if theirs.iter().any(|t| t == ours) {
        return Some(ours.to_owned());
    }
    crate::config::SUPPORTED_VERSIONS
        .iter()
        .filter(|v| key(v) <= key(ours) && theirs.iter().any(|t| t == *v))
        .max_by_key(|v| key(v))
        .map(|v| (*v).to_owned())
}

/// Asks the plugin at `exe` which versions it speaks (`VERSION`).
fn supported_versions(exe: &Path, ours: &str) -> Result<Vec<String>, CniError> {
    let fail = |e: String| {
        CniError::new(
            code::IPAM,
            format!("VERSION of {} failed", exe.display()),
            e,
        )
    };
    let mut child = Process::new(exe)
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = write!(stdin, "{{\"cniVersion\":\"{ours}\"}}");
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| fail(e.to_string()))?;
    Ok(v["supportedVersions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect())
}

/// Runs the IPAM plugin named in `conf["ipam"]["type"]`; returns its result for ADD. The
/// config's `cniVersion` is lowered to the newest version the plugin speaks.
pub fn run(conf: &Value, call: &IpamCall<'_>) -> Result<Option<CniResult>, CniError> {
    let plugin = conf["ipam"]["type"].as_str().unwrap_or_default();
    let exe = find_plugin(plugin, call.path)?;
    let ours = conf["cniVersion"].as_str().unwrap_or("1.1.0");
    let theirs = supported_versions(&exe, ours)?;
    let version = common_version(ours, &theirs).ok_or_else(|| {
        CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("IPAM plugin {plugin} speaks no CNI version heddle-cni can use with {ours}"),
            format!("it supports {theirs:?}"),
        )
    })?;
    if matches!(call.command, "GC" | "STATUS") && version != "1.1.0" {
        // GC and STATUS came with CNI 1.1.0: an older delegate has nothing to say.
        return Ok(None);
    }
    let mut conf = conf.clone();
    conf["cniVersion"] = Value::from(version);
    let conf = &conf;
    let cni_path = std::env::join_paths(call.path).unwrap_or_default();
    let mut child = Process::new(&exe)
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_IFNAME", call.ifname)
        .env(
            "CNI_NETNS",
            call.netns
                .map(|p| p.as_os_str().to_owned())
                .unwrap_or_default(),
        )
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            CniError::new(
                code::IPAM,
                format!("cannot run the IPAM plugin {}", exe.display()),
                e.to_string(),
            )
        })?;
    let body = serde_json::to_vec(conf).expect("a Value always serialises");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body);
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(
            code::IPAM,
            format!("waiting for {}", exe.display()),
            e.to_string(),
        )
    })?;
    if !out.status.success() {
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        return Err(CniError::new(
            code::IPAM,
            format!(
                "IPAM plugin {plugin} {} failed: {}",
                call.command,
                reply["msg"].as_str().unwrap_or("no message")
            ),
            format!(
                "code {} {} {}",
                reply["code"],
                reply["details"].as_str().unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    if call.command != "ADD" {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        CniError::new(
            code::IPAM,
            format!("IPAM plugin {plugin} printed something that is not a CNI result"),
            e.to_string(),
        )
    })?;
    CniResult::from_value(&v).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_negotiation_with_a_delegate() {
        let debian = ["0.3.1", "0.4.0", "1.0.0"].map(String::from);
        assert_eq!(common_version("1.1.0", &debian).as_deref(), Some("1.0.0"));
        assert_eq!(common_version("0.4.0", &debian).as_deref(), Some("0.4.0"));
        assert_eq!(common_version("1.1.0", &["0.2.0".to_owned()]), None);
    }

    #[test]
    fn missing_plugin_names_the_package() {
        let e = find_plugin("host-local", &[PathBuf::from("/nonexistent")]).unwrap_err();
        assert_eq!(e.code, code::IPAM);
        assert!(e.msg.contains("containernetworking-plugins"));
    }
}
