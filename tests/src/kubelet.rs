//! A test kubelet: the kubelet's side of the device plugin API (`v1beta1`) and its
//! PodResources API (`v1`), built on the same generated code the plugin uses
//! (`heddle-kubelet-api`), so a real `heddle-manager device-plugin` process can be driven the
//! way a node's kubelet drives it.
//!
//! What it does, as the kubelet's device manager does:
//! - serves `Registration` on `<root>/device-plugins/kubelet.sock`;
//! - on `Register` it answers at once, then (in the background) connects to the plugin's
//!   socket named by the request's endpoint, calls `GetDevicePluginOptions`, and keeps a
//!   `ListAndWatch` stream open, recording every update with the time it arrived;
//! - [`TestKubelet::allocate`] picks `count` healthy devices nobody holds, asks the plugin's
//!   `GetPreferredAllocation` when the plugin offers it, calls `Allocate`, and records the
//!   allocation (its "checkpoint": it survives [`TestKubelet::restart`]);
//! - [`TestKubelet::restart`] plays a kubelet restart: it stops serving, drops every plugin
//!   connection, deletes every socket in the device-plugins directory (its own and the
//!   plugins'), and serves a fresh `kubelet.sock`;
//! - serves `PodResourcesLister` (`List`, `Get`) on `<root>/pod-resources/kubelet.sock` from
//!   its own allocations: pod name/namespace -> container -> resource -> device ids.
//!
//! The harness is synchronous like the rest of this crate: the kubelet runs its gRPC servers
//! and plugin streams on its own tokio runtime, and every method blocks.

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use heddle_kubelet_api::deviceplugin::{
    self as dp, device_plugin_client::DevicePluginClient, registration_server,
};
use heddle_kubelet_api::podresources::{self as pr, pod_resources_lister_server};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Channel;

/// One `Register` call the kubelet accepted.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Extended resource name.
    pub resource: String,
    /// The plugin's socket file name in the device-plugins directory.
    pub endpoint: String,
    /// Options the plugin sent with the request.
    pub options: Option<dp::DevicePluginOptions>,
    /// When the request arrived.
    pub at: Instant,
}

/// One `ListAndWatch` message.
#[derive(Debug, Clone)]
pub struct DeviceUpdate {
    /// When it arrived.
    pub at: Instant,
    /// The plugin's whole device list.
    pub devices: Vec<dp::Device>,
}

impl DeviceUpdate {
    /// Ids of the devices reported healthy.
    pub fn healthy(&self) -> Vec<String> {
        self.devices
            .iter()
            .filter(|d| d.health == dp::HEALTHY)
            .map(|d| d.id.clone())
            .collect()
    }

    /// True when every device is reported unhealthy (and there is at least one).
    pub fn all_unhealthy(&self) -> bool {
        !self.devices.is_empty() && self.devices.iter().all(|d| d.health == dp::UNHEALTHY)
    }
}

/// Devices the kubelet gave one container.
#[derive(Debug, Clone)]
pub struct Allocation {
    /// Pod name.
    pub pod: String,
    /// Pod namespace.
    pub namespace: String,
    /// Container name.
    pub container: String,
    /// Extended resource name.
    pub resource: String,
    /// The devices, in the order passed to `Allocate`.
    pub device_ids: Vec<String>,
    /// What `GetPreferredAllocation` answered, when it was asked.
    pub preferred: Option<Vec<String>>,
    /// The plugin's answer for the container: env, mounts, device nodes.
    pub response: dp::ContainerAllocateResponse,
}

