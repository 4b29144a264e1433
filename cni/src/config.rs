//! The network configuration on stdin (a NetworkAttachmentDefinition's config, or one entry
//! of a conflist), decoded (code 6 when the JSON is broken) and validated (code 7 when a value
//! is wrong, code 1 when the version is not one Heddle speaks).

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::devices::DeviceKind;
use crate::error::{code, CniError};
use crate::sriov::conf::SriovConf;
use crate::sriov::settings::VfSettings;

/// The CNI versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// Default node daemon socket.
pub const DEFAULT_SWITCH_SOCKET: &str = heddle_api::DEFAULT_SOCKET;
/// Default parent of the per-pod socket directories.
pub const DEFAULT_SOCKET_DIR: &str = "/run/heddle/pods";
/// Default directory of per-attachment records.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/heddle/cni";
/// vhost-user backend when the config names none: heddle-switch's own (Rust) backend.
/// `backend: dpdk` selects DPDK's `net_vhost` instead.
pub const DEFAULT_VHOST_BACKEND: VhostBackend = VhostBackend::Native;
/// memif backend when the config names none: heddle-switch's own (Rust) memif, for the
/// switch-as-server role; `backend: dpdk` selects DPDK's `net_memif` (and a pod that is the
/// memif server, `memifRole: server`, gets `net_memif` unless the config says otherwise).
pub const DEFAULT_MEMIF_BACKEND: MemifBackend = MemifBackend::Native;
/// Default host directory of the device plugin's devices ([`crate::devices`]).
pub const DEFAULT_DEVICE_ROOT: &str = crate::devices::DEFAULT_DEVICE_ROOT;
/// Default kubelet PodResources socket, asked which devices a pod holds.
pub const DEFAULT_POD_RESOURCES_SOCKET: &str = heddle_kubelet_api::POD_RESOURCES_SOCKET;
/// Longest Unix socket path (`sun_path` is 108 bytes with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Checks that `v` is a version Heddle speaks (code 1 otherwise).
pub fn check_version(v: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&v) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {v:?} is not supported: use one of {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
            "heddle-cni implements CNI 0.4.0 through 1.1.0",
        ))
    }
}

/// The reply to `VERSION`.
pub fn version_reply(requested: Option<&str>) -> Value {
    let v = requested
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .unwrap_or("1.1.0");
    serde_json::json!({ "cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS })
}

/// Which heddle-switch port kind serves a vhost-user socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhostBackend {
    /// DPDK's `net_vhost` (socket owner and mode set by heddle-cni after the port is added).
    Dpdk,
    /// heddle-switch's own vhost-user port (`vhost-user-<id>`, owner and mode in devargs).
    Native,
}

/// The largest MTU a switch port takes (the switch's `MAX_MTU`).
pub const SWITCH_MAX_MTU: u32 = 9216;

/// Which heddle-switch port kind serves a memif socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemifBackend {
    /// DPDK's `net_memif` (socket owner and mode set by heddle-cni after the port is added).
    Dpdk,
    /// heddle-switch's own memif port (`memif-<id>`, owner and mode in devargs; the switch
    /// is the memif server).
    Native,
}

/// What kind of interface the pod gets.
#[derive(Debug, Clone, PartialEq, Eq)]

pub enum Kind {
    /// A vhost-user socket in the pod's socket directory.
    VhostUser {
        /// The switch listens on the socket (the pod's virtio-user connects), else the pod
        /// listens and the switch connects and reconnects.
        switch_is_server: bool,
        /// Queue pairs.
        queues: u16,
        /// The switch port kind behind the socket.
        backend: VhostBackend,
    },
    /// A memif socket in the pod's socket directory.
    Memif {
        /// The switch is the memif server (default); the pod is the client.
        switch_is_server: bool,
        /// Ring size (a power of two, 2..=16384).
        ring_size: u32,
        /// The switch port kind behind the socket.
        backend: MemifBackend,
    },
    /// A veth pair: the pod end in the pod's netns, the host end an AF_PACKET switch port.
    Kernel,
    /// An SR-IOV VF handed over by the device plugin.
    Sriov(SriovConf),
}

