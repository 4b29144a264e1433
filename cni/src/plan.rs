//! The pure decision: from the checked config and environment, every name, path and port
//! spec an attachment will have. Nothing here touches the system, so DEL can recompute the
//! same names without a record, and tests can check them directly. This file has what every
//! kind shares (the key, the MAC, a socket's place); each kind in [`crate::attach`] makes its
//! [`Plan`] from them.

use std::path::PathBuf;

use heddle_api::{MacText, PortMode, PortSpec};
use serde_json::Value;

use crate::config::{parse_unicast_mac, NetConf, MAX_SOCKET_PATH};
use crate::devices;
use crate::error::{code, CniError};
use crate::invocation::Invocation;
use crate::key::{fnv1a, AttachmentKey};

/// Where a vhost-user or memif socket goes and what the pod is told about it.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketPlan {
    /// The socket's host directory: the pod's socket directory (`<socketDir>/<12 hex of the
    /// container id>`), or the device's (`<deviceRoot>/<device id>`).
    pub dir: PathBuf,
    /// The socket on the host (`<dir>/<ifname>.sock`, or `<dir>/vhost-user.sock` /
    /// `memif.sock` in a device): what the switch binds and the CNI result's `socketPath`.
    pub path: PathBuf,
    /// The device-plugin device holding the socket, if any.
    pub device: Option<String>,
    /// The socket as the pod sees it, written to the device-info file: the container path
    /// (`/run/heddle/devices/<id>/<socket name>`) of a device, else the host path.
    pub pod_path: PathBuf,
    /// The switch creates the socket (server) rather than connecting to the pod's.
    pub switch_is_server: bool,
    /// NPWG device-info content.
    pub device_info: Value,
}

/// Everything ADD will create.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// `(container id, ifname)`.
    pub key: AttachmentKey,
    /// The pod interface's MAC.
    pub mac: [u8; 6],
    /// The switch port (absent for SR-IOV).
    pub port: Option<PortSpec>,
    /// The socket of a vhost-user or memif attachment.
    pub socket: Option<SocketPlan>,
    /// Host end of the veth (kernel kind); the pod end is created as `peer_tmp` and renamed.
    pub host_veth: Option<String>,
    /// Temporary name of the pod end before it is renamed to `ifname` in the pod.
    pub peer_tmp: Option<String>,
    /// The SR-IOV VF to take.
    pub vf: Option<VfPlan>,
}

/// Which VF an `sriov` attachment may take, and the MAC asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfPlan {
    /// PCI addresses handed over, in order of preference (the first free one is taken).
    pub candidates: Vec<String>,
    /// MAC asked for (runtime, `CNI_ARGS`, config); `None` keeps the VF's own.
    pub mac: Option<[u8; 6]>,
}

/// What every kind's plan starts from: the attachment and its MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Basis {
    /// `(container id, ifname)`.
    pub key: AttachmentKey,
    /// The MAC asked for: `runtimeConfig.mac`, else `CNI_ARGS` `MAC`, else the config's.
    pub asked_mac: Option<[u8; 6]>,
    /// The MAC asked for, else one derived from the key.
    pub mac: [u8; 6],
}

impl Basis {
    /// The switch port of a kind that has one: named after the key, an access port on the
    /// config's VLAN with the attachment's MAC.
    pub fn access_port(&self, conf: &NetConf, devargs: String, queues: Option<u16>) -> PortSpec {
        PortSpec {
            name: self.key.port_name(),
            devargs,
            mode: PortMode::Access { vlan: conf.vlan },
            mac: Some(MacText(self.mac).to_string()),
            queues,
            // Checked against the switch's 9216 when the config was read.
            mtu: conf.mtu.and_then(|m| u16::try_from(m).ok()),
        }
    }

    /// The key and MAC of `inv` under `conf` (code 4 for a bad `CNI_ARGS` MAC, 7 for a bad
    /// `runtimeConfig.mac`).
    pub fn new(conf: &NetConf, inv: &Invocation) -> Result<Basis, CniError> {
        let key = inv.key();
        let args_mac = inv
            .args
            .mac
            .as_deref()
            .map(|m| {
                parse_unicast_mac(m).map_err(|e| CniError {
                    code: code::INVALID_ENV,
                    ..e
                })
            })
            .transpose()?;
        let asked_mac = match (&conf.runtime.mac, args_mac, conf.mac) {
            (Some(m), _, _) => Some(parse_unicast_mac(m)?),
            (None, Some(m), _) => Some(m),
            (None, None, Some(m)) => Some(m),
            _ => None,
        };
        let mac = asked_mac.unwrap_or_else(|| key.derived_mac());
        Ok(Basis {
            key,
            asked_mac,
            mac,
        })
    }
}

impl Plan {
    /// A plan that creates nothing yet: the key and the MAC, for a kind to fill in.
    pub fn bare(basis: &Basis) -> Plan {
        Plan {
            key: basis.key.clone(),
            mac: basis.mac,
            port: None,
            socket: None,
            host_veth: None,
            peer_tmp: None,
            vf: None,
        }
    }
}

impl SocketPlan {
    /// Where the socket of `key` goes: in `device`'s directory when one is given
    /// ([`crate::handoff`] decides which), else in the pod's socket directory. `info` is the
    /// NPWG device-info without the path, which is added here. Code 7 when the path is too
    /// long for a Unix socket.
    pub fn new(
        conf: &NetConf,
        key: &AttachmentKey,
        device: Option<&str>,
        switch_is_server: bool,
        mut info: Value,
    ) -> Result<SocketPlan, CniError> {
        let (dir, path, pod_path, shorter) = match (device, conf.kind.device_kind()) {
            (Some(id), Some(kind)) => {
                let dir = devices::host_dir(&conf.device_root, id);
                let path = dir.join(devices::socket_name(kind));
                let pod_path = devices::container_dir(id).join(devices::socket_name(kind));
                (dir, path, pod_path, ("deviceRoot", &conf.device_root))
            }
            _ => {
                let dir = conf
                    .socket_dir
                    .join(&format!("{:016x}", fnv1a(key.container_id.as_bytes()))[..12]);
                let path = dir.join(format!("{}.sock", key.ifname));
                (dir, path.clone(), path, ("socketDir", &conf.socket_dir))
            }
        };
        for p in [&path, &pod_path] {
            let len = p.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(CniError::config(
                    format!(
                        "socket path {:?} is {len} bytes, over the {MAX_SOCKET_PATH}-byte limit of a Unix socket path: set a shorter {}",
                        p,
                        shorter.0
                    ),
                    format!("{} is {} bytes", shorter.0, shorter.1.as_os_str().len()),
                ));
            }
        }
        let kind = info["type"].as_str().unwrap_or_default().to_owned();
        info[kind.as_str()]["path"] = Value::from(pod_path.display().to_string());
        Ok(SocketPlan {
            dir,
            path,
            device: device.map(str::to_owned),
            pod_path,
            switch_is_server,
            device_info: info,
        })
    }
}
