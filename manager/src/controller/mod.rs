//! The kube-rs controllers and the cluster-wide address allocator.
//!
//! * [`reconcile_network`] / [`reconcile_cluster_network`]: validate the network, claim its
//!   VLAN (and subnets) on the provider network's status with a `resourceVersion`
//!   precondition (a 409 conflict means another reconcile won the race: re-read and retry),
//!   make sure its [`NetworkAllocation`] exists, apply its NetworkAttachmentDefinition (owned,
//!   so Kubernetes deletes it with the network), and apply the status (server-side apply).
//! * [`reconcile_provider`]: drop claims of networks that no longer exist, which releases
//!   their VLANs and subnets; triggered by network deletions and a periodic resync.
//! * [`blocks`]: allocate and release addresses in a network's address blocks
//!   (`NetworkAddressBlock`, claimed by nodes), with optimistic concurrency; the reconciler
//!   migrates a network's single [`NetworkAllocation`] into blocks.
//! * [`ipam`]: the single-object allocator (every lease in one [`NetworkAllocation`]): the
//!   format the blocks replace, kept for the migration and as the benchmark's baseline.
//! * [`gc`]: drop leases of pods that are gone (every [`LEAK_COLLECTION_PERIOD`]).

pub mod blocks;
pub mod gc;
pub mod ipam;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::crd::{
    allocation_object, network_key, AllocationMode, ClusterNetwork, Condition, Network,
    NetworkAllocation, NetworkSpec, NetworkStatus, ProviderNetwork, VlanAssignment,
};
use crate::validation::{validate_network, validate_provider};
use crate::vlan::VlanPool;

/// Field manager name for server-side apply.
pub const FIELD_MANAGER: &str = "heddle-manager";
/// How often a conflicting write is retried before the reconcile gives up (and requeues).
pub const CONFLICT_RETRIES: usize = 8;

/// Why a reconcile failed (it is retried by the error policy).
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The API server refused or could not be reached.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object lacks a field the API server always sets.
    #[error("{0} has no {1}; is it a real API object?")]
    MissingField(String, &'static str),
    /// Too many 409 conflicts in a row.
    #[error("{0}: gave up after {CONFLICT_RETRIES} conflicting updates; will retry")]
    Contention(String),
    /// Address allocation refused.
    #[error("network {network}: {source}")]
    Ipam {
        /// Network key.
        network: String,
        /// The cause.
        source: crate::ipam::IpamError,
    },
}

/// What the reconcilers share.
#[derive(Clone)]
pub struct Context {
    /// API client.
    pub client: Client,
    /// Namespace for NADs and allocation objects of `ClusterNetwork`s (the manager's own).
    pub system_namespace: String,
}

/// A network of either kind, as the reconciler needs it.
struct Target {
    namespace: Option<String>,
    name: String,
    uid: String,
    generation: Option<i64>,
    spec: NetworkSpec,
    status: Option<NetworkStatus>,
    owner: OwnerReference,
}

impl Target {
    fn key(&self) -> String {
        network_key(self.namespace.as_deref(), &self.name)
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict())
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

/// The Multus NetworkAttachmentDefinition resource.
pub fn nad_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    )
}

/// The NetworkAttachmentDefinition annotation naming the device plugin resource whose
/// device Multus passes to the CNI plugin as `deviceID`.
pub const RESOURCE_NAME_ANNOTATION: &str = "k8s.v1.cni.cncf.io/resourceName";

/// The heddle-cni config a NetworkAttachmentDefinition carries. With a device plugin
/// `resource` it names it (`resourceName`: heddle-cni asks the kubelet for the pod's devices
/// when no deviceID comes) and declares the `deviceID` and `CNIDeviceInfoFile` capabilities,
/// so the runtime passes the device the kubelet chose and where the NPWG device-info goes.
/// The provider network's `mtu`, when it has one, becomes the config's `mtu`.
pub fn cni_config(
    name: &str,
    network_key: &str,
    spec: &NetworkSpec,
    vlan: u16,
    resource: Option<&str>,
    mtu: Option<u32>,
) -> serde_json::Value {
    let mut config = json!({
        "cniVersion": "1.1.0",
        "type": "heddle-cni",
        "name": name,
        "network": network_key,
        "kind": spec.kind.as_str(),
        "vlan": vlan,
    });
    if let Some(m) = mtu {
        // The provider network's MTU is every network's on it: the pods' interfaces and
        // their switch ports get it (heddle-cni's `mtu`).
        config["mtu"] = json!(m);
    }
    if let Some(r) = resource {
        config["resourceName"] = json!(r);
        config["capabilities"] = json!({"deviceID": true, "CNIDeviceInfoFile": true});
    }
    config
}

