//! The device plugin's YAML config (`heddle-manager device-plugin --config F`), rendered by
//! the chart from the values' `devicePlugin:` per node group:
//!
//! ```yaml
//! kubeletDir: /var/lib/kubelet/device-plugins
//! deviceRoot: /run/heddle/devices
//! switchSocket: /run/heddle/switch.sock
//! resources:
//!   - {name: heddle.dev/vhost-user, kind: vhost-user, count: 64}
//!   - {name: heddle.dev/memif, kind: memif, count: 64}
//! vfPools:
//!   - resourceName: heddle.dev/sriov_n3
//!     deviceType: netdevice
//!     selectors: {vendors: ["8086"], pfNames: ["ens1f0#0-7"]}
//! ```
//!
//! Keys are camelCase; an unknown key is refused. [`DevicePluginConfig::validate`] checks
//! everything that can be checked without the host, each problem a sentence naming the fix.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use heddle_cni::devices::DeviceKind;
use serde::{Deserialize, Serialize};

use super::vf_pool::{self, VfPool};

/// The longest path a Unix socket can have (`sun_path` holds 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The most devices one socket resource may advertise: each becomes a switch port, and the
/// switch holds at most 256 ports.
pub const MAX_SOCKET_DEVICES: u32 = 256;

/// Everything `heddle-manager device-plugin` reads at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DevicePluginConfig {
    /// The kubelet's device-plugins directory: its `kubelet.sock` and the plugin's sockets.
    #[serde(default = "default_kubelet_dir")]
    pub kubelet_dir: PathBuf,
    /// Host directory holding one directory per vhost-user / memif device.
    #[serde(default = "default_device_root")]
    pub device_root: PathBuf,
    /// The switch's control socket (health, port limit, PMD cores).
    #[serde(default = "default_switch_socket")]
    pub switch_socket: PathBuf,
    /// vhost-user and memif resources.
    #[serde(default)]
    pub resources: Vec<SocketResourceConfig>,
    /// SR-IOV VF pools.
    #[serde(default)]
    pub vf_pools: Vec<VfPool>,
}

/// One vhost-user or memif resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SocketResourceConfig {
    /// The extended resource pods request, e.g. `heddle.dev/vhost-user`.
    pub name: String,
    /// `vhost-user` or `memif`.
    pub kind: SocketKind,
    /// How many devices to advertise (`<kind>-0` .. `<kind>-<count-1>`).
    pub count: u32,
}

/// The kind of a socket resource, as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketKind {
    /// vhost-user sockets.
    #[serde(rename = "vhost-user")]
    VhostUser,
    /// memif sockets.
    #[serde(rename = "memif")]
    Memif,
}

impl SocketKind {
    /// The device directory contract's kind.
    pub fn device_kind(self) -> DeviceKind {
        match self {
            SocketKind::VhostUser => DeviceKind::VhostUser,
            SocketKind::Memif => DeviceKind::Memif,
        }
    }
}

fn default_kubelet_dir() -> PathBuf {
    PathBuf::from(heddle_kubelet_api::DEVICE_PLUGIN_DIR)
}

fn default_device_root() -> PathBuf {
    PathBuf::from(heddle_cni::devices::DEFAULT_DEVICE_ROOT)
}

fn default_switch_socket() -> PathBuf {
    PathBuf::from(heddle_api::DEFAULT_SOCKET)
}

/// A config that cannot be used; the sentence names the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read device-plugin config {path}: {source}: pass --config with a readable YAML file")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The YAML does not fit the schema.
    #[error("device-plugin config {path} is not valid: {message}")]
    Parse {
        /// File.
        path: String,
        /// serde's sentence, with line and column.
        message: String,
    },
    /// A value is out of range or inconsistent; one sentence per problem.
    #[error("device-plugin config {path}: {}", problems.join("; "))]
    Invalid {
        /// File.
        path: String,
        /// What is wrong.
        problems: Vec<String>,
    },
}

