//! Running the plugin: one gRPC server per resource on its own socket in the kubelet's
//! device-plugins directory, registered with the kubelet, and kept registered.
//!
//! Each resource's loop, every [`WATCH_INTERVAL`]:
//! - if its socket file is gone or replaced (the kubelet deletes every socket in the
//!   directory when it restarts), it stops that server and serves a fresh socket;
//! - if `kubelet.sock` exists and is not the one it registered with (new inode: the kubelet
//!   restarted), it registers again (retrying every second while the kubelet refuses).
//!
//! So a kubelet restart is followed by a new registration within a fraction of a second of
//! the new `kubelet.sock` appearing.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use heddle_kubelet_api::deviceplugin::{
    device_plugin_server::DevicePluginServer, registration_client::RegistrationClient,
    RegisterRequest, VERSION,
};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;

use super::config::{endpoint_name, DevicePluginConfig};
use super::resource::{Resource, SocketResource, VfPoolResource, DEVICE_DIR_MODE};
use super::service::{options, PluginService};
use super::switch_view::{self, SwitchView};
use super::vf_pool;

/// How often each resource checks its own socket and the kubelet's.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// How often the switch is polled.
pub const SWITCH_POLL: Duration = Duration::from_secs(1);
/// How often VF pools are re-discovered (VFs created, removed or re-bound).
pub const VF_REDISCOVERY: Duration = Duration::from_secs(10);

/// Where the plugin looks at the host.
#[derive(Debug, Clone)]
pub struct Host {
    /// sysfs (`/sys`; the container mounts the host's read-only).
    pub sysfs: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            sysfs: PathBuf::from(vf_pool::DEFAULT_SYSFS_ROOT),
        }
    }
}

/// The resources of a config, VF pools discovered from `host.sysfs`.
pub fn resources(cfg: &DevicePluginConfig, host: &Host) -> anyhow::Result<Vec<Arc<Resource>>> {
    let mut out: Vec<Arc<Resource>> = cfg
        .resources
        .iter()
        .map(|r| {
            Arc::new(Resource::Sockets(SocketResource::new(
                &r.name,
                r.kind.device_kind(),
                r.count,
                &cfg.device_root,
            )))
        })
        .collect();
    if !cfg.vf_pools.is_empty() {
        for pool in vf_pool::discover_pools(&cfg.vf_pools, &host.sysfs)? {
            tracing::info!(
                resource = pool.resource_name(),
                vfs = pool.vfs().count(),
                "VF pool discovered"
            );
            out.push(Arc::new(Resource::VfPool(Box::new(VfPoolResource::new(
                pool,
                &host.sysfs,
            )))));
        }
    }
    Ok(out)
}

/// Runs the plugin until `shutdown` resolves; then stops serving and removes its sockets.
pub async fn run(
    cfg: DevicePluginConfig,
    host: Host,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DEVICE_DIR_MODE)
        .create(&cfg.device_root)
        .with_context(|| {
            format!(
                "cannot create deviceRoot {}: mount it into the device-plugin container, writable",
                cfg.device_root.display()
            )
        })?;
    if !cfg.kubelet_dir.is_dir() {
        bail!(
            "kubeletDir {} is not a directory: mount the kubelet's device-plugins directory there",
            cfg.kubelet_dir.display()
        );
    }
    let resources = resources(&cfg, &host)?;

    let client = heddle_api::Client::new(&cfg.switch_socket).with_timeout(Duration::from_secs(2));
    let first = {
        let (client, sys) = (client.clone(), host.sysfs.clone());
        tokio::task::spawn_blocking(move || {
            switch_view::read(&client, &sys, &SwitchView::default())
        })
        .await?
    };
    if let Some(why) = &first.reason {
        tracing::warn!(%why, "socket devices start unhealthy");
    }
    let (switch_tx, switch_rx) = watch::channel(first);
    tokio::spawn(switch_view::poll(
        client,
        host.sysfs.clone(),
        SWITCH_POLL,
        switch_tx,
    ));
    if !cfg.vf_pools.is_empty() {
        tokio::spawn(rediscover_vfs(
            cfg.vf_pools.clone(),
            host.sysfs.clone(),
            resources.clone(),
        ));
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for r in &resources {
        tasks.push(tokio::spawn(keep_registered(
            cfg.clone(),
            r.clone(),
            switch_rx.clone(),
            stop_rx.clone(),
        )));
    }
    let all = futures::future::try_join_all(tasks);
    tokio::pin!(all);
    tokio::select! {
        done = &mut all => {
            // A resource loop only ends early on a fatal error.
            for r in done? {
                r?;
            }
            return Ok(());
        }
        () = shutdown => {}
    }
    let _ = stop_tx.send(true);
    for r in all.await? {
        r?;
    }
    tracing::info!("device plugin stopped; sockets removed");
    Ok(())
}