/// The NetworkAttachmentDefinition of a network: owned by it, its heddle-cni config, and the
/// `k8s.v1.cni.cncf.io/resourceName` annotation when pods take its interfaces from a device
/// plugin resource.
pub fn nad(
    name: &str,
    namespace: &str,
    owner: &OwnerReference,
    config: &serde_json::Value,
    resource: Option<&str>,
) -> serde_json::Value {
    let mut nad = json!({
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "ownerReferences": [owner],
            "labels": { "app.kubernetes.io/managed-by": FIELD_MANAGER },
        },
        "spec": { "config": config.to_string() },
    });
    if let Some(r) = resource {
        nad["metadata"]["annotations"] = json!({ RESOURCE_NAME_ANNOTATION: r });
    }
    nad
}

fn condition(ok: bool, reason: &str, message: impl Into<String>) -> Condition {
    Condition {
        type_: "Ready".into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: None,
    }
}

/// Reconcile a namespaced [`Network`].
pub async fn reconcile_network(
    net: Arc<Network>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    let target = Target {
        namespace: net.namespace(),
        name: net.name_any(),
        uid: net
            .uid()
            .ok_or_else(|| ControllerError::MissingField(net.name_any(), "metadata.uid"))?,
        generation: net.metadata.generation,
        spec: net.spec.clone(),
        status: net.status.clone(),
        owner: net
            .controller_owner_ref(&())
            .ok_or_else(|| ControllerError::MissingField(net.name_any(), "metadata.uid"))?,
    };
    let api: Api<Network> = Api::namespaced(
        ctx.client.clone(),
        target.namespace.as_deref().unwrap_or("default"),
    );
    reconcile_target(target, &ctx, |name, patch| {
        apply_status(api.clone(), name, patch)
    })
    .await
}

/// Reconcile a [`ClusterNetwork`].
pub async fn reconcile_cluster_network(
    net: Arc<ClusterNetwork>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    let target = Target {
        namespace: None,
        name: net.name_any(),
        uid: net
            .uid()
            .ok_or_else(|| ControllerError::MissingField(net.name_any(), "metadata.uid"))?,
        generation: net.metadata.generation,
        spec: net.spec.network.clone(),
        status: net.status.clone(),
        owner: net
            .controller_owner_ref(&())
            .ok_or_else(|| ControllerError::MissingField(net.name_any(), "metadata.uid"))?,
    };
    let api: Api<ClusterNetwork> = Api::all(ctx.client.clone());
    reconcile_target(target, &ctx, |name, patch| {
        apply_status(api.clone(), name, patch)
    })
    .await
}

/// Writes a network's status by server-side apply (either network kind).
async fn apply_status<K>(
    api: Api<K>,
    name: String,
    patch: serde_json::Value,
) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map(|_| ())
}

