//! Embedded mode: leases in the node's [`EmbeddedStore`], networks from the networks file.
//!
//! Every call opens the store, which takes its exclusive file lock, replays it, makes its one
//! change durable (`fdatasync`) and drops it, releasing the lock: concurrent CNI calls on a
//! node queue on the lock and never see each other's half-written records.

use heddle_cni::error::{code, CniError};
use heddle_cni::{Command, Invocation};
use serde_json::Value;

use super::{owner, requested, result, Mode, Request};
use crate::embedded::{EmbeddedConfig, EmbeddedStore, StoreError};
use crate::ipam::IpamError;

/// The CNI error for a store error (the message already names the fix).
pub fn store_error(e: StoreError) -> CniError {
    let c = match &e {
        StoreError::Io { .. } | StoreError::Corrupt { .. } => code::IO_FAILURE,
        StoreError::Config(_) | StoreError::UnknownNetwork(_) | StoreError::Vlan { .. } => {
            code::INVALID_CONFIG
        }
        StoreError::Ipam { .. } => code::IPAM,
    };
    let details = match &e {
        StoreError::Ipam {
            source: IpamError::Exhausted { .. },
            ..
        } => "every address of the pool is leased: widen the network's ranges or subnet in the networks file, or DEL attachments that are gone (CNI GC releases leases of attachments the runtime no longer knows)",
        StoreError::Ipam { .. } => "heddle-ipam embedded mode",
        StoreError::UnknownNetwork(_) => "ipam.network names no network of the networks file (ipam.config)",
        _ => "heddle-ipam embedded mode",
    };
    CniError::new(c, e.to_string(), details)
}

/// Runs ADD, DEL, CHECK, GC or STATUS against the embedded store.
pub fn run(req: &Request, inv: &Invocation) -> Result<Option<Value>, CniError> {
    let Mode::Embedded { store, config } = &req.ipam.mode else {
        unreachable!("local::run is only called in embedded mode");
    };
    let net = req.ipam.network.as_str();
    let cfg = EmbeddedConfig::read(config).map_err(store_error)?;
    let Some(spec) = cfg.networks.get(net).cloned() else {
        if inv.command == Command::Del {
            // The network left the file; the store drops its leases at the next open.
            eprintln!("heddle-ipam: DEL: network {net:?} is no longer configured; nothing to free");
            return Ok(None);
        }
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "network {net:?} is not in {}: add it under `networks` or fix ipam.network",
                config.display()
            ),
            format!(
                "networks there: {}",
                cfg.networks.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    let open = || EmbeddedStore::open(store, cfg.clone()).map_err(store_error);
    match inv.command {
        Command::Add => {
            let requested = requested(req, inv)?;
            let addresses = open()?
                .allocate(net, &owner(inv), &requested)
                .map_err(store_error)?;
            let r = result(net, &spec, &addresses, &req.ipam)?;
            Ok(Some(r.render(&req.cni_version)))
        }
        Command::Del => {
            open()?.release(net, &owner(inv)).map_err(store_error)?;
            Ok(None)
        }
        Command::Check => {
            let store = open()?;
            let owner = owner(inv);
            let held = store
                .leases(net)
                .and_then(|l| l.get(&owner))
                .ok_or_else(|| {
                    CniError::new(
                        code::UNKNOWN_CONTAINER,
                        format!("{owner} holds no address on network {net}"),
                        "run DEL and ADD again",
                    )
                })?;
            let missing: Vec<_> = requested(req, inv)?
                .into_iter()
                .filter(|a| !held.contains(a))
                .collect();
            if !missing.is_empty() {
                return Err(CniError::new(
                    code::IPAM,
                    format!("{owner} holds {held:?} on network {net}, not {missing:?}"),
                    "run DEL and ADD again",
                ));
            }
            Ok(None)
        }
        Command::Gc => {
            let valid: std::collections::BTreeSet<String> = req
                .valid_attachments
                .iter()
                .map(|v| format!("{}/{}", v.container_id, v.ifname))
                .collect();
            let released = open()?
                .collect_leaks(net, |o| valid.contains(o))
                .map_err(store_error)?;
            for o in released {
                eprintln!("heddle-ipam: GC released the lease of {o} on network {net}");
            }
            Ok(None)
        }
        Command::Status => {
            // The store opens (directory writable, state consistent) and the network has an
            // address to give.
            let store = open()?;
            let ipam = store
                .network(net)
                .expect("configured networks have an allocator");
            let full = [ipam.counts_v4(), ipam.counts_v6()]
                .into_iter()
                .flatten()
                .any(|c| c.allocated >= c.total);
            if full {
                return Err(CniError::new(
                    code::NOT_AVAILABLE,
                    format!("network {net} has no free address left"),
                    "widen its ranges or release addresses",
                ));
            }
            Ok(None)
        }
        Command::Version => unreachable!("VERSION is answered before the mode is chosen"),
    }
}
