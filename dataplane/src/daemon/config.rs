//! The node daemon's YAML configuration: the same keys as the Helm chart's values.

use std::path::{Path, PathBuf};

use heddle_api::{parse_mac, PortMode, PortSpec};
use heddle_hugepages::MemoryConfig;
use serde::{Deserialize, Serialize};

use crate::switch::io::MAX_PORTS;

/// The configuration compiled into `heddle-switch`, used when no `--config` is given.
pub const DEFAULT_CONFIG: &str = include_str!("default.yaml");

/// Everything `heddle-switch` reads at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// CPU placement.
    #[serde(default)]
    pub cores: Cores,
    /// Hugepage budget.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// Mbuf pool.
    #[serde(default)]
    pub mbufs: Mbufs,
    /// Forwarding database.
    #[serde(default)]
    pub fdb: FdbConfig,
    /// Control API.
    #[serde(default)]
    pub api: ApiConfig,
    /// Where the port table is kept across restarts.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Ports created at start (the API adds more at run time).
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// The most ports the switch holds at once, uplinks and pod ports together; at most
    /// [`MAX_PORTS`] (the port table's size). The API refuses a port beyond it, and the device
    /// plugin reports its devices unhealthy while the switch is full.
    #[serde(default = "default_max_ports")]
    pub max_ports: u32,
}

fn default_max_ports() -> u32 {
    MAX_PORTS as u32
}

/// CPU placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cores {
    /// CPU for the control thread (EAL main lcore). Default: the first online CPU that is
    /// not a PMD core, or the first PMD core when there is none.
    pub control: Option<u32>,
    /// CPUs that run PMD workers, one worker each.
    pub pmd: Vec<u32>,
}

impl Default for Cores {
    fn default() -> Self {
        Cores {
            control: None,
            pmd: vec![1],
        }
    }
}

/// Mbuf pool sizing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mbufs {
    /// Mbufs in the pool.
    pub count: u32,
    /// Per-lcore cache.
    pub cache: u32,
    /// RX descriptors per queue.
    pub rx_ring: u16,
    /// TX descriptors per queue.
    pub tx_ring: u16,
}

impl Default for Mbufs {
    fn default() -> Self {
        Mbufs {
            count: 16384,
            cache: 256,
            rx_ring: 1024,
            tx_ring: 1024,
        }
    }
}

/// FDB sizing and ageing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FdbConfig {
    /// Entries the table holds.
    pub capacity: u32,
    /// Seconds a learned entry lives without traffic.
    pub ageing_seconds: u32,
}

impl Default for FdbConfig {
    fn default() -> Self {
        FdbConfig {
            capacity: 65536,
            ageing_seconds: 300,
        }
    }
}

/// Control API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Unix socket of the control API (mode 0600, root only).
    pub socket: PathBuf,
    /// Optional TCP address for Prometheus to scrape `/metrics`, e.g. `127.0.0.1:9109`.
    pub metrics_listen: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            socket: PathBuf::from(heddle_api::DEFAULT_SOCKET),
            metrics_listen: None,
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/heddle")
}

/// A configuration that cannot be used, with the fix in the sentence.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}: pass --config with a readable YAML file")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The YAML does not fit the schema.
    #[error("config {path} is not valid: {message}")]
    Parse {
        /// File.
        path: String,
        /// serde's sentence, with line and column.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),
}

