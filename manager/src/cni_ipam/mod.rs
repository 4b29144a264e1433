//! `heddle-ipam`: Heddle's own address allocation as a CNI IPAM plugin.
//!
//! `heddle-manager` speaks the CNI IPAM protocol when it is run as `heddle-ipam` (a symlink
//! next to the CNI plugins, found by `heddle-cni` or any plugin through `CNI_PATH`) or as
//! `heddle-manager ipam`. A call is parse -> decision -> effect -> reply, as in `heddle-cni`:
//! the `CNI_*` environment and the network config on stdin are checked first (codes 4, 6, 7,
//! 1), then the lease is taken or freed in the network's allocator, then the result goes to
//! stdout, rendered for the `cniVersion` asked for (0.4.0 to 1.1.0).
//!
//! The `ipam` object picks where leases live:
//! - embedded (`store`, `config`): the node's [`EmbeddedStore`], see [`local`];
//! - cluster (`namespace`, `kubeconfig`, or `"mode": "cluster"`): the network's address
//!   blocks on the API server (claimed by this node), see [`cluster`].
//!
//! The lease owner is `<CNI_CONTAINERID>/<CNI_IFNAME>`, so ADD is idempotent per attachment
//! and DEL frees exactly what that attachment holds (and succeeds when repeated).
//!
//! [`EmbeddedStore`]: crate::embedded::EmbeddedStore

pub mod cluster;
pub mod local;

use std::net::IpAddr;
use std::path::PathBuf;

use heddle_cni::config::{check_version, requested_version, version_reply, ValidAttachment};
use heddle_cni::error::{code, CniError};
use heddle_cni::result::{CniResult, IpConfig, Route};
use heddle_cni::{Command, Invocation};
use serde::Deserialize;
use serde_json::Value;

use crate::crd::NetworkSpec;
use crate::ipam::PoolConfig;

/// The plugin's name (`ipam.type`) and the symlink that makes `heddle-manager` act as it.
pub const PLUGIN_NAME: &str = "heddle-ipam";
/// Embedded mode's default store directory (as `heddle-manager embedded`).
pub const DEFAULT_STORE: &str = "/var/lib/heddle/manager";
/// Embedded mode's default networks file (as `heddle-manager embedded`).
pub const DEFAULT_NETWORKS: &str = "/etc/heddle/networks.yaml";
/// Cluster mode's namespace of `ClusterNetwork` allocation objects (the manager's own).
pub const DEFAULT_SYSTEM_NAMESPACE: &str = "heddle-system";

/// The `ipam` object of the network config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpamConf {
    #[serde(rename = "type", default)]
    plugin_type: String,
    #[serde(default)]
    network: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    store: Option<PathBuf>,
    #[serde(default)]
    config: Option<PathBuf>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    kubeconfig: Option<PathBuf>,
    #[serde(default)]
    system_namespace: Option<String>,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Value,
}

/// Where the leases of the network live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The node-local crash-safe store (no cluster).
    Embedded {
        /// Store directory.
        store: PathBuf,
        /// Networks file (`providers:` and `networks:`).
        config: PathBuf,
    },
    /// The network's `NetworkAllocation` on the API server.
    Cluster {
        /// Namespace of the `Network`; `None` for a `ClusterNetwork`.
        namespace: Option<String>,
        /// Kubeconfig file; in-cluster configuration when absent.
        kubeconfig: Option<PathBuf>,
        /// Namespace of `ClusterNetwork` allocation objects.
        system_namespace: String,
        /// The Kubernetes node this plugin runs on (`ipam.node`); when absent, the
        /// `NODE_NAME` environment variable, else the node the kubeconfig's current context
        /// names (`heddle.dev/node` extension, written by the chart's install-cni; see
        /// [`cluster::node_name`]). Never the host name.
        node: Option<String>,
    },
}

/// The checked `ipam` object.
#[derive(Debug, Clone, PartialEq)]
pub struct IpamConf {
    /// Heddle network name.
    pub network: String,
    /// Where leases live.
    pub mode: Mode,
    /// Routes to hand out with the addresses.
    pub routes: Vec<Route>,
    /// DNS to hand out (passed through).
    pub dns: Value,
}