impl Kind {
    /// The name used in config, records and device-info.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::VhostUser { .. } => "vhost-user",
            Kind::Memif { .. } => "memif",
            Kind::Kernel => "kernel",
            Kind::Sriov(_) => "sriov",
        }
    }

    /// The device-plugin device kind of a socket attachment (`None` for kernel and sriov).
    pub fn device_kind(&self) -> Option<DeviceKind> {
        match self {
            Kind::VhostUser { .. } => Some(DeviceKind::VhostUser),
            Kind::Memif { .. } => Some(DeviceKind::Memif),
            Kind::Kernel | Kind::Sriov(_) => None,
        }
    }
}

/// `runtimeConfig` (capabilities the runtime fills in).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// Device plugin's device id: an SR-IOV VF's PCI address, or a vhost-user / memif
    /// device id ([`crate::devices`]).
    #[serde(default, rename = "deviceID")]
    pub device_id: Option<String>,
    /// Where Multus wants the NPWG device-info file.
    #[serde(default, rename = "CNIDeviceInfoFile")]
    pub device_info_file: Option<String>,
    /// MAC asked for by the runtime.
    #[serde(default)]
    pub mac: Option<String>,
    /// Static IPs (CIDR) asked for by the runtime.
    #[serde(default)]
    pub ips: Vec<String>,
}

/// The raw shape of stdin. Unknown fields are ignored, as every CNI plugin does (conflists
/// carry `capabilities`, `dns`, ...).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: String,
    #[serde(default)]
    name: String,
    #[serde(rename = "type", default)]
    plugin_type: String,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    vlan: Option<i64>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    socket_dir: Option<String>,
    #[serde(default)]
    socket_owner: Option<Value>,
    #[serde(default)]
    socket_group: Option<Value>,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    socket_mode: Option<String>,
    #[serde(default)]
    vhost_mode: Option<String>,
    #[serde(default)]
    queues: Option<u16>,
    #[serde(default)]
    memif_role: Option<String>,
    #[serde(default)]
    ring_size: Option<u32>,
    #[serde(default)]
    switch_socket: Option<String>,
    #[serde(default)]
    state_dir: Option<String>,
    #[serde(default)]
    device_root: Option<String>,
    #[serde(default)]
    pod_resources_socket: Option<String>,
    #[serde(default)]
    ipam: Option<Value>,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default, rename = "deviceID")]
    device_id: Option<String>,
    #[serde(default, rename = "vlanQoS")]
    vlan_qos: Option<u8>,
    #[serde(default)]
    spoofchk: Option<Value>,
    #[serde(default)]
    trust: Option<Value>,
    #[serde(default)]
    min_tx_rate: Option<u32>,
    #[serde(default)]
    max_tx_rate: Option<u32>,
    #[serde(default)]
    admin_mac: Option<bool>,
    #[serde(default)]
    resource_name: Option<String>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
}

/// One entry of GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ValidAttachment {
    /// Container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

/// A checked network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    /// The version of the request (and of the reply).
    pub cni_version: String,
    /// Network name (`name`).
    pub name: String,
    /// Heddle network (informational; defaults to `name`).
    pub network: String,
    /// Interface kind.
    pub kind: Kind,
    /// Access VLAN, 1-4094 (for `sriov`: the VF's PF-side VLAN, 0 for none).
    pub vlan: u16,
    /// MAC from the config.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Parent of the per-pod socket directories.
    pub socket_dir: PathBuf,
    /// Owner of the pod's socket directory and socket.
    pub socket_owner: Option<u32>,
    /// Group of the pod's socket directory and socket.
    pub socket_group: Option<u32>,
    /// Mode of the socket (`socketMode`, default `0660`); the pod's socket directory gets
    /// it with search bits added ([`crate::owner::dir_mode`]).
    pub socket_mode: u32,
    /// The node daemon's control socket.
    pub switch_socket: PathBuf,
    /// Directory of per-attachment records.
    pub state_dir: PathBuf,
    /// `ipam` object, when IPAM is delegated.
    pub ipam: Option<Value>,
    /// `runtimeConfig`.
    pub runtime: RuntimeConfig,
    /// `prevResult` when chained.
    pub prev_result: Option<Value>,
    /// `deviceID` from the config (Multus writes it there for a NAD with a resourceName).
    pub device_id: Option<String>,
    /// `resourceName`: the device plugin resource this network's devices come from.
    pub resource_name: Option<String>,
    /// Host directory of the device plugin's vhost-user / memif devices (`deviceRoot`).
    pub device_root: PathBuf,
    /// The kubelet's PodResources socket (`podResourcesSocket`).
    pub pod_resources_socket: PathBuf,
    /// GC's valid list.
    pub valid_attachments: Option<Vec<ValidAttachment>>,
    /// stdin as received (handed to the IPAM plugin).
    pub raw: Value,
}