async fn rediscover_vfs(
    pools: Vec<vf_pool::VfPool>,
    sysfs: PathBuf,
    resources: Vec<Arc<Resource>>,
) {
    let mut tick = tokio::time::interval(VF_REDISCOVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (p, s) = (pools.clone(), sysfs.clone());
        let found = match tokio::task::spawn_blocking(move || vf_pool::discover_pools(&p, &s)).await
        {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "VF re-discovery failed; keeping the VFs found before");
                continue;
            }
            Err(_) => continue,
        };
        for devices in found {
            if let Some(Resource::VfPool(r)) = resources
                .iter()
                .map(|r| r.as_ref())
                .find(|r| r.name() == devices.resource_name())
            {
                r.replace(devices);
            }
        }
    }
}

/// (device, inode) of a path, when it exists.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Takes over `socket`: fails when another plugin answers on it, removes a stale file.
fn claim_socket(socket: &Path) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        bail!(
            "another device plugin already serves {}: stop it first (one heddle device plugin per node)",
            socket.display()
        );
    }
    match std::fs::remove_file(socket) {
        Ok(()) => tracing::info!(socket = %socket.display(), "removed a stale plugin socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", socket.display())),
    }
    Ok(())
}

/// One resource: serve its socket, register, and start over whenever the kubelet deletes
/// the socket or restarts. Ends when `stop` becomes true (removing its socket).
async fn keep_registered(
    cfg: DevicePluginConfig,
    resource: Arc<Resource>,
    switch: watch::Receiver<SwitchView>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let name = resource.name().to_owned();
    let socket = cfg.plugin_socket(&name);
    let kubelet = cfg.kubelet_socket();
    loop {
        claim_socket(&socket)?;
        let listener = tokio::net::UnixListener::bind(&socket).with_context(|| {
            format!(
                "cannot listen on {}: mount the kubelet's device-plugins directory writable",
                socket.display()
            )
        })?;
        let ours = identity(&socket);
        let (server_stop_tx, server_stop_rx) = watch::channel(false);
        let service = PluginService::new(resource.clone(), switch.clone(), server_stop_rx.clone());
        let mut done = server_stop_rx.clone();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DevicePluginServer::new(service))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                    let _ = done.wait_for(|s| *s).await;
                }),
        );
        tracing::info!(resource = %name, socket = %socket.display(), "serving");

        let mut registered: Option<(u64, u64)> = None;
        let mut next_try = Instant::now();
        let mut last_error = String::new();
        let stopping = loop {
            if *stop.borrow() {
                break true;
            }
            if identity(&socket) != ours {
                tracing::info!(resource = %name, "the plugin socket was removed (kubelet restart?): serving a new one");
                break false;
            }
            let k = identity(&kubelet);
            if k.is_some() && k != registered && Instant::now() >= next_try {
                match register(&kubelet, &name).await {
                    Ok(()) => {
                        tracing::info!(resource = %name, "registered with the kubelet");
                        registered = k;
                        last_error.clear();
                    }
                    Err(e) => {
                        let e = format!("{e:#}");
                        if e != last_error {
                            tracing::warn!(resource = %name, error = %e, "registration failed; retrying every second");
                            last_error = e;
                        }
                        next_try = Instant::now() + Duration::from_secs(1);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                _ = stop.changed() => {}
            }
        };
        let _ = server_stop_tx.send(true);
        let mut server = server;
        match tokio::time::timeout(Duration::from_secs(2), &mut server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::warn!(resource = %name, error = %e, "plugin server ended with an error")
            }
            Ok(Err(e)) => tracing::warn!(resource = %name, error = %e, "plugin server task failed"),
            Err(_) => {
                tracing::warn!(resource = %name, "plugin server did not stop within 2 s; dropping its connections");
                server.abort();
            }
        }
        if stopping {
            if identity(&socket) == ours {
                let _ = std::fs::remove_file(&socket);
            }
            return Ok(());
        }
    }
}

/// Registers `resource` with the kubelet at `kubelet` (5 s at most).
async fn register(kubelet: &Path, resource: &str) -> anyhow::Result<()> {
    let call = async {
        let channel = heddle_kubelet_api::unix_channel(kubelet).await?;
        RegistrationClient::new(channel)
            .register(RegisterRequest {
                version: VERSION.to_owned(),
                endpoint: endpoint_name(resource),
                resource_name: resource.to_owned(),
                options: Some(options()),
            })
            .await
            .map_err(|s| anyhow::anyhow!("the kubelet refused: {}", s.message()))?;
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .context("the kubelet did not answer Register within 5 s")?
}