/// The kubelet's view of one registered plugin.
struct PluginConn {
    endpoint: String,
    /// Set once connected and the options were read.
    client: Option<DevicePluginClient<Channel>>,
    options: Option<dp::DevicePluginOptions>,
    /// Why connecting or the stream failed, when it did.
    error: Option<String>,
    /// The ListAndWatch stream ended (the plugin went away).
    stream_ended: bool,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    registrations: Vec<Registration>,
    plugins: BTreeMap<String, PluginConn>,
    /// Every ListAndWatch update per resource, across plugin connections.
    updates: BTreeMap<String, Vec<DeviceUpdate>>,
    allocations: Vec<Allocation>,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

struct Served {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Served {
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

/// A kubelet for tests: see the module docs.
pub struct TestKubelet {
    rt: tokio::runtime::Runtime,
    root: PathBuf,
    state: Shared,
    registration: Option<Served>,
    pod_resources: Option<Served>,
}

impl TestKubelet {
    /// Starts serving `Registration` on `<root>/device-plugins/kubelet.sock` and
    /// `PodResourcesLister` on `<root>/pod-resources/kubelet.sock` (directories created).
    pub fn start(root: &Path) -> Result<TestKubelet> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let mut k = TestKubelet {
            rt,
            root: root.to_owned(),
            state: Shared::default(),
            registration: None,
            pod_resources: None,
        };
        std::fs::create_dir_all(k.device_plugin_dir())?;
        std::fs::create_dir_all(k.pod_resources_socket().parent().expect("has a parent"))?;
        k.registration = Some(k.serve_registration()?);
        k.pod_resources = Some(k.serve_pod_resources()?);
        Ok(k)
    }

    /// The device-plugins directory (the plugin's `kubeletDir`).
    pub fn device_plugin_dir(&self) -> PathBuf {
        self.root.join("device-plugins")
    }

    /// The registration socket.
    pub fn kubelet_socket(&self) -> PathBuf {
        self.device_plugin_dir()
            .join(heddle_kubelet_api::KUBELET_SOCKET_NAME)
    }

    /// The PodResources socket (what heddle-cni asks when no deviceID comes).
    pub fn pod_resources_socket(&self) -> PathBuf {
        self.root.join("pod-resources").join("kubelet.sock")
    }

    fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        let std_listener = std::os::unix::net::UnixListener::bind(path)
            .with_context(|| format!("binding {}", path.display()))?;
        std_listener.set_nonblocking(true)?;
        Ok(tokio::net::UnixListener::from_std(std_listener)?)
    }

    fn serve_registration(&self) -> Result<Served> {
        let _guard = self.rt.enter();
        let listener = Self::bind(&self.kubelet_socket())?;
        let svc = RegistrationSvc {
            state: self.state.clone(),
            dir: self.device_plugin_dir(),
        };
        let (stop, stopped) = oneshot::channel();
        let task = self.rt.spawn(async move {
            let r = tonic::transport::Server::builder()
                .add_service(registration_server::RegistrationServer::new(svc))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = r {
                eprintln!("test kubelet: registration server failed: {e}");
            }
        });
        Ok(Served {
            stop: Some(stop),
            task,
        })
    }

    fn serve_pod_resources(&self) -> Result<Served> {
        let _guard = self.rt.enter();
        let listener = Self::bind(&self.pod_resources_socket())?;
        let svc = PodResourcesSvc {
            state: self.state.clone(),
        };
        let (stop, stopped) = oneshot::channel();
        let task = self.rt.spawn(async move {
            let r = tonic::transport::Server::builder()
                .add_service(pod_resources_lister_server::PodResourcesListerServer::new(
                    svc,
                ))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = r {
                eprintln!("test kubelet: pod resources server failed: {e}");
            }
        });
        Ok(Served {
            stop: Some(stop),
            task,
        })
    }

    /// Plays a kubelet restart: stops serving registration, drops every plugin connection,
    /// deletes every socket in the device-plugins directory (the kubelet's own and the
    /// plugins'), then serves a new `kubelet.sock`. Allocations are kept, as the kubelet's
    /// checkpoint keeps them. Returns when the new socket was created.
    pub fn restart(&mut self) -> Result<Instant> {
        if let Some(r) = self.registration.take() {
            self.rt.block_on(r.shutdown());
        }
        {
            let mut st = lock(&self.state);
            for (_, p) in std::mem::take(&mut st.plugins) {
                p.task.abort();
            }
        }
        for entry in std::fs::read_dir(self.device_plugin_dir())? {
            let entry = entry?;
            if entry.file_type()?.is_socket() {
                std::fs::remove_file(entry.path())?;
            }
        }
        self.registration = Some(self.serve_registration()?);
        Ok(Instant::now())
    }