/// A network or config name: letters, digits, `_`, `.`, `-`, starting with a letter or
/// digit (the spec's rule), so it can never name a path.
pub fn valid_name(s: &str) -> bool {
    crate::invocation::valid_container_id(s)
}

/// A Heddle network key: a name (a `ClusterNetwork`, or any local network) or
/// `<namespace>/<name>` (a namespaced `Network`, as heddle-manager's generated configs say).
pub fn valid_network(s: &str) -> bool {
    match s.split_once('/') {
        Some((ns, name)) => valid_name(ns) && valid_name(name),
        None => valid_name(s),
    }
}

/// Longest path the kernel takes (`PATH_MAX` is 4096 bytes with the terminating NUL).
pub const MAX_PATH: usize = 4095;

/// An absolute path with no `.`/`..` components, no NUL, at most [`MAX_PATH`] bytes.
fn clean_abs_path(field: &str, s: &str) -> Result<PathBuf, CniError> {
    if s.contains('\0') || s.len() > MAX_PATH {
        return Err(CniError::config(
            format!("{field} must be a path of at most {MAX_PATH} bytes without NUL characters"),
            format!(
                "got {} bytes: {:?}",
                s.len(),
                s.chars().take(80).collect::<String>()
            ),
        ));
    }
    let p = Path::new(s);
    if !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(CniError::config(
            format!("{field} must be an absolute path without '.' or '..' components"),
            format!("got {s:?}"),
        ));
    }
    Ok(p.to_owned())
}

/// A directory that sockets go under: a clean absolute path without ',' (a socket path goes
/// into the switch's devargs, where ',' separates keys).
fn devargs_path(field: &str, s: &str) -> Result<PathBuf, CniError> {
    let p = clean_abs_path(field, s)?;
    if s.contains(',') {
        return Err(CniError::config(
            format!("{field} must not contain ',': socket paths go into the switch's devargs, where ',' separates keys"),
            format!("got {s:?}"),
        ));
    }
    Ok(p)
}

/// Decodes stdin for the version check only (VERSION, and the first step of every call).
pub fn requested_version(stdin: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(stdin)
        .ok()?
        .get("cniVersion")?
        .as_str()
        .map(str::to_owned)
}

