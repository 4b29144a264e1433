//! `kind: vhost-user`: a vhost-user socket in the pod's socket directory (or its device's),
//! served by a switch port (the native backend, or DPDK's `net_vhost`).

use heddle_api::PortSpec;
use serde_json::Value;

use super::socket::SocketKind;
use crate::config::{Kind, NetConf, VhostBackend};
use crate::plan::{Basis, SocketPlan};

/// The vhost-user kind.
pub struct VhostUser;

/// The `vhost-user` fields of the config: (switch is server, queue pairs, backend).
fn params(conf: &NetConf) -> (bool, u16, VhostBackend) {
    match conf.kind {
        Kind::VhostUser {
            switch_is_server,
            queues,
            backend,
        } => (switch_is_server, queues, backend),
        _ => unreachable!("attach::of gives VhostUser only vhost-user configs"),
    }
}

impl SocketKind for VhostUser {
    fn socket(&self, conf: &NetConf) -> (bool, Value) {
        let (switch_is_server, _, _) = params(conf);
        let info = serde_json::json!({
            "type": "vhost-user",
            "version": "1.1.0",
            "vhost-user": {
                "mode": if switch_is_server { "client" } else { "server" },
            }
        });
        (switch_is_server, info)
    }

    fn port(&self, conf: &NetConf, basis: &Basis, s: &SocketPlan) -> PortSpec {
        let (_, queues, backend) = params(conf);
        let devargs = devargs(backend, &basis.key.id(), s, queues, conf);
        basis.access_port(conf, devargs, (queues > 1).then_some(queues))
    }

    fn switch_sets_owner(&self, conf: &NetConf) -> bool {
        let (_, _, backend) = params(conf);
        backend == VhostBackend::Native
    }
}

/// The switch port's devargs for a vhost-user socket. DPDK: `net_vhost_<id>,iface=<socket>
/// [,client=1][,queues=N]` (heddle-cni sets the socket's owner and mode afterwards). Native:
/// `vhost-user-<id>,iface=<socket>[,client=1][,queues=N][,owner=<uid>][,group=<gid>]
/// [,perm=<octal>]`, the switch creating the socket with them (server mode only: in client
/// mode the pod owns the socket).
pub fn devargs(
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