    /// Every registration so far, for `resource`.
    pub fn registrations(&self, resource: &str) -> Vec<Registration> {
        lock(&self.state)
            .registrations
            .iter()
            .filter(|r| r.resource == resource)
            .cloned()
            .collect()
    }

    /// Waits until `resource` has registered at least `n` times and the kubelet is connected
    /// to the plugin of the latest registration (options read, first device list received);
    /// returns that registration.
    pub fn wait_registered(
        &self,
        resource: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Registration> {
        crate::wait_until(
            &format!("registration #{n} of {resource} and its first ListAndWatch update"),
            timeout,
            Duration::from_millis(10),
            || {
                let st = lock(&self.state);
                let regs: Vec<&Registration> = st
                    .registrations
                    .iter()
                    .filter(|r| r.resource == resource)
                    .collect();
                // An error of an earlier connection (a plugin that went away) is no reason to
                // stop waiting for the next registration.
                if regs.len() >= n {
                    if let Some(err) = st.plugins.get(resource).and_then(|p| p.error.clone()) {
                        bail!("the test kubelet could not talk to the {resource} plugin: {err}");
                    }
                }
                let connected = st.plugins.get(resource).is_some_and(|p| p.client.is_some());
                let seen = st.updates.get(resource).is_some_and(|u| {
                    regs.last()
                        .is_some_and(|r| u.last().is_some_and(|last| last.at >= r.at))
                });
                Ok((regs.len() >= n && connected && seen).then(|| regs[regs.len() - 1].clone()))
            },
        )
    }

    /// The options the kubelet read from the plugin of `resource`.
    pub fn options(&self, resource: &str) -> Option<dp::DevicePluginOptions> {
        lock(&self.state)
            .plugins
            .get(resource)
            .and_then(|p| p.options)
    }

    /// The socket file name the current plugin of `resource` registered.
    pub fn endpoint(&self, resource: &str) -> Option<String> {
        lock(&self.state)
            .plugins
            .get(resource)
            .map(|p| p.endpoint.clone())
    }

    /// True when the ListAndWatch stream of `resource`'s current plugin has ended.
    pub fn stream_ended(&self, resource: &str) -> bool {
        lock(&self.state)
            .plugins
            .get(resource)
            .is_some_and(|p| p.stream_ended)
    }

    /// Every ListAndWatch update of `resource`, oldest first.
    pub fn updates(&self, resource: &str) -> Vec<DeviceUpdate> {
        lock(&self.state)
            .updates
            .get(resource)
            .cloned()
            .unwrap_or_default()
    }

    /// The latest device list of `resource`.
    pub fn devices(&self, resource: &str) -> Option<DeviceUpdate> {
        lock(&self.state)
            .updates
            .get(resource)
            .and_then(|u| u.last().cloned())
    }

    /// Waits for an update of `resource` that arrived after `since` and satisfies `pred`.
    pub fn wait_update(
        &self,
        resource: &str,
        since: Instant,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&DeviceUpdate) -> bool,
    ) -> Result<DeviceUpdate> {
        crate::wait_until(
            &format!("{resource}: {what}"),
            timeout,
            Duration::from_millis(10),
            || {
                Ok(self
                    .updates(resource)
                    .into_iter()
                    .find(|u| u.at >= since && pred(u)))
            },
        )
    }

    fn client(&self, resource: &str) -> Result<(DevicePluginClient<Channel>, bool)> {
        let st = lock(&self.state);
        let p = st
            .plugins
            .get(resource)
            .with_context(|| format!("no plugin registered {resource}"))?;
        let client = p
            .client
            .clone()
            .with_context(|| format!("the {resource} plugin is not connected yet"))?;
        Ok((
            client,
            p.options
                .is_some_and(|o| o.get_preferred_allocation_available),
        ))
    }

    /// Device ids of `resource` held by some pod.
    pub fn allocated(&self, resource: &str) -> Vec<String> {
        lock(&self.state)
            .allocations
            .iter()
            .filter(|a| a.resource == resource)
            .flat_map(|a| a.device_ids.iter().cloned())
            .collect()
    }

    /// Every allocation, oldest first.
    pub fn allocations(&self) -> Vec<Allocation> {
        lock(&self.state).allocations.clone()
    }