impl NetConf {
    /// Decodes and validates stdin. `needs_kind` is false for GC and STATUS, which only
    /// need the name and the directories.
    pub fn parse(stdin: &[u8], needs_kind: bool) -> Result<NetConf, CniError> {
        let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                "the network configuration on stdin is not valid JSON",
                e.to_string(),
            )
        })?;
        let c: RawConf = serde_json::from_value(raw.clone()).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                "the network configuration on stdin has a field of the wrong type or no cniVersion",
                e.to_string(),
            )
        })?;
        check_version(&c.cni_version)?;
        if !c.plugin_type.is_empty() && c.plugin_type != "heddle-cni" {
            return Err(CniError::config(
                "type must be \"heddle-cni\"",
                format!("got {:?}", c.plugin_type),
            ));
        }
        if !valid_name(&c.name) {
            return Err(CniError::config(
                "name must start with a letter or digit and hold only letters, digits, '_', '.' and '-'",
                format!("got {:?}", c.name),
            ));
        }
        let network = c.network.clone().unwrap_or_else(|| c.name.clone());
        if !valid_network(&network) {
            return Err(CniError::config(
                "network must be a name or <namespace>/<name> (the manager's key of a Network), each part starting with a letter or digit and holding only letters, digits, '_', '.' and '-'",
                format!("got {network:?}"),
            ));
        }
        let kind = match c.kind.as_deref() {
            None if !needs_kind => Kind::Kernel,
            Some("vhost-user") => {
                let switch_is_server = match c.vhost_mode.as_deref().unwrap_or("server") {
                    "server" => true,
                    "client" => false,
                    other => {
                        return Err(CniError::config(
                            "vhostMode must be \"server\" (the switch listens) or \"client\" (the pod listens)",
                            format!("got {other:?}"),
                        ))
                    }
                };
                let queues = c.queues.unwrap_or(1);
                if !(1..=16).contains(&queues) {
                    return Err(CniError::config(
                        "queues must be 1-16",
                        format!("got {queues}"),
                    ));
                }
                let backend = match c.backend.as_deref() {
                    None => DEFAULT_VHOST_BACKEND,
                    Some("dpdk") => VhostBackend::Dpdk,
                    Some("native") => VhostBackend::Native,
                    Some(other) => {
                        return Err(CniError::config(
                            "backend must be \"dpdk\" (DPDK net_vhost) or \"native\" (heddle-switch's own vhost-user port)",
                            format!("got {other:?}"),
                        ))
                    }
                };
                Kind::VhostUser {
                    switch_is_server,
                    queues,
                    backend,
                }
            }
            Some("memif") => {
                let switch_is_server = match c.memif_role.as_deref().unwrap_or("client") {
                    "client" => true,
                    "server" => false,
                    other => {
                        return Err(CniError::config(
                            "memifRole is the pod's role: \"client\" (default, the switch serves) or \"server\"",
                            format!("got {other:?}"),
                        ))
                    }
                };
                let ring_size = c.ring_size.unwrap_or(1024);
                if !ring_size.is_power_of_two() || !(2..=16384).contains(&ring_size) {
                    return Err(CniError::config(
                        "ringSize must be a power of two between 2 and 16384",
                        format!("got {ring_size}"),
                    ));
                }
                let backend = match (c.backend.as_deref(), switch_is_server) {
                    (None, true) => DEFAULT_MEMIF_BACKEND,
                    (None, false) | (Some("dpdk"), _) => MemifBackend::Dpdk,
                    (Some("native"), true) => MemifBackend::Native,
                    (Some("native"), false) => {
                        return Err(CniError::config(
                            "backend \"native\" serves memif as the server only: use memifRole \"client\" (the pod connects) or backend \"dpdk\" for a pod that is the memif server",
                            "got backend \"native\" with memifRole \"server\"".to_owned(),
                        ))
                    }
                    (Some(other), _) => {
                        return Err(CniError::config(
                            "backend must be \"native\" (heddle-switch's own memif, the default) or \"dpdk\" (DPDK net_memif)",
                            format!("got {other:?}"),
                        ))
                    }
                };
                Kind::Memif {
                    switch_is_server,
                    ring_size,
                    backend,
                }
            }
            Some("kernel") => Kind::Kernel,
            Some("sriov") => Kind::Sriov(sriov_conf(&c)?),
            other => {
                return Err(CniError::config(
                    "kind must be one of vhost-user, memif, kernel, sriov",
                    format!("got {other:?}"),
                ))
            }
        };
        let is_sriov = matches!(kind, Kind::Sriov(_));
        let vlan = match c.vlan {
            Some(v) if (1..=4094).contains(&v) => v as u16,
            Some(0) | None if is_sriov => 0,
            None if !needs_kind => 1,
            Some(v) => return Err(CniError::config("vlan must be 1-4094", format!("got {v}"))),
            None => {
                return Err(CniError::config(
                    "vlan is required: the network's access VLAN, 1-4094",
                    "no vlan in the config",
                ))
            }
        };
        let mac = c.mac.as_deref().map(parse_unicast_mac).transpose()?;
        if let Some(m) = &c.runtime_config.mac {
            parse_unicast_mac(m)?;
        }
        if let Some(mtu) = c.mtu {
            if !(68..=9702).contains(&mtu) {
                return Err(CniError::config(
                    "mtu must be 68-9702",
                    format!("got {mtu}"),
                ));
            }
            // A switch port (every kind but sriov) carries frames up to 9216 bytes after
            // the Ethernet header.
            if !is_sriov && mtu > SWITCH_MAX_MTU {
                return Err(CniError::config(
                    "mtu above 9216, the switch's largest: set mtu to 9216 or less (only sriov VFs take more, up to 9702)",
                    format!("got {mtu}"),
                ));
            }
        }
        let socket_dir = devargs_path(
            "socketDir",
            c.socket_dir.as_deref().unwrap_or(DEFAULT_SOCKET_DIR),
        )?;
        let socket_mode = match c.socket_mode.as_deref() {
            None => 0o660,
            Some(m) => crate::owner::parse_mode(m)?,
        };
        let socket_owner = c
            .socket_owner
            .as_ref()
            .map(|v| crate::owner::resolve_user("socketOwner", v))
            .transpose()?;
        let socket_group = c
            .socket_group
            .as_ref()
            .map(|v| crate::owner::resolve_group("socketGroup", v))
            .transpose()?;
        let switch_socket = clean_abs_path(
            "switchSocket",
            c.switch_socket.as_deref().unwrap_or(DEFAULT_SWITCH_SOCKET),
        )?;
        let state_dir = clean_abs_path(
            "stateDir",
            c.state_dir.as_deref().unwrap_or(DEFAULT_STATE_DIR),
        )?;
        let device_root = devargs_path(
            "deviceRoot",
            c.device_root.as_deref().unwrap_or(DEFAULT_DEVICE_ROOT),
        )?;
        let pod_resources_socket = clean_abs_path(
            "podResourcesSocket",
            c.pod_resources_socket
                .as_deref()
                .unwrap_or(DEFAULT_POD_RESOURCES_SOCKET),
        )?;
        if let Some(r) = &c.resource_name {
            check_resource_name(r)?;
        }
        if let Some(f) = &c.runtime_config.device_info_file {
            clean_abs_path("runtimeConfig.CNIDeviceInfoFile", f)?;
        }
        for ip in &c.runtime_config.ips {
            parse_cidr(ip).ok_or_else(|| {
                CniError::config(
                    "runtimeConfig.ips entries must be addresses with a prefix, e.g. 10.1.0.5/24",
                    format!("got {ip:?}"),
                )
            })?;
        }
        if let Some(ipam) = &c.ipam {
            let t = ipam.get("type").and_then(Value::as_str).unwrap_or("");
            if !valid_name(t) {
                return Err(CniError::config(
                    "ipam.type must name an IPAM plugin found in CNI_PATH (e.g. host-local)",
                    format!("got {t:?}"),
                ));
            }
        }
        Ok(NetConf {
            cni_version: c.cni_version,
            name: c.name,
            network,
            kind,
            vlan,
            mac,
            mtu: c.mtu,
            socket_dir,
            socket_owner,
            socket_group,
            socket_mode,
            switch_socket,
            state_dir,
            ipam: c
                .ipam
                .filter(|v| !v.is_null() && v.as_object().is_some_and(|o| !o.is_empty())),
            runtime: c.runtime_config,
            prev_result: c.prev_result,
            device_id: c.device_id,
            resource_name: c.resource_name,
            device_root,
            pod_resources_socket,
            valid_attachments: c.valid_attachments,
            raw,
        })
    }
}

