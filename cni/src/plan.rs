//! The pure decision: from the checked config and environment, every name, path and port
//! spec an attachment will have. Nothing here touches the system, so DEL can recompute the
//! same names without a record, and tests can check them directly.

use std::path::PathBuf;

use heddle_api::{MacText, PortMode, PortSpec};
use serde_json::Value;

use crate::config::{parse_unicast_mac, Kind, NetConf, VhostBackend, MAX_SOCKET_PATH};
use crate::devices;
use crate::error::{code, CniError};
use crate::handoff;
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

/// A locally administered unicast MAC derived from the attachment.
pub fn derived_mac(key: &AttachmentKey) -> [u8; 6] {
    let h = fnv1a(format!("mac/{}/{}", key.container_id, key.ifname).as_bytes()).to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

impl Plan {
    /// Decides names and specs for `inv` under `conf`; a vhost-user or memif socket goes into
    /// `device`'s directory when one is given ([`crate::handoff`] decides which).
    pub fn new(conf: &NetConf, inv: &Invocation, device: Option<&str>) -> Result<Plan, CniError> {
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
        let asked = match (&conf.runtime.mac, args_mac, conf.mac) {
            (Some(m), _, _) => Some(parse_unicast_mac(m)?),
            (None, Some(m), _) => Some(m),
            (None, None, Some(m)) => Some(m),
            _ => None,
        };
        let mac = asked.unwrap_or_else(|| derived_mac(&key));
        let mac_text = MacText(mac).to_string();
        let access = PortMode::Access { vlan: conf.vlan };
        let socket = |switch_is_server: bool, info: Value| -> Result<SocketPlan, CniError> {
            let (dir, path, pod_path, shorter) = match (device, handoff::device_kind(&conf.kind)) {
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
            let mut info = info;
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
        };
        let plan = match &conf.kind {
            Kind::VhostUser {
                switch_is_server,
                queues,
                backend,
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
                let devargs = vhost_user_devargs(*backend, &id, &s, *queues, conf);
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
                    vf: None,
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
                            // NPWG device-info 1.1.0: "slave" when the host creates the
                            // socket, "master" when the pod does.
                            "role": if *switch_is_server { "slave" } else { "master" },
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
                    vf: None,
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
                    vf: None,
                    key,
                    mac,
                }
            }
            Kind::Sriov(sriov) => Plan {
                port: None,
                socket: None,
                host_veth: None,
                peer_tmp: None,
                vf: Some(VfPlan {
                    candidates: crate::sriov::device_candidates(
                        conf.runtime.device_id.as_deref(),
                        conf.device_id.as_deref(),
                        sriov.resource_name.as_deref(),
                        &inv.pci_devices,
                    )?,
                    mac: asked,
                }),
                key,
                mac,
            },
        };
        Ok(plan)
    }
}

/// The switch port's devargs for a vhost-user socket. DPDK: `net_vhost_<id>,iface=<socket>
/// [,client=1][,queues=N]` (heddle-cni sets the socket's owner and mode afterwards). Native:
/// `vhost-user-<id>,iface=<socket>[,client=1][,queues=N][,owner=<uid>][,group=<gid>]
/// [,perm=<octal>]`, the switch creating the socket with them (server mode only: in client
/// mode the pod owns the socket).
pub fn vhost_user_devargs(
    backend: VhostBackend,
    id: &str,
    s: &SocketPlan,
    queues: u16,
    conf: &NetConf,
) -> String {
    let mut d = match backend {
        VhostBackend::Dpdk => format!("net_vhost_{id},iface={}", s.path.display()),
        VhostBackend::Native => format!("vhost-user-{id},iface={}", s.path.display()),
    };
    if !s.switch_is_server {
        d.push_str(",client=1");
    }
    if queues > 1 {
        d.push_str(&format!(",queues={queues}"));
    }
    if backend == VhostBackend::Native && s.switch_is_server {
        if let Some(uid) = conf.socket_owner {
            d.push_str(&format!(",owner={uid}"));
        }
        if let Some(gid) = conf.socket_group {
            d.push_str(&format!(",group={gid}"));
        }
        d.push_str(&format!(",perm={:04o}", conf.socket_mode & 0o777));
    }
    d
}

#[cfg(test)]
pub(crate) mod tests {
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
            sysfs_root: "/sys".into(),
            pci_devices: vec![],
        }
    }

    /// A network config `n3` on VLAN 100 with `extra` keys appended.
    pub(crate) fn conf(extra: &str) -> NetConf {
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
        let p = Plan::new(&conf(r#","kind":"vhost-user""#), &inv("abc", "net1"), None).unwrap();
        let port = p.port.unwrap();
        assert_eq!(port.name, "cni/abc/net1");
        assert!(port.devargs.starts_with("vhost-user-"), "{}", port.devargs);
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
    fn vhost_user_devargs_per_backend() {
        let c = conf(
            r#","kind":"vhost-user","backend":"dpdk","queues":2,"socketOwner":1000,"socketGroup":"0","socketMode":"0660""#,
        );
        let p = Plan::new(&c, &inv("abc", "net1"), None).unwrap();
        let sock = p.socket.as_ref().unwrap().path.display().to_string();
        let id = p.key.id();
        assert_eq!(
            p.port.unwrap().devargs,
            format!("net_vhost_{id},iface={sock},queues=2"),
            "dpdk: ownership is applied by chown/chmod, not devargs"
        );
        let c = conf(
            r#","kind":"vhost-user","backend":"native","queues":2,"socketOwner":1000,"socketGroup":"0","socketMode":"0660""#,
        );
        let p = Plan::new(&c, &inv("abc", "net1"), None).unwrap();
        assert_eq!(
            p.port.unwrap().devargs,
            format!("vhost-user-{id},iface={sock},queues=2,owner=1000,group=0,perm=0660")
        );
        let c = conf(r#","kind":"vhost-user","backend":"native""#);
        let d = Plan::new(&c, &inv("abc", "net1"), None)
            .unwrap()
            .port
            .unwrap()
            .devargs;
        assert_eq!(d, format!("vhost-user-{id},iface={sock},perm=0660"));
        assert_eq!(id.len(), 16);
        let c =
            conf(r#","kind":"vhost-user","backend":"native","vhostMode":"client","socketOwner":7"#);
        let d = Plan::new(&c, &inv("abc", "net1"), None)
            .unwrap()
            .port
            .unwrap()
            .devargs;
        assert_eq!(
            d,
            format!("vhost-user-{id},iface={sock},client=1"),
            "the pod owns a client-mode socket"
        );
    }

    #[test]
    fn sriov_plan_takes_the_device_id_and_only_an_asked_mac() {
        let c = conf(r#","kind":"sriov","runtimeConfig":{"deviceID":"0000:03:02.0"}"#);
        let p = Plan::new(&c, &inv("abc", "net1"), None).unwrap();
        assert!(p.port.is_none() && p.socket.is_none());
        let vf = p.vf.unwrap();
        assert_eq!(vf.candidates, ["0000:03:02.0"]);
        assert_eq!(vf.mac, None);
        let c = conf(r#","kind":"sriov","mac":"02:00:00:00:00:05""#);
        let mut i = inv("abc", "net1");
        i.pci_devices = vec![("PCIDEVICE_X_COM_VF".into(), "0000:03:02.1".into())];
        let vf = Plan::new(&c, &i, None).unwrap().vf.unwrap();
        assert_eq!(vf.candidates, ["0000:03:02.1"]);
        assert_eq!(vf.mac, Some([2, 0, 0, 0, 0, 5]));
        assert_eq!(
            Plan::new(&conf(r#","kind":"sriov""#), &inv("abc", "net1"), None)
                .unwrap_err()
                .code,
            7
        );
    }

    #[test]
    fn names_are_stable_and_distinct() {
        let c = conf(r#","kind":"vhost-user","vhostMode":"client""#);
        let a = Plan::new(&c, &inv("abc", "net1"), None).unwrap();
        let b = Plan::new(&c, &inv("abc", "net1"), None).unwrap();
        let d = Plan::new(&c, &inv("abc", "net2"), None).unwrap();
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
            Plan::new(&c, &inv(&long, "net1"), None)
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
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("107-byte"), "{}", e.msg);
    }

    /// A socketDir holding a newline was printed raw, so the refusal spanned lines; the path
    /// is quoted now (reproducer: `fuzz/corpus/call/long-socket-dir-with-newline`).
    #[test]
    fn too_long_socket_path_refusal_is_one_line() {
        let dir = format!("/{}\\n{}", "d".repeat(50), "e".repeat(50));
        let e = Plan::new(
            &conf(&format!(r#","kind":"memif","socketDir":"{dir}""#)),
            &inv("abc", "net1"),
            None,
        )
        .unwrap_err();
        assert!(e.msg.contains("107-byte"), "{}", e.msg);
        assert!(!e.msg.contains('\n'), "{:?}", e.msg);
    }

    #[test]
    fn a_device_holds_the_socket_on_the_host_and_device_info_names_the_container_path() {
        let c = conf(r#","kind":"vhost-user","deviceRoot":"/var/run/hd""#);
        let p = Plan::new(&c, &inv("abc", "net1"), Some("vhost-user-3")).unwrap();
        let s = p.socket.as_ref().unwrap();
        assert_eq!(s.dir, PathBuf::from("/var/run/hd/vhost-user-3"));
        assert_eq!(
            s.path,
            PathBuf::from("/var/run/hd/vhost-user-3/vhost-user.sock")
        );
        assert_eq!(s.device.as_deref(), Some("vhost-user-3"));
        assert_eq!(
            s.device_info["vhost-user"]["path"],
            "/run/heddle/devices/vhost-user-3/vhost-user.sock"
        );
        assert_eq!(s.device_info["vhost-user"]["mode"], "client");
        let devargs = &p.port.as_ref().unwrap().devargs;
        assert!(
            devargs.contains(",iface=/var/run/hd/vhost-user-3/vhost-user.sock"),
            "the switch binds the host path: {devargs}"
        );
        let m = Plan::new(
            &conf(r#","kind":"memif","memifRole":"server""#),
            &inv("abc", "m1"),
            Some("memif-0"),
        )
        .unwrap();
        let s = m.socket.unwrap();
        assert_eq!(
            s.path,
            PathBuf::from("/run/heddle/devices/memif-0/memif.sock")
        );
        assert_eq!(s.device_info["memif"]["role"], "master");
        assert!(m
            .port
            .unwrap()
            .devargs
            .contains("role=client,socket=/run/heddle/devices/memif-0/memif.sock"));
        // Without a device, the pod's socket directory as before, and the same path for both.
        let p = Plan::new(&c, &inv("abc", "net1"), None).unwrap();
        let s = p.socket.unwrap();
        assert_eq!((s.device, &s.pod_path), (None, &s.path));
        // A device root too long for a Unix socket path names deviceRoot.
        let long = format!(r#","kind":"vhost-user","deviceRoot":"/{}""#, "r".repeat(80));
        let e = Plan::new(&conf(&long), &inv("abc", "net1"), Some("vhost-user-12")).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(
            e.msg.contains("107-byte") && e.msg.contains("shorter deviceRoot"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn memif_and_kernel_plans() {
        let p = Plan::new(
            &conf(r#","kind":"memif","ringSize":2048"#),
            &inv("abc", "m0"),
            None,
        )
        .unwrap();
        let d = &p.port.as_ref().unwrap().devargs;
        assert!(
            d.contains("role=server") && d.contains("rsize=11") && d.contains("socket-abstract=no"),
            "{d}"
        );
        assert_eq!(p.socket.unwrap().device_info["memif"]["role"], "slave");
        let k = Plan::new(
            &conf(r#","kind":"kernel","mac":"02:11:22:33:44:55""#),
            &inv("abc", "eth0"),
            None,
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
        assert_eq!(Plan::new(&c, &i, None).unwrap().mac[5], 1);
        let c = conf(r#","kind":"kernel","mac":"02:00:00:00:00:03""#);
        assert_eq!(Plan::new(&c, &i, None).unwrap().mac[5], 2);
        i.args.mac = Some("nonsense".into());
        assert_eq!(Plan::new(&c, &i, None).unwrap_err().code, 4);
    }
}