impl DevicePluginConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<DevicePluginConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates YAML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<DevicePluginConfig, ConfigError> {
        let cfg: DevicePluginConfig =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
                path: origin.to_owned(),
                message: e.to_string(),
            })?;
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: origin.to_owned(),
                problems,
            });
        }
        Ok(cfg)
    }

    /// Every problem of the config, one sentence each (empty when it is usable).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, path) in [
            ("kubeletDir", &self.kubelet_dir),
            ("deviceRoot", &self.device_root),
            ("switchSocket", &self.switch_socket),
        ] {
            if !path.is_absolute() {
                out.push(format!(
                    "{key} {:?} is not an absolute path: write it from / (e.g. {})",
                    path,
                    match key {
                        "kubeletDir" => heddle_kubelet_api::DEVICE_PLUGIN_DIR,
                        "deviceRoot" => heddle_cni::devices::DEFAULT_DEVICE_ROOT,
                        _ => heddle_api::DEFAULT_SOCKET,
                    }
                ));
            }
        }
        if self.resources.is_empty() && self.vf_pools.is_empty() {
            out.push(
                "neither resources nor vfPools lists anything: add a resource such as {name: heddle.dev/vhost-user, kind: vhost-user, count: 64}"
                    .into(),
            );
        }
        let mut names = BTreeSet::new();
        let mut kinds = BTreeSet::new();
        for (i, r) in self.resources.iter().enumerate() {
            if let Err(e) = vf_pool::check_resource_name(&r.name) {
                out.push(format!(
                    "resources[{i}]: {}",
                    e.replacen("resourceName", "name", 1)
                ));
            }
            if !names.insert(r.name.as_str()) {
                out.push(format!(
                    "resources[{i}]: {:?} is named twice: give each resource its own name",
                    r.name
                ));
            }
            if !kinds.insert(r.kind.device_kind()) {
                out.push(format!(
                    "resources[{i}]: a second {} resource: device ids are {}-<n> per kind, so list one {} resource and raise its count",
                    r.kind.device_kind().as_str(),
                    r.kind.device_kind().as_str(),
                    r.kind.device_kind().as_str()
                ));
            }
            if r.count == 0 || r.count > MAX_SOCKET_DEVICES {
                out.push(format!(
                    "resources[{i}] ({:?}): count {} is out of range: use 1 to {MAX_SOCKET_DEVICES} (the switch holds at most {MAX_SOCKET_DEVICES} ports)",
                    r.name, r.count
                ));
            }
            let socket = self.plugin_socket(&r.name);
            if socket.as_os_str().len() > MAX_SOCKET_PATH {
                out.push(format!(
                    "resources[{i}]: the plugin socket {:?} is over the {MAX_SOCKET_PATH}-byte limit of a Unix socket path: choose a shorter kubeletDir or name",
                    socket
                ));
            }
        }
        if let Err(e) = vf_pool::validate_pools(&self.vf_pools) {
            out.push(format!("vfPools: {e}"));
        }
        for (i, p) in self.vf_pools.iter().enumerate() {
            if names.contains(p.resource_name.as_str()) {
                out.push(format!(
                    "vfPools[{i}]: resourceName {:?} is also a socket resource's name: give each resource its own name",
                    p.resource_name
                ));
            }
            let socket = self.plugin_socket(&p.resource_name);
            if socket.as_os_str().len() > MAX_SOCKET_PATH {
                out.push(format!(
                    "vfPools[{i}]: the plugin socket {:?} is over the {MAX_SOCKET_PATH}-byte limit of a Unix socket path: choose a shorter kubeletDir or resourceName",
                    socket
                ));
            }
        }
        out
    }

    /// The socket the plugin serves `resource` on: `<kubeletDir>/heddle-<name>.sock` with
    /// `/` replaced by `_` (`heddle-heddle.dev_vhost-user.sock`).
    pub fn plugin_socket(&self, resource: &str) -> PathBuf {
        self.kubelet_dir.join(endpoint_name(resource))
    }

    /// The kubelet's registration socket.
    pub fn kubelet_socket(&self) -> PathBuf {
        self.kubelet_dir
            .join(heddle_kubelet_api::KUBELET_SOCKET_NAME)
    }
}