/// The parts of stdin this plugin reads; everything else belongs to the parent plugin.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: String,
    #[serde(default)]
    ipam: Option<Value>,
    #[serde(default)]
    runtime_config: RawRuntimeConfig,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRuntimeConfig {
    #[serde(default)]
    ips: Vec<String>,
}

/// A checked request: the network config as far as IPAM needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Version of the request and the reply.
    pub cni_version: String,
    /// The `ipam` object.
    pub ipam: IpamConf,
    /// Static addresses from `runtimeConfig.ips` (prefixes dropped: the subnet gives them).
    pub static_ips: Vec<IpAddr>,
    /// GC's `cni.dev/valid-attachments`.
    pub valid_attachments: Vec<ValidAttachment>,
}

fn bad_config(msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError::config(msg, details)
}

/// Parses an address with or without a prefix (`10.1.0.5/24`, `10.1.0.5`).
fn parse_static(field: &str, text: &str) -> Result<IpAddr, CniError> {
    let addr = text.split_once('/').map_or(text, |(a, _)| a);
    addr.trim().parse().map_err(|_| {
        bad_config(
            format!("{field} must hold IP addresses, e.g. 10.1.0.5/24"),
            format!("got {text:?}"),
        )
    })
}

impl Request {
    /// Decodes (code 6) and checks (codes 1, 7) the network config on stdin.
    pub fn parse(stdin: &[u8]) -> Result<Request, CniError> {
        let raw: RawConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                "the network configuration on stdin is not valid JSON of the CNI shape",
                e.to_string(),
            )
        })?;
        check_version(&raw.cni_version)?;
        let ipam_value = raw.ipam.ok_or_else(|| {
            bad_config(
                "the network configuration has no `ipam` object for heddle-ipam",
                r#"add "ipam": {"type": "heddle-ipam", "network": "<name>", ...}"#,
            )
        })?;
        let ipam: RawIpamConf = serde_json::from_value(ipam_value).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                "the `ipam` object has the wrong shape",
                e.to_string(),
            )
        })?;
        let ipam = IpamConf::check(ipam)?;
        let static_ips = raw
            .runtime_config
            .ips
            .iter()
            .map(|t| parse_static("runtimeConfig.ips", t))
            .collect::<Result<_, _>>()?;
        Ok(Request {
            cni_version: raw.cni_version,
            ipam,
            static_ips,
            valid_attachments: raw.valid_attachments.unwrap_or_default(),
        })
    }
}

impl IpamConf {
    fn check(raw: RawIpamConf) -> Result<IpamConf, CniError> {
        if raw.plugin_type != PLUGIN_NAME {
            return Err(bad_config(
                format!("ipam.type must be {PLUGIN_NAME:?} for this plugin"),
                format!("got {:?}", raw.plugin_type),
            ));
        }
        if raw.network.is_empty() {
            return Err(bad_config(
                "ipam.network must name the Heddle network to allocate from",
                "it is missing or empty",
            ));
        }
        let embedded_keys = raw.store.is_some() || raw.config.is_some();
        let cluster_keys = raw.namespace.is_some()
            || raw.kubeconfig.is_some()
            || raw.system_namespace.is_some()
            || raw.node.is_some();
        let cluster = match raw.mode.as_deref() {
            Some("embedded") => false,
            Some("cluster") => true,
            Some(other) => {
                return Err(bad_config(
                    "ipam.mode must be \"embedded\" or \"cluster\"",
                    format!("got {other:?}"),
                ))
            }
            None if embedded_keys != cluster_keys => cluster_keys,
            None => {
                return Err(bad_config(
                    "ipam must say where leases live: `store`/`config` (embedded) or `namespace`/`kubeconfig` (cluster), or `mode`",
                    if embedded_keys { "it names both" } else { "it names neither" },
                ))
            }
        };
        if cluster && embedded_keys || !cluster && cluster_keys {
            return Err(bad_config(
                "ipam mixes embedded keys (store, config) with cluster keys (namespace, kubeconfig, systemNamespace, node)",
                "keep the keys of one mode",
            ));
        }
        let mode = if cluster {
            Mode::Cluster {
                namespace: raw.namespace,
                kubeconfig: raw.kubeconfig,
                system_namespace: raw
                    .system_namespace
                    .unwrap_or_else(|| DEFAULT_SYSTEM_NAMESPACE.into()),
                node: raw.node,
            }
        } else {
            Mode::Embedded {
                store: raw.store.unwrap_or_else(|| DEFAULT_STORE.into()),
                config: raw.config.unwrap_or_else(|| DEFAULT_NETWORKS.into()),
            }
        };
        Ok(IpamConf {
            network: raw.network,
            mode,
            routes: raw.routes,
            dns: raw.dns,
        })
    }
}