    /// What the kubelet does when admitting a container that requests `count` of
    /// `resource`: the healthy devices nobody holds are available; the plugin's
    /// `GetPreferredAllocation` picks among them when it offers it (the answer must be
    /// `count` available devices), otherwise the first `count` are taken; then `Allocate`.
    /// The allocation is recorded (and shows in PodResources).
    pub fn allocate(
        &self,
        pod: &str,
        namespace: &str,
        container: &str,
        resource: &str,
        count: usize,
    ) -> Result<Allocation> {
        let (mut client, preferred_available) = self.client(resource)?;
        let latest = self
            .devices(resource)
            .with_context(|| format!("no device list for {resource} yet"))?;
        let held = self.allocated(resource);
        let available: Vec<String> = latest
            .healthy()
            .into_iter()
            .filter(|id| !held.contains(id))
            .collect();
        if available.len() < count {
            bail!(
                "{resource}: {count} requested but only {} healthy and free ({available:?})",
                available.len()
            );
        }
        let (ids, preferred) = if preferred_available {
            let ids = self
                .rt
                .block_on(
                    client.get_preferred_allocation(dp::PreferredAllocationRequest {
                        container_requests: vec![dp::ContainerPreferredAllocationRequest {
                            available_device_i_ds: available.clone(),
                            must_include_device_i_ds: vec![],
                            allocation_size: count as i32,
                        }],
                    }),
                )
                .context("GetPreferredAllocation")?
                .into_inner()
                .container_responses
                .into_iter()
                .next()
                .context("GetPreferredAllocation answered no container")?
                .device_i_ds;
            if ids.len() != count || ids.iter().any(|id| !available.contains(id)) {
                bail!(
                    "GetPreferredAllocation answered {ids:?}, not {count} of the available {available:?}"
                );
            }
            (ids.clone(), Some(ids))
        } else {
            (available[..count].to_vec(), None)
        };
        let response = self.allocate_raw(resource, &ids)?;
        let a = Allocation {
            pod: pod.to_owned(),
            namespace: namespace.to_owned(),
            container: container.to_owned(),
            resource: resource.to_owned(),
            device_ids: ids,
            preferred,
            response,
        };
        lock(&self.state).allocations.push(a.clone());
        Ok(a)
    }

    /// Calls `Allocate` for one container with exactly `ids` (no availability check, nothing
    /// recorded): for testing what the plugin refuses.
    pub fn allocate_raw(
        &self,
        resource: &str,
        ids: &[String],
    ) -> Result<dp::ContainerAllocateResponse> {
        let (mut client, _) = self.client(resource)?;
        let mut reply = self
            .rt
            .block_on(client.allocate(dp::AllocateRequest {
                container_requests: vec![dp::ContainerAllocateRequest {
                    devices_i_ds: ids.to_vec(),
                }],
            }))
            .map_err(|s| anyhow::anyhow!("Allocate refused: {}", s.message()))?
            .into_inner();
        if reply.container_responses.len() != 1 {
            bail!(
                "Allocate answered {} containers for 1 request",
                reply.container_responses.len()
            );
        }
        Ok(reply.container_responses.remove(0))
    }

    /// Calls `GetPreferredAllocation` for one container.
    pub fn preferred(
        &self,
        resource: &str,
        available: &[String],
        must_include: &[String],
        size: usize,
    ) -> Result<Vec<String>> {
        let (mut client, _) = self.client(resource)?;
        let reply = self
            .rt
            .block_on(
                client.get_preferred_allocation(dp::PreferredAllocationRequest {
                    container_requests: vec![dp::ContainerPreferredAllocationRequest {
                        available_device_i_ds: available.to_vec(),
                        must_include_device_i_ds: must_include.to_vec(),
                        allocation_size: size as i32,
                    }],
                }),
            )
            .map_err(|s| anyhow::anyhow!("GetPreferredAllocation refused: {}", s.message()))?
            .into_inner();
        Ok(reply
            .container_responses
            .into_iter()
            .next()
            .context("GetPreferredAllocation answered no container")?
            .device_i_ds)
    }