/// The socket file name (the `endpoint` of `Register`) for a resource.
pub fn endpoint_name(resource: &str) -> String {
    format!("heddle-{}.sock", resource.replace('/', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
kubeletDir: /var/lib/kubelet/device-plugins
deviceRoot: /run/heddle/devices
switchSocket: /run/heddle/switch.sock
resources:
  - {name: heddle.dev/vhost-user, kind: vhost-user, count: 64}
  - {name: heddle.dev/memif, kind: memif, count: 64}
vfPools:
  - resourceName: heddle.dev/sriov_n3
    deviceType: netdevice
    selectors: {vendors: ["8086"], devices: ["154c"], drivers: ["iavf"], pfNames: ["ens1f0#0-7"], rootDevices: ["0000:3b:00.0"]}
"#;

    #[test]
    fn the_documented_config_parses() {
        let cfg = DevicePluginConfig::parse(FULL, "t").unwrap();
        assert_eq!(cfg.resources.len(), 2);
        assert_eq!(cfg.resources[0].kind, SocketKind::VhostUser);
        assert_eq!(cfg.resources[1].count, 64);
        assert_eq!(cfg.vf_pools[0].resource_name, "heddle.dev/sriov_n3");
        assert_eq!(
            cfg.plugin_socket("heddle.dev/vhost-user"),
            PathBuf::from("/var/lib/kubelet/device-plugins/heddle-heddle.dev_vhost-user.sock")
        );
    }

    #[test]
    fn defaults_fill_the_paths() {
        let cfg = DevicePluginConfig::parse(
            "resources: [{name: heddle.dev/memif, kind: memif, count: 2}]",
            "t",
        )
        .unwrap();
        assert_eq!(
            cfg.kubelet_dir,
            Path::new("/var/lib/kubelet/device-plugins")
        );
        assert_eq!(cfg.device_root, Path::new("/run/heddle/devices"));
        assert_eq!(cfg.switch_socket, Path::new("/run/heddle/switch.sock"));
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused() {
        let e = DevicePluginConfig::parse(
            "resources: [{name: heddle.dev/memif, kind: memif, count: 2}]\nkubeletdir: /x",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `kubeletdir`"), "{e}");
        let e = DevicePluginConfig::parse(
            "resources: [{name: heddle.dev/x, kind: vhost, count: 2}]",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown variant `vhost`"), "{e}");
    }

    #[test]
    fn bad_values_are_each_named_with_the_fix() {
        let e = DevicePluginConfig::parse(
            r#"
kubeletDir: relative/dir
resources:
  - {name: vhost-user, kind: vhost-user, count: 0}
  - {name: heddle.dev/v2, kind: vhost-user, count: 300}
  - {name: heddle.dev/v2, kind: memif, count: 1}
"#,
            "cfg.yaml",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "kubeletDir \"relative/dir\" is not an absolute path",
            "resources[0]: name \"vhost-user\" needs a domain",
            "count 0 is out of range: use 1 to 256",
            "resources[1]: a second vhost-user resource",
            "count 300 is out of range",
            "resources[2]: \"heddle.dev/v2\" is named twice",
        ] {
            assert!(e.contains(want), "missing {want:?} in {e}");
        }
        let e = DevicePluginConfig::parse("{}", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither resources nor vfPools"), "{e}");
        let e = DevicePluginConfig::parse(
            "resources: [{name: heddle.dev/a, kind: memif, count: 1}]\nvfPools: [{resourceName: heddle.dev/a}]",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("also a socket resource's name"), "{e}");
        let long = format!(
            "kubeletDir: /{}\nresources: [{{name: heddle.dev/a, kind: memif, count: 1}}]",
            "d".repeat(100)
        );
        let e = DevicePluginConfig::parse(&long, "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("107-byte limit"), "{e}");
    }

    /// Found by the `device_plugin_config` fuzz target: a kubeletDir holding newlines (a YAML
    /// block scalar) was printed raw, so one problem spanned lines. Paths and names are
    /// quoted now (reproducer: `fuzz/corpus/device_plugin_config/kubelet-dir-with-newlines.yaml`).
    #[test]
    fn each_problem_is_one_line_when_values_hold_newlines() {
        let yaml = "kubeletDir: \"a\\nb\"\nresources:\n  - {name: \"heddle.dev/x\\ny\", kind: memif, count: 0}\n  - {name: \"heddle.dev/x\\ny\", kind: vhost-user, count: 1}\n";
        let Err(ConfigError::Invalid { problems, .. }) = DevicePluginConfig::parse(yaml, "t")
        else {
            panic!("refused as invalid");
        };
        assert!(problems.len() >= 3, "{problems:?}");
        for p in &problems {
            assert!(!p.contains('\n'), "{p:?}");
        }
        assert!(
            problems.iter().any(|p| p.contains(r#"kubeletDir "a\nb""#)),
            "{problems:?}"
        );
    }
}
