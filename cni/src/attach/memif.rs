//! `kind: memif`: a memif socket in the pod's socket directory (or its device's), served by a
//! DPDK `net_memif` switch port.

use heddle_api::{MacText, PortMode, PortSpec};

use super::kind::{Add, Attachment, Context};
use super::socket;
use crate::config::{Kind, NetConf};
use crate::error::CniError;
use crate::invocation::Invocation;
use crate::plan::{Basis, Plan, SocketPlan};
use crate::record::Record;
use crate::result::CniResult;

/// The memif kind.
pub struct Memif;

impl Attachment for Memif {
    fn plan(
        &self,
        conf: &NetConf,
        _inv: &Invocation,
        basis: Basis,
        device: Option<&str>,
    ) -> Result<Plan, CniError> {
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
            port: Some(PortSpec {
                name: basis.key.port_name(),
                devargs,
                mode: PortMode::Access { vlan: conf.vlan },
                mac: Some(MacText(basis.mac).to_string()),
                queues: None,
            }),
            socket: Some(s),
            ..Plan::bare(&basis)
        })
    }

    fn apply(
        &self,
        cx: &Context<'_>,
        add: &Add<'_>,
        result: &mut CniResult,
    ) -> Result<(), CniError> {
        // DPDK's net_memif creates the socket as root: heddle-cni sets its owner and mode.
        socket::apply(cx, add, false, result)
    }

    fn undo(&self, cx: &Context<'_>, r: &Record, daemon_required: bool) -> Result<(), CniError> {
        socket::undo(cx, r, daemon_required)
    }

    fn check(
        &self,
        cx: &Context<'_>,
        conf: &NetConf,
        _inv: &Invocation,
        r: &Record,
    ) -> Result<Option<String>, CniError> {
        socket::check(cx, conf, r)
    }
}
