//! The attachment kinds, each behind one interface ([`kind::Attachment`]: plan, apply,
//! undo, check): [`vhost_user`], [`memif`] (both on [`socket`]), [`kernel`] and [`sriov`].
//! [`addresses`] gives a pod interface its IPs. `crate::plugin` runs a command through the
//! kind [`of`] a config, or [`named`] in a record.

pub mod addresses;
pub mod kernel;
pub mod kind;
pub mod memif;
pub mod socket;
pub mod sriov;
pub mod vhost_user;

use crate::config::{Kind, NetConf};
use crate::error::CniError;
use crate::invocation::Invocation;
use crate::plan::{Basis, Plan};
use kind::Attachment;

/// The attachment kind of a config.
pub fn of(kind: &Kind) -> &'static dyn Attachment {
    match kind {
        Kind::VhostUser { .. } => &vhost_user::VhostUser,
        Kind::Memif { .. } => &memif::Memif,
        Kind::Kernel => &kernel::Kernel,
        Kind::Sriov(_) => &sriov::Sriov,
    }
}

/// The attachment kind a record names ([`Kind::name`]); `None` for a name no kind has.
pub fn named(name: &str) -> Option<&'static dyn Attachment> {
    Some(match name {
        "vhost-user" => &vhost_user::VhostUser,
        "memif" => &memif::Memif,
        "kernel" => &kernel::Kernel,
        "sriov" => &sriov::Sriov,
        _ => return None,
    })
}

/// Every kind, for undoing a record whose kind is unknown (each undoes only what the record
/// names).
pub const ALL: [&dyn Attachment; 4] = [
    &vhost_user::VhostUser,
    &memif::Memif,
    &kernel::Kernel,
    &sriov::Sriov,
];