    /// Forgets every allocation of a pod (the pod was deleted); returns the freed ids.
    pub fn release_pod(&self, pod: &str, namespace: &str) -> Vec<String> {
        let mut st = lock(&self.state);
        let mut freed = Vec::new();
        st.allocations.retain(|a| {
            let gone = a.pod == pod && a.namespace == namespace;
            if gone {
                freed.extend(a.device_ids.iter().cloned());
            }
            !gone
        });
        freed
    }
}

impl Drop for TestKubelet {
    fn drop(&mut self) {
        let served: Vec<Served> = [self.registration.take(), self.pod_resources.take()]
            .into_iter()
            .flatten()
            .collect();
        self.rt.block_on(async {
            for s in served {
                s.shutdown().await;
            }
        });
        for (_, p) in std::mem::take(&mut lock(&self.state).plugins) {
            p.task.abort();
        }
    }
}

struct RegistrationSvc {
    state: Shared,
    dir: PathBuf,
}

#[tonic::async_trait]
impl registration_server::Registration for RegistrationSvc {
    async fn register(
        &self,
        request: tonic::Request<dp::RegisterRequest>,
    ) -> Result<tonic::Response<dp::Empty>, tonic::Status> {
        let req = request.into_inner();
        if req.version != dp::VERSION {
            return Err(tonic::Status::invalid_argument(format!(
                "unsupported device plugin API version {:?}; this kubelet speaks {}",
                req.version,
                dp::VERSION
            )));
        }
        if req.resource_name.is_empty() || !req.resource_name.contains('/') {
            return Err(tonic::Status::invalid_argument(format!(
                "invalid extended resource name {:?}",
                req.resource_name
            )));
        }
        if req.endpoint.is_empty() || req.endpoint.contains('/') {
            return Err(tonic::Status::invalid_argument(format!(
                "endpoint {:?} must be a file name in the device-plugins directory",
                req.endpoint
            )));
        }
        let resource = req.resource_name.clone();
        let socket = self.dir.join(&req.endpoint);
        let mut st = lock(&self.state);
        st.registrations.push(Registration {
            resource: resource.clone(),
            endpoint: req.endpoint.clone(),
            options: req.options,
            at: Instant::now(),
        });
        // A new registration replaces the old plugin, as in the kubelet.
        if let Some(old) = st.plugins.remove(&resource) {
            old.task.abort();
        }
        let task = tokio::spawn(watch_plugin(self.state.clone(), resource.clone(), socket));
        st.plugins.insert(
            resource,
            PluginConn {
                endpoint: req.endpoint,
                client: None,
                options: None,
                error: None,
                stream_ended: false,
                task,
            },
        );
        Ok(tonic::Response::new(dp::Empty {}))
    }
}

/// Connects to a registered plugin, reads its options and follows its ListAndWatch stream.
async fn watch_plugin(state: Shared, resource: String, socket: PathBuf) {
    let fail = |e: String| {
        if let Some(p) = lock(&state).plugins.get_mut(&resource) {
            p.error = Some(e);
        }
    };
    let channel = match heddle_kubelet_api::unix_channel(&socket).await {
        Ok(c) => c,
        Err(e) => return fail(format!("connecting to {}: {e}", socket.display())),
    };
    let mut client = DevicePluginClient::new(channel);
    let options = match client.get_device_plugin_options(dp::Empty {}).await {
        Ok(o) => o.into_inner(),
        Err(e) => return fail(format!("GetDevicePluginOptions: {e}")),
    };
    let mut stream = match client.list_and_watch(dp::Empty {}).await {
        Ok(s) => s.into_inner(),
        Err(e) => return fail(format!("ListAndWatch: {e}")),
    };
    if let Some(p) = lock(&state).plugins.get_mut(&resource) {
        p.client = Some(client);
        p.options = Some(options);
    }
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(update) => {
                lock(&state)
                    .updates
                    .entry(resource.clone())
                    .or_default()
                    .push(DeviceUpdate {
                        at: Instant::now(),
                        devices: update.devices,
                    });
            }
            Err(e) => {
                fail(format!("ListAndWatch stream: {e}"));
                break;
            }
        }
    }
    if let Some(p) = lock(&state).plugins.get_mut(&resource) {
        p.stream_ended = true;
    }
}

