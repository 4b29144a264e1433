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

/// The file, next to `ipam.kubeconfig`, that names the node: the chart's `install-cni` init
/// container writes it (from its `NODE_NAME`, set from `spec.nodeName`) with the kubeconfig,
/// because heddle-ipam runs on the host, in the container runtime's environment, where no
/// `NODE_NAME` is set.
pub const NODE_NAME_FILE: &str = "heddle-node-name";

/// Whether `n` can be a Kubernetes node name (an RFC 1123 subdomain).
fn valid_node_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// The Kubernetes node this call runs on, which its address blocks are claimed for:
/// `ipam.node`, else `env_node` (`NODE_NAME`), else the [`NODE_NAME_FILE`] next to
/// `kubeconfig`. Never guessed from the host name (the kubelet's `--hostname-override` and
/// cloud providers name nodes otherwise, and a wrong name claims blocks for a node that does
/// not exist): without one of the three the call fails with a message naming them.
pub fn node_name(
    configured: Option<&str>,
    env_node: Option<&str>,
    kubeconfig: Option<&Path>,
) -> Result<String, CniError> {
    let file = kubeconfig.map(|k| k.with_file_name(NODE_NAME_FILE));
    let (name, source) = if let Some(n) = configured.filter(|n| !n.is_empty()) {
        (n.to_string(), "ipam.node".to_string())
    } else if let Some(n) = env_node.filter(|n| !n.is_empty()) {
        (n.to_string(), "NODE_NAME".to_string())
    } else {
        let read = file
            .as_deref()
            .map(|f| (f, std::fs::read_to_string(f)))
            .and_then(|(f, r)| match r {
                Ok(s) if !s.trim().is_empty() => Some(Ok((s.trim().to_string(), f))),
                Ok(_) => None,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => Some(Err(CniError::io("reading the node name", f, e))),
            })
            .transpose()?;
        let Some((n, f)) = read else {
            let where_file = match &file {
                Some(f) => format!("write it to {}", f.display()),
                None => format!(
                    "or give ipam.kubeconfig and write it to {NODE_NAME_FILE} next to that file"
                ),
            };
            return Err(CniError::config(
                format!("heddle-ipam cluster mode cannot tell which Kubernetes node this is: set ipam.node, or the NODE_NAME environment variable, or {where_file} (the chart's install-cni init container writes it from its NODE_NAME environment variable, set from the pod's spec.nodeName)"),
                "no ipam.node, no NODE_NAME, no node name file; the host name is not used: it need not be the node name",
            ));
        };
        (n, f.display().to_string())
    };
    if !valid_node_name(&name) {
        return Err(CniError::config(
            format!("{source} gives {name:?}, which is not a Kubernetes node name (lowercase letters, digits, '-' and '.'): give the node's metadata.name"),
            "heddle-ipam cluster mode",
        ));
    }
    Ok(name)
}

/// Runs one call with `client` (the tests pass a fake API server).
pub async fn run_with(
    client: Client,
    req: &Request,
    inv: &Invocation,
) -> Result<Option<Value>, CniError> {
    run_on(client, req, inv, std::env::var("NODE_NAME").ok().as_deref()).await
}

/// [`run_with`], with `env_node` for the `NODE_NAME` environment variable.
pub async fn run_on(
    client: Client,
    req: &Request,
    inv: &Invocation,
    env_node: Option<&str>,
) -> Result<Option<Value>, CniError> {
    let Mode::Cluster {
        namespace,
        system_namespace,
        node,
        kubeconfig,
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
    let node =
        node_name(node.as_deref(), env_node, kubeconfig.as_deref()).map_err(|e| {
            match inv.command {
                // STATUS reports "not available" (50) whatever the cause.
                Command::Status => CniError::new(code::NOT_AVAILABLE, e.msg, e.details),
                _ => e,
            }
        })?;
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
