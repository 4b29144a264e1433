//! `kind: memif`: a memif socket in the pod's socket directory (or its device's), served by a
//! DPDK `net_memif` switch port.

use super::socket::SocketKind;
use crate::config::{Kind, NetConf};
use crate::error::CniError;
use crate::plan::{Basis, Plan, SocketPlan};

/// The memif kind.
pub struct Memif;

impl SocketKind for Memif {
    fn plan(&self, conf: &NetConf, basis: Basis, device: Option<&str>) -> Result<Plan, CniError> {
        let Kind::Memif {
            switch_is_server,
            ring_size,
        } = conf.kind
        else {
            unreachable!("attach::of gives Memif only memif configs")
        };
        let s = SocketPlan::new(
            conf,
            &basis.key,
            device,
            switch_is_server,
            serde_json::json!({
                "type": "memif",
                "version": "1.1.0",
                "memif": {
                    // NPWG device-info 1.1.0: "slave" when the host creates the socket,
                    // "master" when the pod does.
                    "role": if switch_is_server { "slave" } else { "master" },
                    "mode": "ethernet",
                }
            }),
        )?;
        let devargs = format!(
            "net_memif_{},role={},socket={},socket-abstract=no,id=0,rsize={}",
            basis.key.id(),
            if switch_is_server { "server" } else { "client" },
            s.path.display(),
            ring_size.trailing_zeros()
        );
        Ok(Plan {
            port: Some(basis.access_port(conf, devargs, None)),
            socket: Some(s),
            ..Plan::bare(&basis)
        })
    }

    fn switch_sets_owner(&self, _conf: &NetConf) -> bool {
        // DPDK's net_memif creates the socket as root: heddle-cni sets its owner and mode.
        false
    }
}
