//! `kind: memif`: a memif socket in the pod's socket directory (or its device's), served by a
//! DPDK `net_memif` switch port.

use heddle_api::PortSpec;
use serde_json::Value;

use super::socket::SocketKind;
use crate::config::{Kind, NetConf};
use crate::plan::{Basis, SocketPlan};

/// The memif kind.
pub struct Memif;

/// The `memif` fields of the config: (switch is server, ring size).
fn params(conf: &NetConf) -> (bool, u32) {
    match conf.kind {
        Kind::Memif {
            switch_is_server,
            ring_size,
        } => (switch_is_server, ring_size),
        _ => unreachable!("attach::of gives Memif only memif configs"),
    }
}

impl SocketKind for Memif {
    fn socket(&self, conf: &NetConf) -> (bool, Value) {
        let (switch_is_server, _) = params(conf);
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
        let (_, ring_size) = params(conf);
        let devargs = format!(
            "net_memif_{},role={},socket={},socket-abstract=no,id=0,rsize={}",
            basis.key.id(),
            if s.switch_is_server {
                "server"
            } else {
                "client"
            },
            s.path.display(),
            ring_size.trailing_zeros()
        );
        basis.access_port(conf, devargs, None)
    }

    fn switch_sets_owner(&self, _conf: &NetConf) -> bool {
        // DPDK's net_memif creates the socket as root: heddle-cni sets its owner and mode.
        false
    }
}
