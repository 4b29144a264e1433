//! The node daemon's YAML configuration: the same keys as the Helm chart's values.

use std::path::{Path, PathBuf};

use heddle_api::{parse_mac, PortMode, PortSpec};
use heddle_hugepages::MemoryConfig;
use serde::{Deserialize, Serialize};

use heddle_core::switch::io::MAX_PORTS;

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
    /// CPU for the control thread (EAL main lcore). Default: the first usable CPU that is
    /// not a PMD core (with a count or `auto`: the first CPU of the affinity mask), or the
    /// first PMD core when there is none.
    pub control: Option<u32>,
    /// CPUs that run PMD workers, one worker each: a list of CPU ids, a count, or `auto`.
    pub pmd: PmdCores,
}

impl Default for Cores {
    fn default() -> Self {
        Cores {
            control: None,
            pmd: PmdCores::Count(1),
        }
    }
}

/// Which CPUs run PMD workers.
///
/// Under Kubernetes' static CPU manager the kubelet, not the operator, picks the CPU ids of a
/// Guaranteed pod with integer CPU requests: the switch then finds its exclusive CPUs in its
/// own affinity mask. A count or `auto` takes them from there; a list names them (for nodes
/// without the CPU manager, with `isolcpus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PmdCores {
    /// These CPU ids (`pmd: [2, 3]`).
    List(Vec<u32>),
    /// This many CPUs from the affinity mask, after the control CPU (`pmd: 2`).
    Count(u32),
    /// Every CPU of the affinity mask but the control CPU (`pmd: auto`).
    Auto,
}

impl PmdCores {
    /// How the value was given, for logs, `heddlectl pmd-stats` and metrics.
    pub fn source(&self) -> &'static str {
        match self {
            PmdCores::List(_) => "list",
            PmdCores::Count(_) => "count",
            PmdCores::Auto => "auto",
        }
    }
}

impl Serialize for PmdCores {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PmdCores::List(v) => v.serialize(s),
            PmdCores::Count(n) => n.serialize(s),
            PmdCores::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for PmdCores {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<u32>),
            Count(u32),
            Word(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "cores.pmd must be a list of CPU ids ([2, 3]), a count of CPUs (2) or \"auto\"",
            )
        })? {
            Raw::List(v) => Ok(PmdCores::List(v)),
            Raw::Count(n) => Ok(PmdCores::Count(n)),
            Raw::Word(w) if w == "auto" => Ok(PmdCores::Auto),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "cores.pmd is {w:?}: write a list of CPU ids ([2, 3]), a count of CPUs (2) or \"auto\""
            ))),
        }
    }
}

/// Where the control thread and the PMD workers run, once checked against the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The control CPU (EAL main lcore).
    pub control: u32,
    /// One CPU per PMD worker.
    pub pmd: Vec<u32>,
    /// `list`, `count` or `auto`: how `cores.pmd` was given.
    pub source: &'static str,
    /// The CPUs this process could use (online and in its affinity mask).
    pub usable: Vec<u32>,
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
    /// Jumbo mbufs (about 9.5 KiB each) in a second pool, for frames that do not fit the
    /// first pool's 2 KiB buffers: guest TX and flood copies of such frames, and RX of
    /// ethdev ports whose mtu is above 1902.
    #[serde(default = "default_jumbo_count")]
    pub jumbo_count: u32,
}

fn default_jumbo_count() -> u32 {
    2048
}