/// The lease owner of an attachment.
pub fn owner(inv: &Invocation) -> String {
    format!("{}/{}", inv.container_id, inv.ifname)
}

/// The static addresses asked for: `runtimeConfig.ips` and CNI_ARGS `IP` (comma-separated).
pub fn requested(req: &Request, inv: &Invocation) -> Result<Vec<IpAddr>, CniError> {
    let mut ips = req.static_ips.clone();
    for t in inv.args.ip.iter().flat_map(|s| s.split(',')) {
        let a = parse_static("CNI_ARGS IP", t)?;
        if !ips.contains(&a) {
            ips.push(a);
        }
    }
    Ok(ips)
}

/// Builds the ADD result: each address with its subnet's prefix and gateway, then the routes
/// and DNS of the `ipam` object.
pub fn result(
    network: &str,
    spec: &NetworkSpec,
    addresses: &[IpAddr],
    conf: &IpamConf,
) -> Result<CniResult, CniError> {
    let v4 = spec
        .ipv4
        .as_ref()
        .map(|s| PoolConfig::parse("spec.ipv4", s, true))
        .transpose();
    let v6 = spec
        .ipv6
        .as_ref()
        .map(|s| PoolConfig::parse("spec.ipv6", s, false))
        .transpose();
    let (v4, v6) = v4.and_then(|a| Ok((a, v6?))).map_err(|e| {
        bad_config(
            format!("network {network} has a broken subnet"),
            e.to_string(),
        )
    })?;
    let mut out = CniResult::default();
    for &a in addresses {
        let pool = if a.is_ipv4() { &v4 } else { &v6 };
        let pool = pool.as_ref().ok_or_else(|| {
            CniError::new(
                code::IPAM,
                format!(
                    "network {network}: lease {a} is of a family the network has no subnet for"
                ),
                "release it (DEL) and add again",
            )
        })?;
        out.ips.push(IpConfig {
            address: format!("{a}/{}", pool.cidr.prefix_len()),
            gateway: pool.gateway.map(|g| g.to_string()),
            interface: None,
        });
    }
    out.routes.clone_from(&conf.routes);
    out.dns.clone_from(&conf.dns);
    Ok(out)
}

/// Runs one call. `Ok(Some(json))` goes to stdout; `Ok(None)` prints nothing.
pub fn run(inv: &Invocation, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if inv.command == Command::Version {
        return Ok(Some(version_reply(requested_version(stdin).as_deref())));
    }
    let req = Request::parse(stdin)?;
    match &req.ipam.mode {
        Mode::Embedded { .. } => local::run(&req, inv),
        Mode::Cluster { .. } => cluster::run(&req, inv),
    }
}

/// The process entry: reads the environment and stdin, runs, prints the reply; returns the
/// exit status.
pub fn main() -> std::process::ExitCode {
    use std::io::{Read, Write};
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = requested_version(&stdin)
        .filter(|v| check_version(v).is_ok())
        .unwrap_or_else(|| "1.1.0".to_owned());
    let outcome = match read {
        Err(e) => Err(CniError::new(
            code::IO_FAILURE,
            "cannot read the network configuration from stdin",
            e.to_string(),
        )),
        Ok(_) => Invocation::from_env(|k| std::env::var(k).ok()).and_then(|inv| run(&inv, &stdin)),
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(reply) => {
            if let Some(reply) = reply {
                let _ = writeln!(out, "{reply}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{PLUGIN_NAME}: {e}");
            let _ = writeln!(out, "{}", e.to_json(&version));
            let _ = out.flush();
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests;
