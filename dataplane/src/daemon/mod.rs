//! `heddle-switch`, the node daemon: reads the config, checks cores and hugepages, starts
//! the EAL and the PMD workers, restores ports, serves the control API, and stops cleanly on
//! SIGTERM.

pub mod api;
pub mod config;
pub mod fuzz;
pub mod metrics;
pub mod resources;
pub mod state;
pub mod switch;
pub mod worker;

#[cfg(all(heddle_loom, test))]
mod loom_models;
#[cfg(test)]
mod tests;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use heddle_api::PortOrigin;

use self::config::DaemonConfig;
use self::state::PortStore;
use self::switch::{SwitchCtl, WorkerPlace};
use self::worker::Shared;
use crate::dpdk::{Eal, Mempool};

/// Mbuf data room: DPDK's default (2048 bytes + headroom), enough for a 1518-byte frame plus
/// a VLAN tag in one segment.
const MBUF_DATA_ROOM: u16 = 2048 + 128;
/// Data room of the jumbo pool's mbufs: DPDK's headroom plus the largest frame
/// (`MAX_FRAME`, 9234 bytes), rounded up to a multiple of 128.
const JUMBO_DATA_ROOM: u16 =
    (128 + heddle_core::switch::config::MAX_FRAME as u16).div_ceil(128) * 128;

/// Fails when another daemon already answers on `socket`; removes a stale socket file.
fn claim_socket(socket: &Path) -> anyhow::Result<()> {
    if socket.as_os_str().len() > 107 {
        bail!(
            "api.socket {} is {} bytes long, over the 107-byte limit of a Unix socket path: choose a shorter path",
            socket.display(),
            socket.as_os_str().len()
        );
    }
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        bail!(
            "another heddle-switch already listens on {}: stop it first, or set api.socket to another path",
            socket.display()
        );
    }
    if socket.exists() {
        std::fs::remove_file(socket)
            .with_context(|| format!("removing stale socket {}", socket.display()))?;
    }
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    let usable = config::usable_cpus();
    let placement = config::resolve_cores(&cfg.cores, &usable)?;
    let (control, pmd) = (placement.control, placement.pmd.clone());
    tracing::info!(
        control,
        ?pmd,
        source = placement.source,
        usable = ?placement.usable,
        "PMD cores chosen (source: `list` = cores.pmd as given; `count`/`auto` = taken from this process's affinity mask after the control CPU)"
    );
    claim_socket(&cfg.api.socket)?;
    let store = PortStore::open(&cfg.state_dir).with_context(|| {
        format!(
            "cannot use state_dir {}: set state_dir to a writable directory",
            cfg.state_dir.display()
        )
    })?;
    let saved = store.load().map_err(anyhow::Error::msg)?;

    let memory = heddle_hugepages::prepare(&cfg.memory, &heddle_hugepages::SysPaths::host())?;
    let mut lcores = vec![format!("0@{control}")];
    let mut places = Vec::new();
    for (i, cpu) in pmd.iter().enumerate() {
        let lcore = i as u32 + 1;
        lcores.push(format!("{lcore}@{cpu}"));
        places.push(WorkerPlace { lcore, cpu: *cpu });
    }
    let mut args = vec![
        "--lcores".to_owned(),
        lcores.join(","),
        "--main-lcore".into(),
        "0".into(),
    ];
    args.extend(memory.args.iter().cloned());
    if !cfg.memory.no_huge {
        // Our own hugepage files are never shared with another process (vhost-user shares
        // the guest's memory, not ours), so unlink them: a killed switch leaks no pages.
        args.push("--huge-unlink".into());
    }
    let any_pci = cfg
        .ports
        .iter()
        .chain(saved.iter())
        .any(|p| !p.devargs.starts_with("net_") && !p.devargs.starts_with("eth_"));
    if !any_pci {
        args.push("--no-pci".into());
    }
    tracing::info!(?args, "starting the DPDK EAL");
    let eal = Eal::init(&args)?;
    let pool = Arc::new(Mempool::create(
        "heddle_mbufs",
        cfg.mbufs.count,
        cfg.mbufs.cache,
        MBUF_DATA_ROOM,
        None,
    )?);
    let jumbo = Arc::new(Mempool::create(
        "heddle_jumbo",
        cfg.mbufs.jumbo_count.max(64),
        32,
        JUMBO_DATA_ROOM,
        None,
    )?);

    let nworkers = places.len();
    let shared = Arc::new(Shared::new(
        nworkers,
        SwitchCtl::empty_dataplane(nworkers),
        cfg.fdb.capacity as usize,
    ));
    let mut ctl = SwitchCtl::new(
        shared.clone(),
        eal,
        (pool.clone(), jumbo.clone()),
        places.clone(),
        store,
        (cfg.mbufs.rx_ring, cfg.mbufs.tx_ring),
        cfg.fdb.ageing_seconds,
    );
    ctl.set_cores(heddle_api::CorePlacement {
        control_cpu: placement.control,
        pmd_cpus: placement.pmd.clone(),
        source: placement.source.to_owned(),
        usable_cpus: placement.usable.clone(),
    });
    let worker_lcores: Vec<u32> = places.iter().map(|p| p.lcore).collect();
    for (w, place) in places.iter().enumerate() {
        let (shared, pool, jumbo) = (shared.clone(), pool.clone(), jumbo.clone());
        eal.launch(place.lcore, move || worker::run(w, shared, pool, jumbo))?;
        tracing::info!(
            worker = w,
            lcore = place.lcore,
            cpu = place.cpu,
            "PMD worker started"
        );
    }

    ctl.set_max_ports(cfg.max_ports as usize);
    let started = (|| -> anyhow::Result<()> {
        for spec in cfg.ports.iter().cloned() {
            let name = spec.name.clone();
            ctl.add_port(spec, PortOrigin::Config)
                .with_context(|| format!("port {name} from the config"))?;
        }
        for spec in saved {
            if cfg.ports.iter().any(|p| p.name == spec.name) {
                continue;
            }
            let name = spec.name.clone();
            if let Err(e) = ctl.add_port(spec.clone(), PortOrigin::Api) {
                tracing::error!(port = %name, error = %e, "a saved port could not be restored; it stays in the port table");
                ctl.keep_unrestored(spec);
            }
        }
        Ok(())
    })();
    if let Err(e) = started {
        ctl.shutdown(&worker_lcores);
        return Err(e);
    }

    let ctl = Arc::new(Mutex::new(ctl));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let served = rt.block_on(serve(cfg.clone(), ctl.clone()));
    let mut c = ctl.lock().unwrap_or_else(|e| e.into_inner());
    c.shutdown(&worker_lcores);
    let _ = std::fs::remove_file(&cfg.api.socket);
    tracing::info!("stopped");
    served
}