impl Default for Mbufs {
    fn default() -> Self {
        Mbufs {
            count: 16384,
            cache: 256,
            rx_ring: 1024,
            tx_ring: 1024,
            jumbo_count: default_jumbo_count(),
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
        match &self.cores.pmd {
            PmdCores::List(list) if list.is_empty() => {
                return Err(ConfigError::Invalid(
                    "cores.pmd is empty: list at least one CPU for a PMD worker, or give a count or \"auto\"".into(),
                ));
            }
            PmdCores::List(list) => {
                let mut seen = std::collections::BTreeSet::new();
                for c in list {
                    if !seen.insert(*c) {
                        return Err(ConfigError::Invalid(format!(
                            "cores.pmd lists CPU {c} twice: give each PMD worker its own CPU"
                        )));
                    }
                }
            }
            PmdCores::Count(0) => {
                return Err(ConfigError::Invalid(
                    "cores.pmd is 0: the switch needs at least one PMD worker; use 1 or more, or \"auto\"".into(),
                ));
            }
            PmdCores::Count(n) if *n > 1024 => {
                return Err(ConfigError::Invalid(format!(
                    "cores.pmd is {n}: use a count of at most 1024 CPUs"
                )));
            }
            PmdCores::Count(_) | PmdCores::Auto => {}
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
    if let Some(mtu) = p.mtu {
        use heddle_core::switch::config::{MAX_MTU, MIN_MTU};
        if mtu > MAX_MTU {
            return Err(format!(
                "port {:?}: mtu {mtu} is above the switch's maximum of {MAX_MTU} (frames of {MAX_MTU} bytes after the Ethernet header): set mtu to {MAX_MTU} or less",
                p.name
            ));
        }
        if mtu < MIN_MTU {
            return Err(format!(
                "port {:?}: mtu {mtu} is below IPv4's minimum of {MIN_MTU}: set mtu between {MIN_MTU} and {MAX_MTU} (or leave it out for 1500)",
                p.name
            ));
        }
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
    if heddle_core::vhost::port::VhostConfig::is_native(&p.devargs) {
        heddle_core::vhost::port::VhostConfig::parse(&p.devargs, p.queues)
            .map_err(|e| format!("port {:?}: {e}", p.name))?;
    }
    if heddle_core::memif::port::MemifConfig::is_native(&p.devargs) {
        heddle_core::memif::port::MemifConfig::parse(&p.devargs, p.queues)
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

/// The CPU placement checked against the host: the control CPU and the PMD CPUs, from an
/// explicit list, or taken from `usable` (the affinity mask) for a count or `auto`.
pub fn resolve_cores(cores: &Cores, usable: &[u32]) -> Result<Placement, ConfigError> {
    let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    if let Some(c) = cores.control {
        if !usable.contains(&c) {
            return Err(ConfigError::Invalid(format!(
                "control core {c} is not an online CPU this process may use (usable: {}): set cores.control",
                list(usable)
            )));
        }
    }
    let (control, pmd) = match &cores.pmd {
        PmdCores::List(pmd) => {
            for c in pmd {
                if !usable.contains(c) {
                    return Err(ConfigError::Invalid(format!(
                        "PMD core {c} is not an online CPU this process may use (usable: {}): set cores.pmd to CPUs from that list",
                        list(usable)
                    )));
                }
            }
            let control = cores.control.unwrap_or_else(|| {
                usable
                    .iter()
                    .copied()
                    .find(|c| !pmd.contains(c))
                    .unwrap_or(pmd[0])
            });
            (control, pmd.clone())
        }
        PmdCores::Count(_) | PmdCores::Auto => {
            let control = match cores.control.or_else(|| usable.first().copied()) {
                Some(c) => c,
                None => {
                    return Err(ConfigError::Invalid(
                        "no usable CPU: this process's affinity mask holds no online CPU".into(),
                    ))
                }
            };
            let free: Vec<u32> = usable.iter().copied().filter(|&c| c != control).collect();
            let want = match cores.pmd {
                PmdCores::Count(n) => n as usize,
                _ => free.len().max(1),
            };
            if free.len() < want {
                return Err(ConfigError::Invalid(format!(
                    "cores.pmd asks for {want} PMD core{} but the affinity mask holds only CPUs {} and CPU {control} is the control core: lower cores.pmd, or give the switch {} CPUs (under the static CPU manager, an integer CPU request equal to its limit)",
                    if want == 1 { "" } else { "s" },
                    list(usable),
                    want + 1
                )));
            }
            (control, free[..want].to_vec())
        }
    };
    Ok(Placement {
        control,
        pmd,
        source: cores.pmd.source(),
        usable: usable.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_config_is_valid() {
        let cfg = DaemonConfig::parse(DEFAULT_CONFIG, "default").unwrap();
        assert_eq!(cfg.cores.pmd, PmdCores::Count(1));
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
            ("  - {name: a, devargs: net_null0, mode: access, vlan: 5, mtu: 9217}", "mtu 9217 is above the switch's maximum of 9216 (frames of 9216 bytes after the Ethernet header): set mtu to 9216 or less"),
            ("  - {name: a, devargs: net_null0, mode: access, vlan: 5, mtu: 67}", "mtu 67 is below IPv4's minimum of 68"),
        ];
        for (ports, want) in cases {
            let err = DaemonConfig::parse(&format!("{base}{ports}"), "t")
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{ports}: {err}");
        }
    }

    fn placed(cores: &Cores, usable: &[u32]) -> (u32, Vec<u32>) {
        let p = resolve_cores(cores, usable).unwrap();
        (p.control, p.pmd)
    }

    fn pmd(text: &str) -> Result<Cores, String> {
        DaemonConfig::parse(&format!("cores: {{pmd: {text}}}\n"), "t")
            .map(|c| c.cores)
            .map_err(|e| e.to_string())
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
        let list = |pmd: Vec<u32>| Cores {
            control: None,
            pmd: PmdCores::List(pmd),
        };
        assert_eq!(placed(&list(vec![1]), &[0, 1]), (0, vec![1]));
        let err = resolve_cores(&list(vec![7]), &[0, 1])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("PMD core 7") && err.contains("usable: 0,1"),
            "{err}"
        );
        assert_eq!(placed(&list(vec![0]), &[0]), (0, vec![0]));
    }

    #[test]
    fn pmd_cores_parse_as_a_list_a_count_or_auto() {
        assert_eq!(pmd("[2, 3]").unwrap().pmd, PmdCores::List(vec![2, 3]));
        assert_eq!(pmd("2").unwrap().pmd, PmdCores::Count(2));
        assert_eq!(pmd("auto").unwrap().pmd, PmdCores::Auto);
        for (bad, want) in [
            ("many", "write a list of CPU ids"),
            ("0", "at least one PMD worker"),
            ("[]", "cores.pmd is empty"),
            ("[1, 1]", "lists CPU 1 twice"),
            ("-1", "a count of CPUs"),
        ] {
            let err = pmd(bad).unwrap_err();
            assert!(err.contains(want), "pmd: {bad} gave {err}");
        }
        // What --print-default-config shows is what the config holds after a round trip.
        let cfg = DaemonConfig::parse(DEFAULT_CONFIG, "default").unwrap();
        assert_eq!(cfg.cores.pmd, PmdCores::Count(1));
        let text = serde_yaml::to_string(&cfg).unwrap();
        assert_eq!(DaemonConfig::parse(&text, "round trip").unwrap(), cfg);
    }

    #[test]
    fn a_count_or_auto_takes_the_cpus_of_the_affinity_mask_after_the_control_cpu() {
        let count = |n| Cores {
            control: None,
            pmd: PmdCores::Count(n),
        };
        // The kubelet gave the pod CPUs 4 and 9 (static CPU manager): control 4, PMD 9.
        let p = resolve_cores(&count(1), &[4, 9]).unwrap();
        assert_eq!((p.control, p.pmd.clone(), p.source), (4, vec![9], "count"));
        assert_eq!(placed(&count(2), &[2, 3, 6, 7]), (2, vec![3, 6]));
        let auto = Cores {
            control: None,
            pmd: PmdCores::Auto,
        };
        assert_eq!(placed(&auto, &[2, 3, 6, 7]), (2, vec![3, 6, 7]));
        let pinned = Cores {
            control: Some(7),
            pmd: PmdCores::Count(2),
        };
        assert_eq!(placed(&pinned, &[2, 3, 6, 7]), (7, vec![2, 3]));
        // Too small a mask: one sentence with the mask, the control CPU and the fix.
        let err = resolve_cores(&count(2), &[0, 1]).unwrap_err().to_string();
        assert_eq!(
            err,
            "cores.pmd asks for 2 PMD cores but the affinity mask holds only CPUs 0,1 and CPU 0 is the control core: lower cores.pmd, or give the switch 3 CPUs (under the static CPU manager, an integer CPU request equal to its limit)"
        );
        let err = resolve_cores(&auto, &[5]).unwrap_err().to_string();
        assert!(err.contains("asks for 1 PMD core but"), "{err}");
    }
}