impl DaemonConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates YAML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<DaemonConfig, ConfigError> {
        let cfg: DaemonConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks everything that can be checked without touching the host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cores.pmd.is_empty() {
            return Err(ConfigError::Invalid(
                "cores.pmd is empty: list at least one CPU for a PMD worker".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.cores.pmd {
            if !seen.insert(*c) {
                return Err(ConfigError::Invalid(format!(
                    "cores.pmd lists CPU {c} twice: give each PMD worker its own CPU"
                )));
            }
        }
        if self.fdb.capacity == 0 || self.fdb.capacity > 1 << 24 {
            return Err(ConfigError::Invalid(format!(
                "fdb.capacity {} is out of range: use 1 to 16777216",
                self.fdb.capacity
            )));
        }
        if self.mbufs.count < 1024 {
            return Err(ConfigError::Invalid(format!(
                "mbufs.count {} is too small: use at least 1024",
                self.mbufs.count
            )));
        }
        if self.max_ports == 0 || self.max_ports as usize > MAX_PORTS {
            return Err(ConfigError::Invalid(format!(
                "max_ports {} is out of range: use 1 to {MAX_PORTS}",
                self.max_ports
            )));
        }
        if self.ports.len() > self.max_ports as usize {
            return Err(ConfigError::Invalid(format!(
                "ports lists {} ports but max_ports is {}: raise max_ports or list fewer ports",
                self.ports.len(),
                self.max_ports
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        let mut devices = std::collections::BTreeSet::new();
        for p in &self.ports {
            validate_port(p).map_err(ConfigError::Invalid)?;
            if !names.insert(p.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "duplicate port {:?} in ports: give each port its own name",
                    p.name
                )));
            }
            let dev = crate::dpdk::EthPort::device_name(&p.devargs);
            if !devices.insert(dev) {
                return Err(ConfigError::Invalid(format!(
                    "duplicate port device {dev:?} (ports {:?}): each port needs its own DPDK device name, e.g. net_vhost0, net_vhost1",
                    p.name
                )));
            }
        }
        Ok(())
    }
}

/// Checks one port spec; the error is a sentence naming the field and the fix.
pub fn validate_port(p: &PortSpec) -> Result<(), String> {
    if p.name.is_empty() || p.name.len() > 128 || p.name.chars().any(|c| c.is_control()) {
        return Err(format!(
            "port name {:?} is not usable: use 1-128 printable characters",
            p.name
        ));
    }
    if p.devargs.trim().is_empty() {
        return Err(format!(
            "port {:?} has empty devargs: name a PCI address or a vdev such as net_vhost0,iface=/run/heddle/a.sock",
            p.name
        ));
    }
    let check = |what: &str, v: u16| {
        if (1..=4094).contains(&v) {
            Ok(())
        } else {
            Err(format!(
                "port {:?}: {what} {v} is outside 1-4094: pick a VLAN between 1 and 4094",
                p.name
            ))
        }
    };
    match &p.mode {
        PortMode::Access { vlan } => check("vlan", *vlan)?,
        PortMode::Trunk { vlans, native_vlan } => {
            if vlans.is_empty() {
                return Err(format!(
                    "port {:?}: a trunk needs at least one VLAN in vlans",
                    p.name
                ));
            }
            for r in vlans {
                let (a, b) = r.bounds();
                check("vlans entry", a)?;
                check("vlans entry", b)?;
                if a > b {
                    return Err(format!(
                        "port {:?}: VLAN range {a}-{b} runs backwards: write it low-high",
                        p.name
                    ));
                }
            }
            if let Some(n) = native_vlan {
                check("native_vlan", *n)?;
            }
        }
    }
    if let Some(m) = &p.mac {
        if parse_mac(m).is_none() {
            return Err(format!(
                "port {:?}: mac {m:?} is not a MAC address like 02:00:00:00:00:01",
                p.name
            ));
        }
    }
    if p.queues == Some(0) || p.queues.is_some_and(|q| q > 64) {
        return Err(format!("port {:?}: queues must be 1-64", p.name));
    }
    if crate::vhost::port::VhostConfig::is_native(&p.devargs) {
        crate::vhost::port::VhostConfig::parse(&p.devargs, p.queues)
            .map_err(|e| format!("port {:?}: {e}", p.name))?;
    }
    Ok(())
}

/// CPUs that are online, from a sysfs list such as `0-3,8`.
pub fn parse_cpu_list(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|s| !s.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(a) = part.parse() {
                    out.push(a);
                }
            }
        }
    }
    out
}

/// Host CPUs this process may run on: online and in its affinity mask.
pub fn usable_cpus() -> Vec<u32> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map(|t| parse_cpu_list(&t))
        .unwrap_or_default();
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it for pid 0
    // (this thread) and we pass its exact size.
    let allowed = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return online;
        }
        set
    };
    online
        .into_iter()
        .filter(|&c| {
            // SAFETY: `allowed` is an initialised cpu_set_t and c < CPU_SETSIZE is checked.
            (c as usize) < libc::CPU_SETSIZE as usize
                && unsafe { libc::CPU_ISSET(c as usize, &allowed) }
        })
        .collect()
}