async fn reconcile_target<F, Fut>(
    t: Target,
    ctx: &Context,
    patch_status: F,
) -> Result<Action, ControllerError>
where
    F: Fn(String, serde_json::Value) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let key = t.key();
    let (api_version, kind) = if t.namespace.is_some() {
        (
            Network::api_version(&()).to_string(),
            Network::kind(&()).to_string(),
        )
    } else {
        (
            ClusterNetwork::api_version(&()).to_string(),
            ClusterNetwork::kind(&()).to_string(),
        )
    };
    let status_patch = |status: NetworkStatus| json!({ "apiVersion": api_version, "kind": kind, "status": status });
    let failed = |reason: &str, message: String| NetworkStatus {
        vlan: t.status.as_ref().and_then(|s| s.vlan),
        observed_generation: t.generation,
        conditions: vec![condition(false, reason, message)],
        ..NetworkStatus::default()
    };

    // 1. Claim the VLAN and subnets on the provider network.
    let providers: Api<ProviderNetwork> = Api::all(ctx.client.clone());
    let mut claimed = None;
    for _ in 0..CONFLICT_RETRIES {
        let mut provider = match providers.get(&t.spec.provider).await {
            Ok(p) => p,
            Err(e) if is_not_found(&e) => {
                let msg = format!(
                    "spec.provider: provider network {:?} does not exist; create it or fix the name",
                    t.spec.provider
                );
                patch_status(
                    t.name.clone(),
                    status_patch(failed("ProviderNotFound", msg)),
                )
                .await?;
                return Ok(Action::requeue(Duration::from_secs(60)));
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(e) = validate_provider(&provider.spec) {
            let msg = format!("provider network {}: {e}", t.spec.provider);
            patch_status(t.name.clone(), status_patch(failed("ProviderInvalid", msg))).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
        let mut assignments = provider.status.clone().unwrap_or_default().assignments;
        // A claim under our name but another UID belongs to a deleted namesake: drop it.
        assignments.retain(|a| a.network != key || a.uid == t.uid);
        let mine = assignments.iter().find(|a| a.network == key).cloned();
        let assigned = mine
            .as_ref()
            .map(|a| a.vlan)
            .or(t.status.as_ref().and_then(|s| s.vlan));
        let valid = match validate_network(
            &key,
            &t.spec,
            &t.spec.provider,
            &provider.spec,
            assigned,
            &assignments,
        ) {
            Ok(v) => v,
            Err(e) => {
                patch_status(
                    t.name.clone(),
                    status_patch(failed("Invalid", e.to_string())),
                )
                .await?;
                return Ok(Action::await_change());
            }
        };
        let subnets = valid.subnets();
        if let Some(m) = mine.as_ref().filter(|m| m.subnets == subnets) {
            claimed = Some((
                m.vlan,
                valid,
                provider.spec.vf_pool.clone(),
                provider.spec.mtu,
            ));
            break;
        }
        let mut pool = VlanPool::new(t.spec.provider.clone(), provider.spec.vlan_pool.clone());
        for a in &assignments {
            pool.restore(&a.network, a.vlan);
        }
        let vlan = match pool.assign(&key, t.spec.vlan.or(assigned)) {
            Ok(v) => v,
            Err(e) => {
                patch_status(
                    t.name.clone(),
                    status_patch(failed("VlanUnavailable", e.to_string())),
                )
                .await?;
                return Ok(Action::requeue(Duration::from_secs(60)));
            }
        };
        assignments.retain(|a| a.network != key);
        assignments.push(VlanAssignment {
            network: key.clone(),
            uid: t.uid.clone(),
            vlan,
            subnets,
        });
        assignments.sort_by(|a, b| a.network.cmp(&b.network));
        provider
            .status
            .get_or_insert_with(Default::default)
            .assignments = assignments;
        // replace_status sends metadata.resourceVersion from the GET: a precondition.
        match providers
            .replace_status(&t.spec.provider, &PostParams::default(), &provider)
            .await
        {
            Ok(_) => {
                claimed = Some((
                    vlan,
                    valid,
                    provider.spec.vf_pool.clone(),
                    provider.spec.mtu,
                ));
                break;
            }
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let Some((vlan, _valid, vf_pool, mtu)) = claimed else {
        return Err(ControllerError::Contention(format!(
            "provider network {}",
            t.spec.provider
        )));
    };

    // 2. The address blocks: migrate a single allocation object, count the blocks.
    let (alloc_ns, alloc_name) =
        allocation_object(t.namespace.as_deref(), &t.name, &ctx.system_namespace);
    let mut counts = (None, None);
    let mut address_blocks = None;
    if t.spec.allocation != AllocationMode::None {
        let allocator = blocks::BlockAllocator::new(
            Api::namespaced(ctx.client.clone(), &alloc_ns),
            &alloc_name,
            &key,
            &t.spec,
            FIELD_MANAGER,
            Some(t.owner.clone()),
        );
        // A spec the allocator cannot parse was refused by validation above.
        if let Ok(allocator) = allocator {
            let allocs: Api<NetworkAllocation> = Api::namespaced(ctx.client.clone(), &alloc_ns);
            let moved = allocator.migrate(&allocs, &alloc_name).await?;
            if moved > 0 {
                tracing::info!(network = %key, leases = moved, "moved the network's leases into address blocks");
            }
            let (c, v4, v6) = allocator.counts().await?;
            counts = (v4, v6);
            address_blocks = Some(c);
        }
    }

    // 3. The NetworkAttachmentDefinition Multus users reference by name.
    let nad_ns = t
        .namespace
        .clone()
        .unwrap_or_else(|| ctx.system_namespace.clone());
    let nads: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &nad_ns, &nad_resource());
    let resource = t.spec.device_resource(vf_pool.as_deref());
    let config = cni_config(&t.name, &key, &t.spec, vlan, resource.as_deref(), mtu);
    let nad = nad(&t.name, &nad_ns, &t.owner, &config, resource.as_deref());
    nads.patch(
        &t.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(nad),
    )
    .await?;

    // 4. Status.
    let status = NetworkStatus {
        vlan: Some(vlan),
        observed_generation: t.generation,
        conditions: vec![condition(
            true,
            "Ready",
            format!(
                "VLAN {vlan} on provider network {}; NetworkAttachmentDefinition {nad_ns}/{}",
                t.spec.provider, t.name
            ),
        )],
        ipv4: counts.0,
        ipv6: counts.1,
        address_blocks,
    };
    patch_status(t.name.clone(), status_patch(status)).await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Drop the claims of networks that no longer exist (or were recreated), which releases their
/// VLANs and subnets.
pub async fn reconcile_provider(
    provider: Arc<ProviderNetwork>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    let providers: Api<ProviderNetwork> = Api::all(ctx.client.clone());
    let name = provider.name_any();
    for _ in 0..CONFLICT_RETRIES {
        let mut p = providers.get(&name).await?;
        let Some(status) = p.status.as_mut() else {
            return Ok(Action::requeue(Duration::from_secs(300)));
        };
        let networks: Api<Network> = Api::all(ctx.client.clone());
        let cluster_networks: Api<ClusterNetwork> = Api::all(ctx.client.clone());
        let mut live = std::collections::BTreeSet::new();
        for n in networks.list(&ListParams::default()).await? {
            live.insert((
                network_key(n.namespace().as_deref(), &n.name_any()),
                n.uid().unwrap_or_default(),
            ));
        }
        for n in cluster_networks.list(&ListParams::default()).await? {
            live.insert((n.name_any(), n.uid().unwrap_or_default()));
        }
        let before = status.assignments.len();
        status
            .assignments
            .retain(|a| live.contains(&(a.network.clone(), a.uid.clone())));
        if status.assignments.len() == before {
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
        match providers
            .replace_status(&name, &PostParams::default(), &p)
            .await
        {
            Ok(_) => return Ok(Action::requeue(Duration::from_secs(300))),
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ControllerError::Contention(format!(
        "provider network {name}"
    )))
}

fn error_policy<K>(obj: Arc<K>, err: &ControllerError, _ctx: Arc<Context>) -> Action
where
    K: ResourceExt,
{
    tracing::warn!(object = %obj.name_any(), error = %err, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// How often leases of deleted pods are collected.
pub const LEAK_COLLECTION_PERIOD: Duration = Duration::from_secs(300);

/// Run the three controllers and the leak collector until the process is stopped.
pub async fn run(client: Client, system_namespace: String) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        system_namespace,
    });
    let networks = Controller::new(
        Api::<Network>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(reconcile_network, error_policy, ctx.clone())
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "network reconcile");
        }
    });
    let cluster_networks = Controller::new(
        Api::<ClusterNetwork>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(reconcile_cluster_network, error_policy, ctx.clone())
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "cluster network reconcile");
        }
    });
    let providers = Controller::new(
        Api::<ProviderNetwork>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<Network>::all(client.clone()),
        watcher::Config::default(),
        |n: Network| Some(ObjectRef::<ProviderNetwork>::new(&n.spec.provider)),
    )
    .watches(
        Api::<ClusterNetwork>::all(client.clone()),
        watcher::Config::default(),
        |n: ClusterNetwork| Some(ObjectRef::<ProviderNetwork>::new(&n.spec.network.provider)),
    )
    .run(reconcile_provider, error_policy, ctx)
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "provider reconcile");
        }
    });
    let leaks = async move {
        let mut tick = tokio::time::interval(LEAK_COLLECTION_PERIOD);
        loop {
            tick.tick().await;
            if let Err(e) = gc::collect_pod_leaks(&client).await {
                tracing::warn!(error = %e, "leak collection failed; retrying next period");
            }
        }
    };
    futures::join!(networks, cluster_networks, providers, leaks);
}

#[cfg(test)]
mod tests;