/// `"on"`/`"off"` (as the SR-IOV CNI writes them) or a JSON boolean.
fn on_off(field: &str, v: Option<&Value>) -> Result<Option<bool>, CniError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s == "on" => Ok(Some(true)),
        Some(Value::String(s)) if s == "off" => Ok(Some(false)),
        Some(other) => Err(CniError::config(
            format!("{field} must be \"on\" or \"off\""),
            format!("got {other}"),
        )),
    }
}

/// The `sriov` keys: PF-side settings and how the VF is found.
fn sriov_conf(c: &RawConf) -> Result<SriovConf, CniError> {
    let vlan = match c.vlan {
        None | Some(0) => None,
        Some(v) if (1..=4094).contains(&v) => Some(v as u16),
        Some(v) => {
            return Err(CniError::config(
                "vlan of an sriov network is the VF's VLAN: 1-4094, or 0 / absent for none",
                format!("got {v}"),
            ))
        }
    };
    if let Some(q) = c.vlan_qos {
        if q > 7 {
            return Err(CniError::config("vlanQoS must be 0-7", format!("got {q}")));
        }
        if vlan.is_none() {
            return Err(CniError::config(
                "vlanQoS needs a vlan: set vlan (1-4094) or remove vlanQoS",
                format!("vlanQoS {q} without vlan"),
            ));
        }
    }
    if let (Some(min), Some(max)) = (c.min_tx_rate, c.max_tx_rate) {
        if max != 0 && min > max {
            return Err(CniError::config(
                "minTxRate must not exceed maxTxRate (Mbit/s; 0 means no limit)",
                format!("got {min} > {max}"),
            ));
        }
    }
    if let Some(r) = &c.resource_name {
        check_resource_name(r)?;
    }
    Ok(SriovConf {
        settings: VfSettings {
            vlan,
            qos: vlan.and(c.vlan_qos),
            mac: None,
            spoofchk: on_off("spoofchk", c.spoofchk.as_ref())?,
            trust: on_off("trust", c.trust.as_ref())?,
            min_tx_rate: c.min_tx_rate,
            max_tx_rate: c.max_tx_rate,
        },
        admin_mac: c.admin_mac.unwrap_or(true),
        resource_name: c.resource_name.clone(),
    })
}

