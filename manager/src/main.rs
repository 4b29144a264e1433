//! `heddle-manager`: a thin shell over the library.
//!
//! * `heddle-manager crdgen` prints the CRDs the chart ships.
//! * `heddle-manager run` runs the controllers against the cluster.
//! * `heddle-manager embedded allocate|release|show` uses the single-node store.
//! * `heddle-manager device-plugin --config F` is the kubelet device plugin (`--check`
//!   validates the config and exits).
//! * `heddle-manager ipam`, or the binary run as `heddle-ipam` (a symlink next to the CNI
//!   plugins), is the CNI IPAM plugin: `CNI_*` environment, config on stdin, result on stdout.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use heddle_manager::embedded::{EmbeddedConfig, EmbeddedStore};

#[derive(Parser)]
#[command(
    name = "heddle-manager",
    version,
    about = "Heddle cluster brain: networks, VLANs and addresses"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the heddle.dev CRDs as YAML (what deploy/helm/heddle/crds/heddle.dev.yaml holds).
    Crdgen,
    /// Run the controllers (in-cluster or with the current kubeconfig).
    Run {
        /// Namespace for the NetworkAttachmentDefinitions and allocation objects of
        /// ClusterNetworks (the manager's own).
        #[arg(long, env = "HEDDLE_SYSTEM_NAMESPACE", default_value = "heddle-system")]
        system_namespace: String,
    },
    /// The validating admission webhook (HTTPS) for networks and provider networks.
    Webhook {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: std::net::SocketAddr,
        /// PEM certificate chain (the chart mounts the webhook Secret at /tls).
        #[arg(long, default_value = "/tls/tls.crt")]
        tls_cert: PathBuf,
        /// PEM private key.
        #[arg(long, default_value = "/tls/tls.key")]
        tls_key: PathBuf,
    },
    /// On each node: make the switch's uplink trunks carry the VLANs the networks claimed.
    NodeAgent {
        /// This node's name (the DaemonSet passes spec.nodeName).
        #[arg(long, env = "NODE_NAME")]
        node: String,
        /// The node daemon's control socket.
        #[arg(long, env = "HEDDLE_SOCKET", default_value = "/run/heddle/switch.sock")]
        switch_socket: PathBuf,
        /// Seconds between full resyncs.
        #[arg(long, default_value = "30")]
        resync_seconds: u64,
    },
    /// The CNI IPAM plugin `heddle-ipam` (CNI_COMMAND etc. in the environment, the network
    /// config on stdin); what a `heddle-ipam` symlink to this binary runs.
    Ipam,
    /// The kubelet device plugin: vhost-user, memif and VF pool resources of this node.
    DevicePlugin {
        /// The device-plugin YAML config.
        #[arg(
            long,
            env = "HEDDLE_DEVICE_PLUGIN_CONFIG",
            default_value = "/etc/heddle/device-plugin.yaml"
        )]
        config: PathBuf,
        /// Validate the config, print a summary and exit (0 when it is valid).
        #[arg(long)]
        check: bool,
        /// sysfs root (VF discovery, CPU NUMA nodes); tests point it at a fixture.
        #[arg(long, default_value = "/sys", hide = true)]
        sysfs: PathBuf,
    },
    /// Single-node mode: the allocators on a crash-safe local store.
    Embedded {
        /// Directory of the store (journal + snapshot).
        #[arg(long, env = "HEDDLE_STORE", default_value = "/var/lib/heddle/manager")]
        store: PathBuf,
        /// YAML file with `providers:` and `networks:` maps (ProviderNetwork / Network specs).
        #[arg(
            long,
            env = "HEDDLE_NETWORKS",
            default_value = "/etc/heddle/networks.yaml"
        )]
        config: PathBuf,
        #[command(subcommand)]
        action: EmbeddedAction,
    },
}

#[derive(Subcommand)]
enum EmbeddedAction {
    /// Give an owner (`<container id>/<ifname>`) addresses; prints them, one a line.
    Allocate {
        /// Network name.
        network: String,
        /// Lease owner.
        owner: String,
        /// Specific addresses (static requests).
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
    },
    /// Release what an owner holds; prints the freed addresses.
    Release {
        /// Network name.
        network: String,
        /// Lease owner.
        owner: String,
    },
    /// Print VLANs, counts and leases (YAML, or JSON with --json).
    Show {
        /// Print JSON (for scripts) instead of YAML.
        #[arg(long)]
        json: bool,
    },
}