/// The plan of `inv` under `conf`: names, paths and port spec, nothing touched. A
/// vhost-user or memif socket goes into `device`'s directory when one is given
/// ([`crate::handoff`] decides which).
pub fn plan(conf: &NetConf, inv: &Invocation, device: Option<&str>) -> Result<Plan, CniError> {
    of(&conf.kind).plan(conf, inv, Basis::new(conf, inv)?, device)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::invocation::{CniArgs, Command};
    use heddle_api::PortMode;
    use std::path::PathBuf;

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
        let p = plan(&conf(r#","kind":"vhost-user""#), &inv("abc", "net1"), None).unwrap();
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
        assert_eq!(port.mtu, None, "no mtu in the config: the switch's default");
    }

    #[test]
    fn the_config_mtu_is_the_switch_port_mtu_for_every_switch_kind() {
        for kind in ["vhost-user", "memif", "kernel"] {
            let c = conf(&format!(r#","kind":"{kind}","mtu":9000"#));
            let p = plan(&c, &inv("abc", "net1"), None).unwrap();
            assert_eq!(p.port.unwrap().mtu, Some(9000), "{kind}");
        }
    }

    #[test]
    fn vhost_user_devargs_per_backend() {
        let c = conf(
            r#","kind":"vhost-user","backend":"dpdk","queues":2,"socketOwner":1000,"socketGroup":"0","socketMode":"0660""#,
        );
        let p = plan(&c, &inv("abc", "net1"), None).unwrap();
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
        let p = plan(&c, &inv("abc", "net1"), None).unwrap();
        assert_eq!(
            p.port.unwrap().devargs,
            format!("vhost-user-{id},iface={sock},queues=2,owner=1000,group=0,perm=0660")
        );
        let c = conf(r#","kind":"vhost-user","backend":"native""#);
        let d = plan(&c, &inv("abc", "net1"), None)
            .unwrap()
            .port
            .unwrap()
            .devargs;
        assert_eq!(d, format!("vhost-user-{id},iface={sock},perm=0660"));
        assert_eq!(id.len(), 16);
        let c =
            conf(r#","kind":"vhost-user","backend":"native","vhostMode":"client","socketOwner":7"#);
        let d = plan(&c, &inv("abc", "net1"), None)
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
        let p = plan(&c, &inv("abc", "net1"), None).unwrap();
        assert!(p.port.is_none() && p.socket.is_none());
        let vf = p.vf.unwrap();
        assert_eq!(vf.candidates, ["0000:03:02.0"]);
        assert_eq!(vf.mac, None);
        let c = conf(r#","kind":"sriov","mac":"02:00:00:00:00:05""#);
        let mut i = inv("abc", "net1");
        i.pci_devices = vec![("PCIDEVICE_X_COM_VF".into(), "0000:03:02.1".into())];
        let vf = plan(&c, &i, None).unwrap().vf.unwrap();
        assert_eq!(vf.candidates, ["0000:03:02.1"]);
        assert_eq!(vf.mac, Some([2, 0, 0, 0, 0, 5]));
        assert_eq!(
            plan(&conf(r#","kind":"sriov""#), &inv("abc", "net1"), None)
                .unwrap_err()
                .code,
            7
        );
    }

    #[test]
    fn names_are_stable_and_distinct() {
        let c = conf(r#","kind":"vhost-user","vhostMode":"client""#);
        let a = plan(&c, &inv("abc", "net1"), None).unwrap();
        let b = plan(&c, &inv("abc", "net1"), None).unwrap();
        let d = plan(&c, &inv("abc", "net2"), None).unwrap();
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
            plan(&c, &inv(&long, "net1"), None)
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
        let e = plan(
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
        let e = plan(
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
        let p = plan(&c, &inv("abc", "net1"), Some("vhost-user-3")).unwrap();
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
        let m = plan(
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
        let p = plan(&c, &inv("abc", "net1"), None).unwrap();
        let s = p.socket.unwrap();
        assert_eq!((s.device, &s.pod_path), (None, &s.path));
        // A device root too long for a Unix socket path names deviceRoot.
        let long = format!(r#","kind":"vhost-user","deviceRoot":"/{}""#, "r".repeat(80));
        let e = plan(&conf(&long), &inv("abc", "net1"), Some("vhost-user-12")).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(
            e.msg.contains("107-byte") && e.msg.contains("shorter deviceRoot"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn memif_and_kernel_plans() {
        let p = plan(
            &conf(r#","kind":"memif","ringSize":2048"#),
            &inv("abc", "m0"),
            None,
        )
        .unwrap();
        let d = &p.port.as_ref().unwrap().devargs;
        assert!(
            d.starts_with("memif-") && d.contains("role=server") && d.contains("perm=0660"),
            "the native memif port by default: {d}"
        );
        assert_eq!(p.socket.unwrap().device_info["memif"]["role"], "slave");
        let dpdk = plan(
            &conf(r#","kind":"memif","ringSize":2048,"backend":"dpdk""#),
            &inv("abc", "m0"),
            None,
        )
        .unwrap();
        let d = &dpdk.port.as_ref().unwrap().devargs;
        assert!(
            d.starts_with("net_memif_")
                && d.contains("role=server")
                && d.contains("rsize=11")
                && d.contains("socket-abstract=no"),
            "{d}"
        );
        // A pod that is the memif server gets net_memif (the native port serves only).
        let pod_server = plan(
            &conf(r#","kind":"memif","memifRole":"server""#),
            &inv("abc", "m0"),
            None,
        )
        .unwrap();
        let d = &pod_server.port.as_ref().unwrap().devargs;
        assert!(
            d.starts_with("net_memif_") && d.contains("role=client"),
            "{d}"
        );
        let parse = |extra: &str| {
            NetConf::parse(
                format!(r#"{{"cniVersion":"1.1.0","name":"n3","type":"heddle-cni","vlan":100,"kind":"memif"{extra}}}"#)
                    .as_bytes(),
                true,
            )
            .unwrap_err()
        };
        let e = parse(r#","memifRole":"server","backend":"native""#);
        assert!(
            e.code == 7 && e.msg.contains("backend \"dpdk\""),
            "{}",
            e.msg
        );
        let e = parse(r#","backend":"vpp""#);
        assert!(e.msg.contains("\"native\""), "{}", e.msg);
        let k = plan(
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
        assert_eq!(plan(&c, &i, None).unwrap().mac[5], 1);
        let c = conf(r#","kind":"kernel","mac":"02:00:00:00:00:03""#);
        assert_eq!(plan(&c, &i, None).unwrap().mac[5], 2);
        i.args.mac = Some("nonsense".into());
        assert_eq!(plan(&c, &i, None).unwrap_err().code, 4);
    }
}