/// A device plugin resource name: `<domain>/<name>` of letters, digits, `.`, `_`, `-`.
fn check_resource_name(r: &str) -> Result<(), CniError> {
    let ok = r.split_once('/').is_some_and(|(domain, name)| {
        [domain, name].iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
    });
    if ok {
        Ok(())
    } else {
        Err(CniError::config(
            "resourceName must be a device plugin resource <domain>/<name>, such as heddle.dev/vhost-user or intel.com/sriov_a",
            format!("got {r:?}"),
        ))
    }
}

/// Parses a unicast MAC (code 7 for anything else, including multicast and all-zero).
pub fn parse_unicast_mac(s: &str) -> Result<[u8; 6], CniError> {
    match heddle_api::parse_mac(s) {
        Some(m) if m[0] & 1 == 0 && m != [0; 6] => Ok(m),
        _ => Err(CniError::config(
            "mac must be a unicast MAC like 02:00:00:00:00:01",
            format!("got {s:?}"),
        )),
    }
}

/// Parses `addr/prefix` (an address with its prefix length, host bits kept), by `ipnet`.
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let net: ipnet::IpNet = s.parse().ok()?;
    Some((net.addr(), net.prefix_len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"1.1.0","name":"n3","type":"heddle-cni","kind":"vhost-user","vlan":100{extra}}}"#
        )
    }

    #[test]
    fn a_good_vhost_user_config_parses_with_defaults() {
        let c = NetConf::parse(conf("").as_bytes(), true).unwrap();
        assert_eq!(c.vlan, 100);
        assert_eq!(
            c.kind,
            Kind::VhostUser {
                switch_is_server: true,
                queues: 1,
                backend: DEFAULT_VHOST_BACKEND,
            }
        );
        assert_eq!(c.socket_dir, PathBuf::from(DEFAULT_SOCKET_DIR));
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(DEFAULT_VHOST_BACKEND, VhostBackend::Native);
    }

    #[test]
    fn each_malformed_config_gets_its_code() {
        let cases: &[(&str, u32)] = &[
            ("{not json", 6),
            (r#"{"name":"x"}"#, 6),
            (r#"{"cniVersion":1,"name":"x"}"#, 6),
            (
                r#"{"cniVersion":"0.3.1","name":"n","kind":"kernel","vlan":5}"#,
                1,
            ),
            (
                r#"{"cniVersion":"2.0.0","name":"n","kind":"kernel","vlan":5}"#,
                1,
            ),
        ];
        for (input, code) in cases {
            let e = NetConf::parse(input.as_bytes(), true).unwrap_err();
            assert_eq!(e.code, *code, "{input}: {e}");
        }
        for extra in [
            r#","kind":"tap""#,
            r#","vlan":0"#,
            r#","vlan":4095"#,
            r#","vlan":-1"#,
            r#","mac":"02:00:00:00:00""#,
            r#","mac":"01:00:5e:00:00:01""#,
            r#","mac":"zz:00:00:00:00:01""#,
            r#","socketDir":"/run/heddle/../../etc""#,
            r#","socketDir":"relative""#,
            r#","socketDir":"/run/heddle,client=1""#,
            r#","deviceRoot":"/run/d,perm=0777""#,
            r#","stateDir":"/var/lib/../x""#,
            r#","vhostMode":"both""#,
            r#","queues":0"#,
            r#","mtu":20"#,
            r#","mtu":9217"#,
            r#","socketMode":"0999""#,
            r#","socketMode":"rw""#,
            r#","socketOwner":"no-such-user-heddle""#,
            r#","socketGroup":-5"#,
            r#","backend":"spdk""#,
            r#","type":"bridge""#,
            r#","runtimeConfig":{"mac":"ff:ff:ff:ff:ff:ff"}"#,
            r#","runtimeConfig":{"ips":["10.0.0.1"]}"#,
            r#","runtimeConfig":{"CNIDeviceInfoFile":"../x.json"}"#,
            r#","ipam":{"type":"../../bin/sh"}"#,
            r#","network":"../n6""#,
            r#","network":"ns/../n6""#,
            r#","network":"a/b/c""#,
            r#","resourceName":"heddle.dev""#,
            r#","resourceName":"heddle.dev/a/b""#,
            r#","deviceRoot":"run/heddle""#,
            r#","podResourcesSocket":"/var/lib/kubelet/../x.sock""#,
            r#","socketDir":"/run/heddle/a\u0000b""#,
            r#","stateDir":"/var/lib/heddle\u0000""#,
            r#","runtimeConfig":{"CNIDeviceInfoFile":"/run/x\u0000.json"}"#,
            r#","runtimeConfig":{"CNIDeviceInfoFile":"/run/../etc/x.json"}"#,
        ] {
            let e = NetConf::parse(conf(extra).as_bytes(), true).unwrap_err();
            assert_eq!(e.code, 7, "{extra}: {e}");
        }
        // The switch's kinds stop at 9216; an sriov VF takes up to 9702.
        for kind in ["memif", "kernel"] {
            let input = format!(
                r#"{{"cniVersion":"1.1.0","name":"n","kind":"{kind}","vlan":1,"mtu":9300}}"#
            );
            let e = NetConf::parse(input.as_bytes(), true).unwrap_err();
            assert_eq!(e.code, 7, "{kind}: {e}");
            assert!(e.to_string().contains("9216"), "{kind}: {e}");
        }
        let ok = NetConf::parse(conf(r#","mtu":9216"#).as_bytes(), true).unwrap();
        assert_eq!(ok.mtu, Some(9216));
        let e = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"../x","kind":"kernel","vlan":1}"#,
            true,
        )
        .unwrap_err();
        assert_eq!(e.code, 7);
        let e = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","kind":"memif","vlan":1,"ringSize":1000}"#,
            true,
        )
        .unwrap_err();
        assert_eq!(e.code, 7);
    }

    #[test]
    fn device_handoff_keys_and_namespaced_network_keys() {
        let c = NetConf::parse(conf("").as_bytes(), true).unwrap();
        assert_eq!(
            c.device_root,
            PathBuf::from(crate::devices::DEFAULT_DEVICE_ROOT)
        );
        assert_eq!(
            c.pod_resources_socket,
            PathBuf::from("/var/lib/kubelet/pod-resources/kubelet.sock")
        );
        assert_eq!(c.resource_name, None);
        let c = NetConf::parse(
            conf(
                r#","network":"upf/n3","resourceName":"heddle.dev/vhost-user","deviceRoot":"/run/d","podResourcesSocket":"/k/pr.sock""#,
            )
            .as_bytes(),
            true,
        )
        .unwrap();
        assert_eq!(c.network, "upf/n3");
        assert_eq!(c.resource_name.as_deref(), Some("heddle.dev/vhost-user"));
        assert_eq!(c.device_root, PathBuf::from("/run/d"));
        assert_eq!(c.pod_resources_socket, PathBuf::from("/k/pr.sock"));
    }

    #[test]
    fn vhost_user_backend_and_socket_ownership() {
        let c = NetConf::parse(
            conf(
                r#","backend":"native","socketOwner":"root","socketGroup":"0","socketMode":"0640""#,
            )
            .as_bytes(),
            true,
        )
        .unwrap();
        assert!(matches!(
            c.kind,
            Kind::VhostUser {
                backend: VhostBackend::Native,
                ..
            }
        ));
        assert_eq!(
            (c.socket_owner, c.socket_group, c.socket_mode),
            (Some(0), Some(0), 0o640)
        );
        let e =
            NetConf::parse(conf(r#","socketOwner":"nobody-heddle""#).as_bytes(), true).unwrap_err();
        assert!(
            e.msg.contains("socketOwner must be a uid or a user name"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn sriov_keys() {
        let sriov = |extra: &str| {
            NetConf::parse(
                format!(r#"{{"cniVersion":"1.1.0","name":"s","kind":"sriov"{extra}}}"#).as_bytes(),
                true,
            )
        };
        let c = sriov(r#","deviceID":"0000:03:02.0""#).unwrap();
        let Kind::Sriov(s) = &c.kind else { panic!() };
        assert!(s.settings.is_empty() && s.admin_mac);
        assert_eq!(c.vlan, 0);
        let c = sriov(
            r#","vlan":100,"vlanQoS":3,"spoofchk":"off","trust":true,"maxTxRate":1000,"adminMac":false"#,
        )
        .unwrap();
        let Kind::Sriov(s) = &c.kind else { panic!() };
        assert_eq!(
            (
                s.settings.vlan,
                s.settings.qos,
                s.settings.spoofchk,
                s.settings.trust
            ),
            (Some(100), Some(3), Some(false), Some(true))
        );
        assert!(!s.admin_mac);
        for bad in [
            r#","vlan":4095"#,
            r#","vlanQoS":2"#,
            r#","vlan":5,"vlanQoS":8"#,
            r#","spoofchk":"yes""#,
            r#","minTxRate":100,"maxTxRate":10"#,
            r#","resourceName":"a b""#,
        ] {
            assert_eq!(sriov(bad).unwrap_err().code, 7, "{bad}");
        }
    }

    #[test]
    fn version_negotiation() {
        for v in SUPPORTED_VERSIONS {
            assert!(check_version(v).is_ok());
        }
        assert_eq!(check_version("0.3.1").unwrap_err().code, 1);
        let r = version_reply(Some("1.0.0"));
        assert_eq!(r["cniVersion"], "1.0.0");
        assert_eq!(r["supportedVersions"].as_array().unwrap().len(), 3);
        assert_eq!(version_reply(Some("9.9.9"))["cniVersion"], "1.1.0");
        assert_eq!(version_reply(None)["cniVersion"], "1.1.0");
    }

    #[test]
    fn gc_and_status_need_no_kind() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
            false,
        )
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap().len(), 1);
    }

    #[test]
    fn cidrs() {
        assert!(parse_cidr("10.0.0.1/24").is_some());
        assert!(parse_cidr("fd00::1/64").is_some());
        assert!(parse_cidr("10.0.0.1/33").is_none());
        assert!(parse_cidr("10.0.0.1").is_none());
        assert_eq!(
            parse_cidr("10.1.0.5/24"),
            Some(("10.1.0.5".parse().unwrap(), 24)),
            "the host bits stay"
        );
        assert_eq!(
            parse_cidr("fd00::1/128"),
            Some(("fd00::1".parse().unwrap(), 128))
        );
        for bad in [
            "fd00::1/129",
            "10.0.0.1/",
            "/24",
            "10.0.0/24",
            "10.0.0.1/24/1",
        ] {
            assert!(parse_cidr(bad).is_none(), "{bad}");
        }
    }
}