/// Resource name -> device ids, of one container.
type ContainerDevices = BTreeMap<String, Vec<String>>;

struct PodResourcesSvc {
    state: Shared,
}

impl PodResourcesSvc {
    fn pods(&self) -> Vec<pr::PodResources> {
        let st = lock(&self.state);
        // (namespace, pod) -> container -> resource -> ids, in allocation order.
        let mut pods: BTreeMap<(String, String), BTreeMap<String, ContainerDevices>> =
            BTreeMap::new();
        for a in &st.allocations {
            pods.entry((a.namespace.clone(), a.pod.clone()))
                .or_default()
                .entry(a.container.clone())
                .or_default()
                .entry(a.resource.clone())
                .or_default()
                .extend(a.device_ids.iter().cloned());
        }
        pods.into_iter()
            .map(|((namespace, name), containers)| pr::PodResources {
                name,
                namespace,
                containers: containers
                    .into_iter()
                    .map(|(name, resources)| pr::ContainerResources {
                        name,
                        devices: resources
                            .into_iter()
                            .map(|(resource_name, device_ids)| pr::ContainerDevices {
                                resource_name,
                                device_ids,
                                topology: None,
                            })
                            .collect(),
                        cpu_ids: vec![],
                    })
                    .collect(),
            })
            .collect()
    }
}

#[tonic::async_trait]
impl pod_resources_lister_server::PodResourcesLister for PodResourcesSvc {
    async fn list(
        &self,
        _request: tonic::Request<pr::ListPodResourcesRequest>,
    ) -> Result<tonic::Response<pr::ListPodResourcesResponse>, tonic::Status> {
        Ok(tonic::Response::new(pr::ListPodResourcesResponse {
            pod_resources: self.pods(),
        }))
    }