/// Run as `heddle-ipam` (argv[0]) or `heddle-manager ipam`: the CNI protocol, no clap (its
/// usage text must never reach stdout, where the runtime expects JSON).
fn invoked_as_ipam_plugin() -> bool {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .unwrap_or_default()
        .to_owned();
    name == heddle_manager::cni_ipam::PLUGIN_NAME
        || (args.next().is_some_and(|a| a == "ipam") && args.next().is_none())
}

fn main() -> ExitCode {
    if invoked_as_ipam_plugin() {
        // Logs to stderr only; the reply is the one line on stdout.
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
        return heddle_manager::cni_ipam::main();
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heddle-manager: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ipam => unreachable!("handled before argument parsing"),
        Command::Crdgen => print!("{}", heddle_manager::crd::crds_yaml()),
        Command::Run { system_namespace } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = kube::Client::try_default().await?;
                tracing::info!(%system_namespace, "heddle-manager controllers starting");
                heddle_manager::controller::run(client, system_namespace).await;
                anyhow::Ok(())
            })?;
        }
        Command::Webhook {
            listen,
            tls_cert,
            tls_key,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = kube::Client::try_default().await?;
                heddle_manager::webhook::serve(Some(client), listen, &tls_cert, &tls_key).await
            })?;
        }
        Command::NodeAgent {
            node,
            switch_socket,
            resync_seconds,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = kube::Client::try_default().await?;
                tracing::info!(%node, "heddle-manager node agent starting");
                heddle_manager::node_agent::run(
                    client,
                    node,
                    heddle_api::Client::new(switch_socket),
                    std::time::Duration::from_secs(resync_seconds.max(1)),
                )
                .await
            })?;
        }
        Command::DevicePlugin {
            config,
            check,
            sysfs,
        } => {
            use heddle_manager::device_plugin::{config::DevicePluginConfig, serve};
            let cfg = DevicePluginConfig::load(&config)?;
            if check {
                println!("{} is valid:", config.display());
                for r in &cfg.resources {
                    println!(
                        "  {}: {} {} devices",
                        r.name,
                        r.count,
                        r.kind.device_kind().as_str()
                    );
                }
                for p in &cfg.vf_pools {
                    println!(
                        "  {}: VF pool ({})",
                        p.resource_name,
                        p.device_type.as_str()
                    );
                }
                return Ok(());
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = signal(SignalKind::terminate())?;
                let mut int = signal(SignalKind::interrupt())?;
                tracing::info!(config = %config.display(), "heddle device plugin starting");
                serve::run(cfg, serve::Host { sysfs }, async move {
                    tokio::select! {
                        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                        _ = int.recv() => tracing::info!("SIGINT: stopping"),
                    }
                })
                .await
            })?;
        }
        Command::Embedded {
            store,
            config,
            action,
        } => {
            let cfg = EmbeddedConfig::read(&config)?;
            let mut store = EmbeddedStore::open(&store, cfg.clone())?;
            match action {
                EmbeddedAction::Allocate {
                    network,
                    owner,
                    ips,
                } => {
                    for a in store.allocate(&network, &owner, &ips)? {
                        println!("{a}");
                    }
                }
                EmbeddedAction::Release { network, owner } => {
                    for a in store.release(&network, &owner)? {
                        println!("{a}");
                    }
                }
                EmbeddedAction::Show { json } => {
                    let mut out = serde_json::Map::new();
                    for name in cfg.networks.keys() {
                        let ipam = store.network(name).expect("configured network");
                        out.insert(
                            name.clone(),
                            serde_json::json!({
                                "vlan": store.vlan(name),
                                "ipv4": ipam.counts_v4(),
                                "ipv6": ipam.counts_v6(),
                                "leases": ipam.leases(),
                            }),
                        );
                    }
                    if json {
                        println!("{}", serde_json::to_string_pretty(&out)?);
                    } else {
                        print!("{}", serde_yaml::to_string(&out)?);
                    }
                }
            }
        }
    }
    Ok(())
}