/// The CPU placement checked against the host: the control CPU and the PMD CPUs.
pub fn resolve_cores(cores: &Cores, usable: &[u32]) -> Result<(u32, Vec<u32>), ConfigError> {
    let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    for c in &cores.pmd {
        if !usable.contains(c) {
            return Err(ConfigError::Invalid(format!(
                "PMD core {c} is not an online CPU this process may use (usable: {}): set cores.pmd to CPUs from that list",
                list(usable)
            )));
        }
    }
    let control = match cores.control {
        Some(c) if !usable.contains(&c) => {
            return Err(ConfigError::Invalid(format!(
                "control core {c} is not an online CPU this process may use (usable: {}): set cores.control",
                list(usable)
            )))
        }
        Some(c) => c,
        None => usable
            .iter()
            .copied()
            .find(|c| !cores.pmd.contains(c))
            .unwrap_or(cores.pmd[0]),
    };
    Ok((control, cores.pmd.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_config_is_valid() {
        let cfg = DaemonConfig::parse(DEFAULT_CONFIG, "default").unwrap();
        assert!(!cfg.cores.pmd.is_empty());
    }

    #[test]
    fn every_bad_port_names_its_field() {
        let base = "cores: {pmd: [1]}\nports:\n";
        let cases = [
            ("  - {name: a, devargs: net_null0, mode: access, vlan: 4095}", "outside 1-4094"),
            ("  - {name: a, devargs: net_null0, mode: access, vlan: 0}", "outside 1-4094"),
            ("  - {name: a, devargs: net_null0, mode: trunk, vlans: [\"300-200\"]}", "runs backwards"),
            ("  - {name: a, devargs: net_null0, mode: access, vlan: 5, mac: \"02:00\"}", "not a MAC"),
            ("  - {name: a, devargs: net_null0, mode: access, vlan: 5}\n  - {name: a, devargs: net_null1, mode: access, vlan: 5}", "duplicate port \"a\""),
            ("  - {name: a, devargs: net_null0, mode: access, vlan: 5}\n  - {name: b, devargs: net_null0, mode: access, vlan: 5}", "duplicate port device"),
            ("  - {name: a, devargs: net_null0, mode: access, vlan: 5, color: red}", "unknown field"),
        ];
        for (ports, want) in cases {
            let err = DaemonConfig::parse(&format!("{base}{ports}"), "t")
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{ports}: {err}");
        }
    }

    #[test]
    fn max_ports_defaults_to_the_table_and_is_bounded() {
        let cfg = DaemonConfig::parse(DEFAULT_CONFIG, "default").unwrap();
        assert_eq!(cfg.max_ports as usize, MAX_PORTS);
        assert_eq!(
            DaemonConfig::parse("cores: {pmd: [1]}\nmax_ports: 2", "t")
                .unwrap()
                .max_ports,
            2
        );
        for (yaml, want) in [
            ("max_ports: 0", "max_ports 0 is out of range: use 1 to 256"),
            ("max_ports: 257", "max_ports 257 is out of range"),
            (
                "max_ports: 1\nports:\n  - {name: a, devargs: net_null0, mode: access, vlan: 5}\n  - {name: b, devargs: net_null1, mode: access, vlan: 5}",
                "ports lists 2 ports but max_ports is 1",
            ),
        ] {
            let err = DaemonConfig::parse(&format!("cores: {{pmd: [1]}}\n{yaml}"), "t")
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{yaml}: {err}");
        }
    }

    #[test]
    fn cores_are_checked_against_the_host() {
        assert_eq!(parse_cpu_list("0-2,5\n"), vec![0, 1, 2, 5]);
        let cores = Cores {
            control: None,
            pmd: vec![1],
        };
        assert_eq!(resolve_cores(&cores, &[0, 1]).unwrap(), (0, vec![1]));
        let bad = Cores {
            control: None,
            pmd: vec![7],
        };
        let err = resolve_cores(&bad, &[0, 1]).unwrap_err().to_string();
        assert!(
            err.contains("PMD core 7") && err.contains("usable: 0,1"),
            "{err}"
        );
        let only = Cores {
            control: None,
            pmd: vec![0],
        };
        assert_eq!(resolve_cores(&only, &[0]).unwrap(), (0, vec![0]));
    }
}