async fn serve(cfg: DaemonConfig, ctl: api::Ctl) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};

    // The socket is created under umask 0177, so it is root-only (0600) from the moment it
    // exists: a bind-then-chmod leaves a window in which another user could connect. The
    // umask is process-wide; nothing else creates files at this point (ports are restored,
    // the API that adds ports is not listening yet), and a tighter mode is the only effect.
    // SAFETY: umask(2) only swaps the process's file-creation mask; it cannot fail.
    let previous = unsafe { libc::umask(0o177) };
    let bound = tokio::net::UnixListener::bind(&cfg.api.socket);
    // SAFETY: as above; restores the mask the daemon started with.
    unsafe { libc::umask(previous) };
    let listener = bound.with_context(|| {
        format!(
            "cannot listen on {}: set api.socket to a writable path",
            cfg.api.socket.display()
        )
    })?;
    // Already 0600; kept explicit for filesystems that ignore the umask for sockets.
    std::fs::set_permissions(&cfg.api.socket, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %cfg.api.socket.display(), "control API listening");

    if let Some(addr) = &cfg.api.metrics_listen {
        let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} for metrics: set api.metrics_listen to a free address")
        })?;
        let app = api::metrics_router(ctl.clone());
        tokio::spawn(async move { axum::serve(tcp, app).await });
        tracing::info!(%addr, "metrics listening");
    }

    let ticker = ctl.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_secs(1));
        loop {
            t.tick().await;
            ticker.lock().unwrap_or_else(|e| e.into_inner()).tick();
        }
    });

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
    };
    println!("heddle-switch ready on {}", cfg.api.socket.display());
    axum::serve(listener, api::router(ctl))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
