//! The pure decision: from the checked config and environment, every name, path and port
//! spec an attachment will have. Nothing here touches the system, so DEL can recompute the
//! same names without a record, and tests can check them directly.

use std::path::PathBuf;

use heddle_api::{MacText, PortMode, PortSpec};
use serde_json::Value;

use crate::config::{parse_unicast_mac, Kind, NetConf, MAX_SOCKET_PATH};
use crate::error::{code, CniError};
use crate::invocation::Invocation;

/// FNV-1a, 64 bits: a stable hash for short names (not for security: every input is
/// validated before it is used in a path).
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The identity of an attachment: `(container id, ifname)`, as the spec keys it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AttachmentKey {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

impl AttachmentKey {
    /// 16 hex digits naming this attachment in DPDK device names and host interfaces.
    pub fn id(&self) -> String {
        format!(
            "{:016x}",
            fnv1a(format!("{}/{}", self.container_id, self.ifname).as_bytes())
        )
    }

    /// The record's file name: `<container id>-<ifname>.json` (both validated: no `/`).
    pub fn record_file(&self) -> String {
        format!("{}-{}.json", self.container_id, self.ifname)
    }

    /// The switch port name: `cni/<container id>/<ifname>`, or with a hash for ids too long
    /// for the daemon's 128-byte names.
    pub fn port_name(&self) -> String {
        let plain = format!("cni/{}/{}", self.container_id, self.ifname);
        if plain.len() <= 128 {
            plain
        } else {
            format!("cni/{}/{}", self.id(), self.ifname)
        }
    }
}

/// Where a vhost-user or memif socket goes and what the pod is told about it.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketPlan {
    /// The pod's socket directory (`<socketDir>/<12 hex of the container id>`).
    pub dir: PathBuf,
    /// The socket (`<dir>/<ifname>.sock`).
    pub path: PathBuf,
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
}

