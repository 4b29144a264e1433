//! Leak collection: leases whose pod is gone (a DEL that never came: node lost, runtime
//! crash) are dropped from the [`NetworkAddressBlock`] objects (and from any
//! [`NetworkAllocation`] not migrated yet), and the blocks of nodes that left are deleted
//! once their leases are gone, which releases the nodes' affinities.
//!
//! Cluster lease owners are `<pod uid>/<ifname>`. The allocation objects are listed *before*
//! the pods, so a lease seen in that listing belongs to a pod created before the pod listing;
//! if its UID is missing there, the pod is gone for good (UIDs are never reused). Only those
//! owners are dropped, also on a retry after a 409, so a lease written after the first
//! listing is never collected by mistake.
//!
//! Leases `heddle-ipam` takes are owned by `<container id>/<ifname>` (the CNI attachment),
//! which says nothing about the pod: only owners whose first part has the shape of a pod UID
//! (a UUID) are judged here; the others are freed by their CNI DEL.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};

use super::{blocks, is_conflict, ControllerError, CONFLICT_RETRIES};
use crate::crd::{NetworkAddressBlock, NetworkAllocation};
use k8s_openapi::api::core::v1::Node;

/// The pod UID of a cluster lease owner (`<pod uid>/<ifname>`).
pub fn pod_uid_of(owner: &str) -> &str {
    owner.split_once('/').map_or(owner, |(uid, _)| uid)
}

/// Whether `s` has the shape of a Kubernetes UID (`8-4-4-4-12` hex digits); container ids
/// (64 hex digits from containerd, CRI-O and podman) never do.
pub fn looks_like_pod_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Drop every lease whose pod no longer exists, and the empty blocks of nodes that left;
/// returns how many leases were dropped.
pub async fn collect_pod_leaks(client: &Client) -> Result<usize, ControllerError> {
    let block_api: Api<NetworkAddressBlock> = Api::all(client.clone());
    let listed_blocks = block_api.list(&ListParams::default()).await?.items;
    let allocs: Api<NetworkAllocation> = Api::all(client.clone());
    let listed = allocs.list(&ListParams::default()).await?;
    let pods: Api<Pod> = Api::all(client.clone());
    let live: BTreeSet<String> = pods
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.uid())
        .collect();
    let nodes: BTreeSet<String> = Api::<Node>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|n| n.name_any())
        .collect();
    let dead = |o: &str| looks_like_pod_uid(pod_uid_of(o)) && !live.contains(pod_uid_of(o));
    let (mut dropped, deleted) = blocks::collect(&block_api, listed_blocks, dead, &nodes).await?;
    if deleted > 0 {
        tracing::info!(
            blocks = deleted,
            "deleted empty address blocks of nodes that left"
        );
    }
    for alloc in listed {
        let dead: BTreeSet<String> = alloc
            .spec
            .leases
            .keys()
            .filter(|o| looks_like_pod_uid(pod_uid_of(o)) && !live.contains(pod_uid_of(o)))
            .cloned()
            .collect();
        if dead.is_empty() {
            continue;
        }
        let ns = alloc.namespace().unwrap_or_default();
        let name = alloc.name_any();
        let api: Api<NetworkAllocation> = Api::namespaced(client.clone(), &ns);
        let mut current = alloc;
        let mut done = false;
        for _ in 0..CONFLICT_RETRIES {
            let before = current.spec.leases.len();
            current.spec.leases.retain(|o, _| !dead.contains(o));
            let n = before - current.spec.leases.len();
            if n == 0 {
                done = true;
                break;
            }
            match api.replace(&name, &PostParams::default(), &current).await {
                Ok(_) => {
                    tracing::info!(allocation = %format!("{ns}/{name}"), leases = n, "collected leases of deleted pods");
                    dropped += n;
                    done = true;
                    break;
                }
                Err(e) if is_conflict(&e) => current = api.get(&name).await?,
                Err(e) => return Err(e.into()),
            }
        }
        if !done {
            return Err(ControllerError::Contention(format!(
                "network allocation {ns}/{name}"
            )));
        }
    }
    Ok(dropped)
}
