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

/// The kubeconfig extension (of the current context) naming the node: Heddle's chart writes
/// it from the pod's `spec.nodeName` (`deploy/image/install-cni.sh`), because the runtime
/// that runs heddle-ipam on the host passes no node name and the host name is not always the
/// kubelet's node name.
pub const NODE_EXTENSION: &str = "heddle.dev/node";

/// The node named by the current context's [`NODE_EXTENSION`] extension
/// (`extension: {nodeName: <node>}`), if any.
pub fn kubeconfig_node(kc: &Kubeconfig) -> Option<String> {
    let current = kc.current_context.as_deref()?;
    let context = kc
        .contexts
        .iter()
        .find(|c| c.name == current)?
        .context
        .as_ref()?;
    context
        .extensions
        .iter()
        .flatten()
        .find(|e| e.name == NODE_EXTENSION)?
        .extension
        .get("nodeName")?
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
}

/// The kubeconfig at `path`, or a config error naming it.
fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, CniError> {
    Kubeconfig::read_from(path).map_err(|e| {
        CniError::config(
            format!("ipam.kubeconfig {} cannot be read", path.display()),
            e.to_string(),
        )
    })
}

/// A client from the kubeconfig file, or the in-cluster configuration without one.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, CniError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = read_kubeconfig(path)?;
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
    rt.block_on(async { run_with(client(kubeconfig.as_deref()).await?, req, inv).await })
}

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
/// `ipam.node`, else `env_node` (`NODE_NAME`), else the node the kubeconfig at `kubeconfig`
/// names ([`NODE_EXTENSION`], which the chart's install-cni writes from `spec.nodeName`).
/// Never guessed from the host name (the kubelet's `--hostname-override` and cloud providers
/// name nodes otherwise, and a wrong name claims blocks for a node that does not exist):
/// without one of the three the call fails with a message naming them.
pub fn node_name(
    configured: Option<&str>,
    env_node: Option<&str>,
    kubeconfig: Option<&Path>,
) -> Result<String, CniError> {
    let (name, source) = if let Some(n) = configured.filter(|n| !n.is_empty()) {
        (n.to_string(), "ipam.node".to_string())
    } else if let Some(n) = env_node.filter(|n| !n.is_empty()) {
        (n.to_string(), "NODE_NAME".to_string())
    } else {
        let from_kubeconfig = match kubeconfig {
            Some(path) => {
                let kc = read_kubeconfig(path)?;
                kubeconfig_node(&kc).map(|n| (n, path))
            }
            None => None,
        };
        let Some((n, path)) = from_kubeconfig else {
            let where_kc = match kubeconfig {
                Some(k) => format!(
                    "the {NODE_EXTENSION} extension of {}'s current context",
                    k.display()
                ),
                None => format!(
                    "an ipam.kubeconfig whose current context has the {NODE_EXTENSION} extension"
                ),
            };
            return Err(CniError::config(
                format!("heddle-ipam cluster mode cannot tell which Kubernetes node this is: set ipam.node, or the NODE_NAME environment variable, or {where_kc} (extension: {{nodeName: <node>}}; the chart's install-cni init container writes it from the pod's spec.nodeName)"),
                "no ipam.node, no NODE_NAME, no node in the kubeconfig; the host name is not used: it need not be the node name",
            ));
        };
        (n, format!("{} ({NODE_EXTENSION})", path.display()))
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
    let node = node_name(node.as_deref(), env_node, kubeconfig.as_deref()).map_err(|e| {
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

#[cfg(test)]
mod node_tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::process::Command;

    use super::*;

    /// Runs the image's `deploy/image/install-cni.sh` with stand-in binaries (it only copies
    /// them) and a service-account token; returns its exit status, stderr and the kubeconfig
    /// path.
    fn install_cni(dir: &Path, node: &str) -> (std::process::ExitStatus, String, PathBuf) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/image/install-cni.sh");
        let (bin, cni_bin, token) = (dir.join("bin"), dir.join("cni-bin"), dir.join("token"));
        for d in [&bin, &cni_bin, &token] {
            std::fs::create_dir_all(d).unwrap();
        }
        for b in ["heddle-cni", "heddle-manager"] {
            std::fs::write(bin.join(b), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(bin.join(b), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(token.join("token"), "t0k3n").unwrap();
        std::fs::write(token.join("ca.crt"), "not a real CA\n").unwrap();
        let kubeconfig = dir.join("net.d/heddle.kubeconfig");
        let out = Command::new("bash")
            .arg(&script)
            .arg(&cni_bin)
            .env("HEDDLE_BIN_DIR", &bin)
            .env("HEDDLE_TOKEN_DIR", &token)
            .env("HEDDLE_KUBECONFIG", &kubeconfig)
            .env("HEDDLE_API_SERVER", "https://10.96.0.1:443")
            .env("HEDDLE_NODE_NAME", node)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status, err, kubeconfig)
    }

    #[tokio::test]
    async fn the_kubeconfig_install_cni_writes_names_the_node_and_is_a_usable_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        let (status, err, path) = install_cni(dir.path(), "worker-7.example.com");
        assert!(status.success(), "install-cni.sh failed: {err}");
        let kc = Kubeconfig::read_from(&path).unwrap();
        assert_eq!(
            kubeconfig_node(&kc).as_deref(),
            Some("worker-7.example.com")
        );
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        assert!(
            config
                .cluster_url
                .to_string()
                .starts_with("https://10.96.0.1"),
            "{}",
            config.cluster_url
        );

        // The kubeconfig's node stands in for a missing ipam.node and NODE_NAME, never over
        // either.
        client(Some(&path)).await.unwrap();
        assert_eq!(
            node_name(None, None, Some(&path)).unwrap(),
            "worker-7.example.com"
        );
        assert_eq!(
            node_name(Some("node-a"), None, Some(&path)).unwrap(),
            "node-a"
        );
        assert_eq!(
            node_name(None, Some("node-b"), Some(&path)).unwrap(),
            "node-b"
        );
    }

    #[test]
    fn without_a_node_name_the_kubeconfig_names_none_and_a_bad_one_is_refused_before_installing() {
        let dir = tempfile::tempdir().unwrap();
        let (status, err, path) = install_cni(dir.path(), "");
        assert!(status.success(), "install-cni.sh failed: {err}");
        assert_eq!(
            kubeconfig_node(&Kubeconfig::read_from(&path).unwrap()),
            None
        );
        let e = node_name(None, None, Some(&path)).unwrap_err();
        assert!(
            e.msg.contains("cannot tell which Kubernetes node") && e.msg.contains(NODE_EXTENSION),
            "no node anywhere, and the host name is not used: {}",
            e.msg
        );

        let dir = tempfile::tempdir().unwrap();
        let (status, err, path) = install_cni(dir.path(), "Worker 7");
        assert!(!status.success());
        assert!(
            err.contains("HEDDLE_NODE_NAME 'Worker 7' is not a Kubernetes node name"),
            "{err}"
        );
        assert!(
            !path.exists(),
            "a kubeconfig was written for a bad node name"
        );
        assert!(
            std::fs::read_dir(dir.path().join("cni-bin"))
                .unwrap()
                .next()
                .is_none(),
            "plugins were installed although the node name was refused"
        );
    }
}
