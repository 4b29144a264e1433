//! Cluster mode: leases in the network's address blocks on the API server, through the
//! block allocator ([`controller::blocks`]): this node allocates from the blocks it claimed,
//! claims another when they are full, borrows from another node's block only when every
//! block is claimed; every write is conditional on `resourceVersion`.
//!
//! The network is the `Network` `ipam.network` in `ipam.namespace`, or the `ClusterNetwork`
//! of that name when no namespace is given (its allocation object lives in
//! `ipam.systemNamespace`). The plugin needs `get` on networks / clusternetworks and `get`,
//! `list`, `create`, `update` on networkaddressblocks. It waits (CNI error 11, try again)
//! until the manager has set up the network's blocks (`status.addressBlocks`), which is also
//! when a network's old `NetworkAllocation` has been migrated.
//!
//! GC does not release anything here: the blocks hold the leases of every node,
//! and a runtime's `cni.dev/valid-attachments` only lists its own node's attachments, so
//! releasing "everything not listed" would free addresses of live pods elsewhere. Leases
//! whose DEL never came are the manager's leak collector's job.
//!
//! [`controller::blocks`]: crate::controller::blocks

use std::path::Path;

use heddle_cni::error::{code, CniError};
use heddle_cni::{Command, Invocation};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Resource};
use serde_json::Value;

use super::{owner, requested, result, Mode, Request};
use crate::controller::blocks::BlockAllocator;
use crate::controller::ControllerError;
use crate::crd::{
    allocation_object, network_key, AllocationMode, ClusterNetwork, Network, NetworkAddressBlock,
};
use crate::ipam::IpamError;

fn unreachable_api(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(
        code::TRY_AGAIN_LATER,
        format!(
            "{what}: the Kubernetes API server is not reachable; retry, or fix ipam.kubeconfig"
        ),
        e.to_string(),
    )
}

/// The CNI error for an API error.
fn kube_error(what: &str, e: kube::Error) -> CniError {
    match &e {
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => CniError::new(
            code::IPAM,
            format!("{what}: the API server refused heddle-ipam's credentials; give them get on networks/clusternetworks and get, list, create, update on networkaddressblocks (heddle.dev)"),
            e.to_string(),
        ),
        kube::Error::Api(_) => CniError::new(code::IPAM, format!("{what}: the API server refused the request"), e.to_string()),
        _ => unreachable_api(what, e),
    }
}

/// The CNI error for a failed allocation or release.
fn allocator_error(e: ControllerError) -> CniError {
    match e {
        ControllerError::Kube(k) => kube_error("network allocation", k),
        ControllerError::Contention(what) => CniError::new(
            code::TRY_AGAIN_LATER,
            format!("{what}: too many nodes allocated at once; retry"),
            "gave up after repeated 409 conflicts",
        ),
        ControllerError::Ipam {
            network,
            source: source @ IpamError::Exhausted { .. },
        } => CniError::new(
            code::IPAM,
            format!("network {network}: {source}"),
            "every address of the pool is leased: widen spec.ipv4/spec.ipv6 ranges of the network, or delete pods that are gone (the manager collects leases of deleted pods)",
        ),
        ControllerError::Ipam { network, source } => CniError::new(
            code::IPAM,
            format!("network {network}: {source}"),
            "heddle-ipam cluster mode",
        ),
        e @ ControllerError::MissingField(..) => {
            CniError::new(code::IPAM, e.to_string(), "heddle-ipam cluster mode")
        }
    }
}

/// A client from the kubeconfig file, or the in-cluster configuration without one.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, CniError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| {
                CniError::config(
                    format!("ipam.kubeconfig {} cannot be read", path.display()),
                    e.to_string(),
                )
            })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| {
                    CniError::config(
                        format!("ipam.kubeconfig {} is not usable", path.display()),
                        e.to_string(),
                    )
                })?
        }
        None => kube::Config::incluster().map_err(|e| {
            CniError::config(
                "no ipam.kubeconfig and no in-cluster configuration: name a kubeconfig file",
                e.to_string(),
            )
        })?,
    };
    Client::try_from(config).map_err(|e| unreachable_api("building the API client", e))
}

/// Runs one call on a runtime of its own (the plugin is a short-lived process).
pub fn run(req: &Request, inv: &Invocation) -> Result<Option<Value>, CniError> {
    let Mode::Cluster { kubeconfig, .. } = &req.ipam.mode else {
        unreachable!("cluster::run is only called in cluster mode");
    };
    if inv.command == Command::Gc {
        eprintln!("heddle-ipam: GC in cluster mode releases nothing: leases are cluster-wide and heddle-manager collects those of deleted pods");
        return Ok(None);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::new(
                code::IO_FAILURE,
                "cannot start the async runtime",
                e.to_string(),
            )
        })?;
    rt.block_on(async {
        let client = client(kubeconfig.as_deref()).await?;
        run_with(client, req, inv).await
    })
}

