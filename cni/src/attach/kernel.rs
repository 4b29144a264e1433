//! `kind: kernel`: a veth pair, the pod end renamed to `CNI_IFNAME` in the pod's netns (MAC,
//! MTU, addresses, routes), the host end an AF_PACKET switch port.

use heddle_api::MacText;

use super::addresses;
use super::kind::{self, Add, Attachment, Context};
use crate::config::NetConf;
use crate::error::CniError;
use crate::invocation::Invocation;
use crate::netlink;
use crate::plan::{Basis, Plan};
use crate::record::Record;
use crate::result::{CniResult, Interface};

/// The kernel (veth) kind.
pub struct Kernel;

impl Attachment for Kernel {
    fn plan(
        &self,
        conf: &NetConf,
        _inv: &Invocation,
        basis: Basis,
        _device: Option<&str>,
    ) -> Result<Plan, CniError> {
        let id = basis.key.id();
        let host = format!("hd{}", &id[..12]);
        Ok(Plan {
            port: Some(basis.access_port(conf, format!("net_af_packet_{id},iface={host}"), None)),
            host_veth: Some(host),
            peer_tmp: Some(format!("hp{}", &id[..12])),
            ..Plan::bare(&basis)
        })
    }

    fn apply(
        &self,
        cx: &Context<'_>,
        add: &Add<'_>,
        result: &mut CniResult,
    ) -> Result<(), CniError> {
        let (conf, inv, plan) = (add.conf, add.inv, add.plan);
        let netns = add.netns("a kernel")?;
        let host = plan
            .host_veth
            .clone()
            .expect("kernel plans have a host veth");
        // The host end first (no sandbox), then the pod end, as the reference plugins do.
        result.push_interface(Interface {
            name: host.clone(),
            mac: None,
            mtu: conf.mtu,
            ..Default::default()
        });
        let pod_idx = result.push_interface(Interface {
            name: inv.ifname.clone(),
            mac: Some(MacText(plan.mac).to_string()),
            mtu: conf.mtu,
            sandbox: Some(netns.display().to_string()),
            ..Default::default()
        });
        addresses::assign(conf, inv, result, pod_idx)?;
        let (addresses, routes) = addresses::for_netlink(result, pod_idx);
        netlink::create_veth(
            &host,
            &netlink::PodSide {
                netns,
                tmp_name: plan
                    .peer_tmp
                    .clone()
                    .expect("kernel plans have a peer name"),
                ifname: inv.ifname.clone(),
                mac: Some(plan.mac),
                mtu: Some(conf.mtu.unwrap_or(1500)),
                addresses,
                routes,
            },
        )?;
        if let Some(port) = &plan.port {
            cx.switch.add_port(port)?;
        }
        Ok(())
    }

    fn undo(&self, cx: &Context<'_>, r: &Record, daemon_required: bool) -> Result<(), CniError> {
        kind::remove_port(cx, r, daemon_required)?;
        if let Some(host) = &r.host_veth {
            netlink::delete_link(host)?;
        }
        Ok(())
    }

    fn check(
        &self,
        cx: &Context<'_>,
        _conf: &NetConf,
        inv: &Invocation,
        r: &Record,
    ) -> Result<Option<String>, CniError> {
        if let Some(broken) = kind::missing_port(cx, r)? {
            return Ok(Some(broken));
        }
        if let Some(host) = &r.host_veth {
            if !netlink::link_exists(host) {
                return Ok(Some(format!("host interface {host} is missing")));
            }
            if let Some(ns) = &inv.netns {
                if !netlink::pod_link_exists(ns, &inv.ifname)? {
                    return Ok(Some(format!(
                        "{} is missing in {}",
                        inv.ifname,
                        ns.display()
                    )));
                }
            }
        }
        Ok(None)
    }
}