/// A locally administered unicast MAC derived from the attachment.
pub fn derived_mac(key: &AttachmentKey) -> [u8; 6] {
    let h = fnv1a(format!("mac/{}/{}", key.container_id, key.ifname).as_bytes()).to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

impl Plan {
    /// Decides names and specs for `inv` under `conf`.
    pub fn new(conf: &NetConf, inv: &Invocation) -> Result<Plan, CniError> {
        let key = AttachmentKey {
            container_id: inv.container_id.clone(),
            ifname: inv.ifname.clone(),
        };
        let id = key.id();
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
        let mac = match (&conf.runtime.mac, args_mac, conf.mac) {
            (Some(m), _, _) => parse_unicast_mac(m)?,
            (None, Some(m), _) => m,
            (None, None, Some(m)) => m,
            _ => derived_mac(&key),
        };
        let mac_text = MacText(mac).to_string();
        let access = PortMode::Access { vlan: conf.vlan };
        let socket = |switch_is_server: bool, info: Value| -> Result<SocketPlan, CniError> {
            let dir = conf
                .socket_dir
                .join(&format!("{:016x}", fnv1a(key.container_id.as_bytes()))[..12]);
            let path = dir.join(format!("{}.sock", key.ifname));
            let len = path.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(CniError::config(
                    format!(
                        "socket path {} is {len} bytes, over the {MAX_SOCKET_PATH}-byte limit of a Unix socket path: set a shorter socketDir",
                        path.display()
                    ),
                    format!("socketDir is {} bytes", conf.socket_dir.as_os_str().len()),
                ));
            }
            let mut info = info;
            let kind = info["type"].as_str().unwrap_or_default().to_owned();
            info[kind.as_str()]["path"] = Value::from(path.display().to_string());
            Ok(SocketPlan {
                dir,
                path,
                switch_is_server,
                device_info: info,
            })
        };
        let plan = match &conf.kind {
            Kind::VhostUser {
                switch_is_server,
                queues,
            } => {
                let s = socket(
                    *switch_is_server,
                    serde_json::json!({
                        "type": "vhost-user",
                        "version": "1.1.0",
                        "vhost-user": {
                            "mode": if *switch_is_server { "client" } else { "server" },
                        }
                    }),
                )?;
                let mut devargs = format!("net_vhost_{id},iface={}", s.path.display());
                if !switch_is_server {
                    devargs.push_str(",client=1");
                }
                if *queues > 1 {
                    devargs.push_str(&format!(",queues={queues}"));
                }
                Plan {
                    port: Some(PortSpec {
                        name: key.port_name(),
                        devargs,
                        mode: access,
                        mac: Some(mac_text),
                        queues: (*queues > 1).then_some(*queues),
                    }),
                    socket: Some(s),
                    key,
                    mac,
                    host_veth: None,
                    peer_tmp: None,
                }
            }
            Kind::Memif {
                switch_is_server,
                ring_size,
            } => {
                let s = socket(
                    *switch_is_server,
                    serde_json::json!({
                        "type": "memif",
                        "version": "1.1.0",
                        "memif": {
                            "role": if *switch_is_server { "client" } else { "server" },
                            "mode": "ethernet",
                        }
                    }),
                )?;
                let devargs = format!(
                    "net_memif_{id},role={},socket={},socket-abstract=no,id=0,rsize={}",
                    if *switch_is_server {
                        "server"
                    } else {
                        "client"
                    },
                    s.path.display(),
                    ring_size.trailing_zeros()
                );
                Plan {
                    port: Some(PortSpec {
                        name: key.port_name(),
                        devargs,
                        mode: access,
                        mac: Some(mac_text),
                        queues: None,
                    }),
                    socket: Some(s),
                    key,
                    mac,
                    host_veth: None,
                    peer_tmp: None,
                }
            }
            Kind::Kernel => {
                let host = format!("hd{}", &id[..12]);
                Plan {
                    port: Some(PortSpec {
                        name: key.port_name(),
                        devargs: format!("net_af_packet_{id},iface={host}"),
                        mode: access,
                        mac: Some(mac_text),
                        queues: None,
                    }),
                    socket: None,
                    host_veth: Some(host),
                    peer_tmp: Some(format!("hp{}", &id[..12])),
                    key,
                    mac,
                }
            }
            Kind::Sriov => {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    "kind \"sriov\" is not implemented in this heddle-cni build",
                    "SR-IOV VF hand-over needs hardware this build was not proven on",
                ))
            }
        };
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invocation::{CniArgs, Command};

    fn inv(id: &str, ifname: &str) -> Invocation {
        Invocation {
            command: Command::Add,
            container_id: id.into(),
            netns: Some("/run/netns/x".into()),
            ifname: ifname.into(),
            args: CniArgs::default(),
            path: vec![],
        }
    }

    fn conf(extra: &str) -> NetConf {
        NetConf::parse(
            format!(
                r#"{{"cniVersion":"1.1.0","name":"n3","type":"heddle-cni","vlan":100{extra}}}"#
            )
            .as_bytes(),
            true,
        )
        .unwrap()
    }

    #[test]
    fn vhost_user_server_plan() {
        let p = Plan::new(&conf(r#","kind":"vhost-user""#), &inv("abc", "net1")).unwrap();
        let port = p.port.unwrap();
        assert_eq!(port.name, "cni/abc/net1");
        assert!(port.devargs.starts_with("net_vhost_"), "{}", port.devargs);
        assert!(!port.devargs.contains("client=1"));
        assert_eq!(port.mode, PortMode::Access { vlan: 100 });
        let s = p.socket.unwrap();
        assert!(s.path.starts_with("/run/heddle/pods/"));
        assert!(s.path.ends_with("net1.sock"));
        assert_eq!(s.device_info["vhost-user"]["mode"], "client");
        assert_eq!(
            s.device_info["vhost-user"]["path"],
            s.path.display().to_string()
        );
        assert_eq!(p.mac[0] & 3, 2, "locally administered unicast");
    }

    #[test]
    fn names_are_stable_and_distinct() {
        let c = conf(r#","kind":"vhost-user","vhostMode":"client""#);
        let a = Plan::new(&c, &inv("abc", "net1")).unwrap();
        let b = Plan::new(&c, &inv("abc", "net1")).unwrap();
        let d = Plan::new(&c, &inv("abc", "net2")).unwrap();
        assert_eq!(a, b);
        assert_ne!(
            a.port.as_ref().unwrap().devargs,
            d.port.as_ref().unwrap().devargs
        );
        assert_ne!(a.mac, d.mac);
        assert_eq!(
            a.socket.as_ref().unwrap().dir,
            d.socket.as_ref().unwrap().dir
        );
        assert!(a.port.unwrap().devargs.contains("client=1"));
        let long = "a".repeat(200);
        assert!(
            Plan::new(&c, &inv(&long, "net1"))
                .unwrap()
                .port
                .unwrap()
                .name
                .len()
                <= 128
        );
    }

    #[test]
    fn too_long_socket_path_is_refused() {
        let dir = format!("/{}", "d".repeat(90));
        let e = Plan::new(
            &conf(&format!(r#","kind":"memif","socketDir":"{dir}""#)),
            &inv("abc", "net1"),
        )
        .unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("107-byte"), "{}", e.msg);
    }

    #[test]
    fn memif_and_kernel_plans() {
        let p = Plan::new(
            &conf(r#","kind":"memif","ringSize":2048"#),
            &inv("abc", "m0"),
        )
        .unwrap();
        let d = &p.port.as_ref().unwrap().devargs;
        assert!(
            d.contains("role=server") && d.contains("rsize=11") && d.contains("socket-abstract=no"),
            "{d}"
        );
        assert_eq!(p.socket.unwrap().device_info["memif"]["role"], "client");
        let k = Plan::new(
            &conf(r#","kind":"kernel","mac":"02:11:22:33:44:55""#),
            &inv("abc", "eth0"),
        )
        .unwrap();
        assert!(k.host_veth.as_ref().unwrap().len() <= 15);
        assert_eq!(k.mac, [2, 0x11, 0x22, 0x33, 0x44, 0x55]);
        assert!(k.port.unwrap().devargs.starts_with("net_af_packet_"));
    }

    #[test]
    fn mac_precedence_runtime_then_args_then_config() {
        let c = conf(
            r#","kind":"kernel","mac":"02:00:00:00:00:03","runtimeConfig":{"mac":"02:00:00:00:00:01"}"#,
        );
        let mut i = inv("abc", "eth0");
        i.args.mac = Some("02:00:00:00:00:02".into());
        assert_eq!(Plan::new(&c, &i).unwrap().mac[5], 1);
        let c = conf(r#","kind":"kernel","mac":"02:00:00:00:00:03""#);
        assert_eq!(Plan::new(&c, &i).unwrap().mac[5], 2);
        i.args.mac = Some("nonsense".into());
        assert_eq!(Plan::new(&c, &i).unwrap_err().code, 4);
    }
}