/// The node this call runs on: `ipam.node`, else `NODE_NAME`, else the host name (the
/// kubelet's default node name).
pub fn node_name(configured: Option<&str>) -> Result<String, CniError> {
    if let Some(n) = configured.filter(|n| !n.is_empty()) {
        return Ok(n.to_string());
    }
    if let Some(n) = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()) {
        return Ok(n);
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            CniError::config(
                "cannot tell which node this is: set ipam.node to the Kubernetes node name",
                "no NODE_NAME and no host name",
            )
        })
}

/// Runs one call with `client` (the tests pass a fake API server).
pub async fn run_with(
    client: Client,
    req: &Request,
    inv: &Invocation,
) -> Result<Option<Value>, CniError> {
    let Mode::Cluster {
        namespace,
        system_namespace,
        node,
        ..
    } = &req.ipam.mode
    else {
        unreachable!("cluster::run_with is only called in cluster mode");
    };
    let net = req.ipam.network.as_str();
    let key = network_key(namespace.as_deref(), net);
    let found = match namespace {
        Some(ns) => Api::<Network>::namespaced(client.clone(), ns)
            .get_opt(net)
            .await
            .map(|n| n.map(|n| (n.controller_owner_ref(&()), n.spec, n.status))),
        None => Api::<ClusterNetwork>::all(client.clone())
            .get_opt(net)
            .await
            .map(|n| n.map(|n| (n.controller_owner_ref(&()), n.spec.network, n.status))),
    }
    .map_err(|e| kube_error(&format!("network {key}"), e))?;
    let Some((owner_ref, spec, status)) = found else {
        if inv.command == Command::Del {
            // The network is gone, and its address blocks with it: nothing to free.
            return Ok(None);
        }
        let kind = if namespace.is_some() {
            "Network"
        } else {
            "ClusterNetwork"
        };
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("network {key} does not exist: create the {kind} (heddle.dev) or fix ipam.network / ipam.namespace"),
            "heddle-ipam cluster mode",
        ));
    };
    let (alloc_ns, alloc_name) = allocation_object(namespace.as_deref(), net, system_namespace);
    let ready = status.as_ref().is_some_and(|s| s.address_blocks.is_some());
    let not_ready = || {
        CniError::new(
            code::TRY_AGAIN_LATER,
            format!("network {key} has no address blocks yet: heddle-manager sets up (or migrates) them when it reconciles the network; retry"),
            "is heddle-manager running?",
        )
    };
    let node = node_name(node.as_deref())?;
    let allocator = BlockAllocator::new(
        Api::<NetworkAddressBlock>::namespaced(client, &alloc_ns),
        &alloc_name,
        &key,
        &spec,
        &node,
        owner_ref,
    )
    .map_err(allocator_error)?;
    let owner = owner(inv);
    match inv.command {
        Command::Add => {
            let requested = requested(req, inv)?;
            if !ready && spec.allocation != AllocationMode::None {
                return Err(not_ready());
            }
            let addresses = allocator
                .allocate(&owner, &requested)
                .await
                .map_err(allocator_error)?;
            let r = result(&key, &spec, &addresses, &req.ipam)?;
            Ok(Some(r.render(&req.cni_version)))
        }
        Command::Del => allocator
            .release(&owner)
            .await
            .map(|_| None)
            .map_err(allocator_error),
        Command::Check => {
            if !ready {
                return Err(not_ready());
            }
            let mut held: Vec<String> = Vec::new();
            for b in allocator.my_blocks().await.map_err(allocator_error)? {
                held.extend(b.spec.leases.get(&owner).cloned().unwrap_or_default());
            }
            if held.is_empty() {
                return Err(CniError::new(
                    code::UNKNOWN_CONTAINER,
                    format!("{owner} holds no address on network {key}"),
                    "run DEL and ADD again",
                ));
            }
            let missing: Vec<_> = requested(req, inv)?
                .into_iter()
                .filter(|a| !held.contains(&a.to_string()))
                .collect();
            if !missing.is_empty() {
                return Err(CniError::new(
                    code::IPAM,
                    format!("{owner} holds {held:?} on network {key}, not {missing:?}"),
                    "run DEL and ADD again",
                ));
            }
            Ok(None)
        }
        Command::Status => {
            // STATUS reports "not available" (50) whatever the cause.
            if !ready {
                let e = not_ready();
                return Err(CniError::new(code::NOT_AVAILABLE, e.msg, e.details));
            }
            Ok(None)
        }
        Command::Gc | Command::Version => Ok(None),
    }
}
