//! The pod's addresses: from the IPAM delegate when the config has one (it gets the static
//! requests in `runtimeConfig.ips`), else the static requests themselves (`runtimeConfig.ips`
//! and `CNI_ARGS` `IP`); and the same addresses and routes as netlink wants them.

use std::net::IpAddr;

use serde_json::Value;

use crate::config::{parse_cidr, NetConf};
use crate::error::CniError;
use crate::invocation::Invocation;
use crate::ipam::{self, IpamCall};
use crate::result::{CniResult, IpConfig};

/// The result a chained ADD starts from: `prevResult`, or an empty one.
pub fn prev_or_empty(conf: &NetConf) -> Result<CniResult, CniError> {
    conf.prev_result
        .as_ref()
        .map(CniResult::from_value)
        .transpose()
        .map(Option::unwrap_or_default)
}

/// The IPAM delegate's call for `command` on this attachment.
pub fn ipam_call<'a>(command: &'a str, inv: &'a Invocation) -> IpamCall<'a> {
    IpamCall {
        command,
        container_id: &inv.container_id,
        ifname: &inv.ifname,
        netns: inv.netns.as_deref(),
        path: &inv.path,
    }
}

fn static_ips(conf: &NetConf, inv: &Invocation) -> Result<Vec<String>, CniError> {
    let mut ips = conf.runtime.ips.clone();
    if let Some(ip) = &inv.args.ip {
        if parse_cidr(ip).is_none() {
            return Err(CniError::env(
                "CNI_ARGS IP must be an address with a prefix, e.g. 10.1.0.5/24",
                format!("got {ip:?}"),
            ));
        }
        ips.push(ip.clone());
    }
    Ok(ips)
}

/// The config an IPAM delegate gets: the network config with the static addresses asked for
/// (`runtimeConfig.ips` and CNI_ARGS `IP`) in `runtimeConfig.ips`, the "ips" capability the
/// delegate honours (it gets no CNI_ARGS). With a delegate, the addresses are its to give.
fn delegate_conf(conf: &NetConf, inv: &Invocation) -> Result<Value, CniError> {
    let mut raw = conf.raw.clone();
    let ips = static_ips(conf, inv)?;
    if !ips.is_empty() {
        raw["runtimeConfig"]["ips"] = Value::from(ips);
    }
    Ok(raw)
}

/// Gives interface `idx` its addresses: from the IPAM delegate when the config has one (it
/// gets the static requests in `runtimeConfig.ips`), else the static requests themselves.
pub fn assign(
    conf: &NetConf,
    inv: &Invocation,
    result: &mut CniResult,
    idx: usize,
) -> Result<(), CniError> {
    if conf.ipam.is_some() {
        let r = ipam::run(&delegate_conf(conf, inv)?, &ipam_call("ADD", inv))?.unwrap_or_default();
        absorb_ipam(result, r, idx);
    } else {
        for ip in static_ips(conf, inv)? {
            result.ips.push(IpConfig {
                address: ip,
                gateway: None,
                interface: Some(idx),
            });
        }
    }
    Ok(())
}

fn absorb_ipam(result: &mut CniResult, r: CniResult, iface: usize) {
    for mut ip in r.ips {
        ip.interface = Some(iface);
        result.ips.push(ip);
    }
    result.routes.extend(r.routes);
    if !r.dns.is_null() {
        result.dns = r.dns;
    }
}

/// Addresses as netlink adds them: `(address, prefix)`.
pub type Addresses = Vec<(IpAddr, u8)>;
/// Routes as netlink adds them: `(destination, prefix, gateway)`.
pub type Routes = Vec<(IpAddr, u8, Option<IpAddr>)>;

/// The addresses of interface `idx` in `result`, and its routes (a route without a gateway
/// takes the gateway of an IP of the same family), as netlink wants them.
pub fn for_netlink(result: &CniResult, idx: usize) -> (Addresses, Routes) {
    let addresses = result
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(idx))
        .filter_map(|ip| parse_cidr(&ip.address))
        .collect();
    let routes = result
        .routes
        .iter()
        .filter_map(|r| {
            let (dst, len) = parse_cidr(&r.dst)?;
            let gw = r.gw.as_deref().and_then(|g| g.parse().ok()).or_else(|| {
                result
                    .ips
                    .iter()
                    .filter_map(|ip| ip.gateway.as_deref()?.parse().ok())
                    .find(|g: &IpAddr| g.is_ipv4() == dst.is_ipv4())
            });
            Some((dst, len, gw))
        })
        .collect();
    (addresses, routes)
}