    async fn get(
        &self,
        request: tonic::Request<pr::GetPodResourcesRequest>,
    ) -> Result<tonic::Response<pr::GetPodResourcesResponse>, tonic::Status> {
        let req = request.into_inner();
        match self
            .pods()
            .into_iter()
            .find(|p| p.name == req.pod_name && p.namespace == req.pod_namespace)
        {
            Some(p) => Ok(tonic::Response::new(pr::GetPodResourcesResponse {
                pod_resources: Some(p),
            })),
            None => Err(tonic::Status::not_found(format!(
                "pod {}/{} holds no devices",
                req.pod_namespace, req.pod_name
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test kubelet's own round trip, without the real plugin: a minimal in-process
    /// plugin registers, the kubelet connects, reads options and updates, allocates through
    /// GetPreferredAllocation, and PodResources reports the allocation; after a restart the
    /// plugin's socket is gone.
    #[test]
    fn registers_allocates_and_reports_pod_resources() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let kubelet = TestKubelet::start(dir.path())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let plugin_socket = kubelet.device_plugin_dir().join("fake.sock");
        let listener = {
            let _g = rt.enter();
            TestKubelet::bind(&plugin_socket)?
        };
        rt.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(dp::device_plugin_server::DevicePluginServer::new(
                    FakePlugin,
                ))
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await
        });
        let kubelet_socket = kubelet.kubelet_socket();
        rt.block_on(async {
            let ch = heddle_kubelet_api::unix_channel(&kubelet_socket).await?;
            dp::registration_client::RegistrationClient::new(ch)
                .register(dp::RegisterRequest {
                    version: dp::VERSION.into(),
                    endpoint: "fake.sock".into(),
                    resource_name: "example.com/fake".into(),
                    options: Some(dp::DevicePluginOptions {
                        pre_start_required: false,
                        get_preferred_allocation_available: true,
                    }),
                })
                .await?;
            anyhow::Ok(())
        })?;
        kubelet.wait_registered("example.com/fake", 1, Duration::from_secs(5))?;
        assert_eq!(
            kubelet.devices("example.com/fake").unwrap().healthy(),
            vec!["a", "b", "c"]
        );
        let a = kubelet.allocate("p", "ns", "c0", "example.com/fake", 2)?;
        // The fake plugin prefers from the end of the list.
        assert_eq!(a.device_ids, vec!["c", "b"]);
        assert_eq!(a.response.envs["FAKE"], "c,b");
        let err = kubelet
            .allocate("q", "ns", "c0", "example.com/fake", 2)
            .unwrap_err();
        assert!(err.to_string().contains("only 1 healthy and free"), "{err}");

        let pods = rt.block_on(async {
            let ch = heddle_kubelet_api::unix_channel(&kubelet.pod_resources_socket()).await?;
            let mut c = pr::pod_resources_lister_client::PodResourcesListerClient::new(ch);
            let got = c
                .get(pr::GetPodResourcesRequest {
                    pod_name: "p".into(),
                    pod_namespace: "ns".into(),
                })
                .await?
                .into_inner();
            let missing = c
                .get(pr::GetPodResourcesRequest {
                    pod_name: "nope".into(),
                    pod_namespace: "ns".into(),
                })
                .await;
            anyhow::Ok((got, missing))
        })?;
        let devices = &pods.0.pod_resources.unwrap().containers[0].devices[0];
        assert_eq!(devices.resource_name, "example.com/fake");
        assert_eq!(devices.device_ids, vec!["c", "b"]);
        assert_eq!(pods.1.unwrap_err().code(), tonic::Code::NotFound);

        let mut kubelet = kubelet;
        kubelet.restart()?;
        assert!(!plugin_socket.exists());
        assert!(kubelet.kubelet_socket().exists());
        assert_eq!(kubelet.allocated("example.com/fake"), vec!["c", "b"]);
        Ok(())
    }

    struct FakePlugin;

    #[tonic::async_trait]
    impl dp::device_plugin_server::DevicePlugin for FakePlugin {
        async fn get_device_plugin_options(
            &self,
            _: tonic::Request<dp::Empty>,
        ) -> Result<tonic::Response<dp::DevicePluginOptions>, tonic::Status> {
            Ok(tonic::Response::new(dp::DevicePluginOptions {
                pre_start_required: false,
                get_preferred_allocation_available: true,
            }))
        }

        type ListAndWatchStream =
            futures::stream::BoxStream<'static, Result<dp::ListAndWatchResponse, tonic::Status>>;

        async fn list_and_watch(
            &self,
            _: tonic::Request<dp::Empty>,
        ) -> Result<tonic::Response<Self::ListAndWatchStream>, tonic::Status> {
            let devices = ["a", "b", "c"]
                .into_iter()
                .map(|id| dp::Device {
                    id: id.into(),
                    health: dp::HEALTHY.into(),
                    topology: None,
                })
                .collect();
            let first =
                futures::stream::once(async move { Ok(dp::ListAndWatchResponse { devices }) });
            Ok(tonic::Response::new(
                first.chain(futures::stream::pending()).boxed(),
            ))
        }

        async fn get_preferred_allocation(
            &self,
            r: tonic::Request<dp::PreferredAllocationRequest>,
        ) -> Result<tonic::Response<dp::PreferredAllocationResponse>, tonic::Status> {
            let c = &r.get_ref().container_requests[0];
            let mut ids = c.available_device_i_ds.clone();
            ids.reverse();
            ids.truncate(c.allocation_size as usize);
            Ok(tonic::Response::new(dp::PreferredAllocationResponse {
                container_responses: vec![dp::ContainerPreferredAllocationResponse {
                    device_i_ds: ids,
                }],
            }))
        }

        async fn allocate(
            &self,
            r: tonic::Request<dp::AllocateRequest>,
        ) -> Result<tonic::Response<dp::AllocateResponse>, tonic::Status> {
            Ok(tonic::Response::new(dp::AllocateResponse {
                container_responses: r
                    .get_ref()
                    .container_requests
                    .iter()
                    .map(|c| dp::ContainerAllocateResponse {
                        envs: [("FAKE".to_owned(), c.devices_i_ds.join(","))].into(),
                        ..Default::default()
                    })
                    .collect(),
            }))
        }

        async fn pre_start_container(
            &self,
            _: tonic::Request<dp::PreStartContainerRequest>,
        ) -> Result<tonic::Response<dp::PreStartContainerResponse>, tonic::Status> {
            Ok(tonic::Response::new(dp::PreStartContainerResponse {}))
        }
    }
}
