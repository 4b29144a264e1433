//! `kind: memif`: a memif socket in the pod's socket directory (or its device's), served by
//! heddle-switch's native memif port (the default, switch as server) or a DPDK `net_memif`
//! port (`backend: dpdk`, and whenever the pod is the memif server).

use heddle_api::PortSpec;
use serde_json::Value;

use super::socket::SocketKind;
use crate::config::{Kind, MemifBackend, NetConf};
use crate::plan::{Basis, SocketPlan};

/// The memif kind.
pub struct Memif;

/// The `memif` fields of the config: (switch is server, ring size, backend).
fn params(conf: &NetConf) -> (bool, u32, MemifBackend) {
    match conf.kind {
        Kind::Memif {
            switch_is_server,
            ring_size,
            backend,
        } => (switch_is_server, ring_size, backend),
        _ => unreachable!("attach::of gives Memif only memif configs"),
    }
}

impl SocketKind for Memif {
    fn socket(&self, conf: &NetConf) -> (bool, Value) {
        let (switch_is_server, _, _) = params(conf);
        let info = serde_json::json!({
            "type": "memif",
            "version": "1.1.0",
            "memif": {
                // NPWG device-info 1.1.0: "slave" when the host creates the socket,
                // "master" when the pod does.
                "role": if switch_is_server { "slave" } else { "master" },
                "mode": "ethernet",
            }
        });
        (switch_is_server, info)
    }

    fn port(&self, conf: &NetConf, basis: &Basis, s: &SocketPlan) -> PortSpec {
        let (_, ring_size, backend) = params(conf);
        let devargs = devargs(backend, &basis.key.id(), s, ring_size, conf);
        basis.access_port(conf, devargs, None)
    }

    fn switch_sets_owner(&self, conf: &NetConf) -> bool {
        // The native port creates its socket with the owner and mode in its devargs; DPDK's
        // net_memif creates it as root, and heddle-cni sets them afterwards.
        let (switch_is_server, _, backend) = params(conf);
        backend == MemifBackend::Native && switch_is_server
    }
}

/// The switch port's devargs. Native: `memif-<id>,socket=<path>,role=server,id=0
/// [,owner=<uid>][,group=<gid>],perm=<octal>` (the pod picks the ring size). DPDK:
/// `net_memif_<id>,role=server|client,socket=<path>,socket-abstract=no,id=0,rsize=<log2>`.
pub fn devargs(
    backend: MemifBackend,
    id: &str,
    s: &SocketPlan,
    ring_size: u32,
    conf: &NetConf,
) -> String {
    match backend {
        MemifBackend::Native => {
            let mut d = format!("memif-{id},socket={},role=server,id=0", s.path.display());
            if let Some(uid) = conf.socket_owner {
                d.push_str(&format!(",owner={uid}"));
            }
            if let Some(gid) = conf.socket_group {
                d.push_str(&format!(",group={gid}"));
            }
            d.push_str(&format!(",perm={:04o}", conf.socket_mode & 0o777));
            d
        }
        MemifBackend::Dpdk => format!(
            "net_memif_{id},role={},socket={},socket-abstract=no,id=0,rsize={}",
            if s.switch_is_server {
                "server"
            } else {
                "client"
            },
            s.path.display(),
            ring_size.trailing_zeros()
        ),
    }
}
