//! Cluster-wide address allocation on the API server, usable from any node (`heddle-cni`).
//!
//! Each network has one [`NetworkAllocation`] object holding its leases. An allocator reads
//! it, allocates in memory with [`NetworkIpam`] (the bitmap is rebuilt from the leases), and
//! writes it back with `replace`, which carries the `resourceVersion` it read: if any other
//! allocator wrote in between, the API server answers 409 Conflict and we start over from a
//! fresh read. Two allocators therefore never hand out the same address, on any node.

use std::net::IpAddr;
use std::time::Duration;

use kube::api::PostParams;
use kube::Api;

use super::{is_conflict, ControllerError, CONFLICT_RETRIES};
use crate::crd::{NetworkAllocation, NetworkSpec};
use crate::ipam::{IpamError, NetworkIpam};

/// Rebuild the allocator of a network from its allocation object.
pub fn load(spec: &NetworkSpec, alloc: &NetworkAllocation) -> Result<NetworkIpam, IpamError> {
    let mut ipam = NetworkIpam::from_spec(spec)?;
    let mut leases = std::collections::BTreeMap::new();
    for (owner, addrs) in &alloc.spec.leases {
        let parsed: Result<Vec<IpAddr>, _> = addrs.iter().map(|a| a.parse()).collect();
        let parsed = parsed.map_err(|_| IpamError::Restore {
            owner: owner.clone(),
            source: Box::new(IpamError::BadAddress {
                field: format!("spec.leases[{owner}]"),
                value: addrs.join(","),
                family: "IP",
            }),
        })?;
        leases.insert(owner.clone(), parsed);
    }
    ipam.restore(&leases)?;
    Ok(ipam)
}

fn store(alloc: &mut NetworkAllocation, ipam: &NetworkIpam) {
    alloc.spec.leases = ipam
        .leases()
        .iter()
        .map(|(o, a)| (o.clone(), a.iter().map(ToString::to_string).collect()))
        .collect();
}

/// Apply `change` to the network's allocator and write it back, retrying on conflicts.
/// `change` returns `Ok(None)` when nothing needs writing.
async fn update<T>(
    api: &Api<NetworkAllocation>,
    name: &str,
    spec: &NetworkSpec,
    mut change: impl FnMut(&mut NetworkIpam) -> Result<(T, bool), IpamError>,
) -> Result<T, ControllerError> {
    for attempt in 0..CONFLICT_RETRIES {
        let mut alloc = api.get(name).await?;
        let ipam_err = |source| ControllerError::Ipam {
            network: alloc.spec.network.clone(),
            source,
        };
        let mut ipam = load(spec, &alloc).map_err(ipam_err)?;
        let (out, changed) = change(&mut ipam).map_err(|source| ControllerError::Ipam {
            network: alloc.spec.network.clone(),
            source,
        })?;
        if !changed {
            return Ok(out);
        }
        store(&mut alloc, &ipam);
        match api.replace(name, &PostParams::default(), &alloc).await {
            Ok(_) => return Ok(out),
            Err(e) if is_conflict(&e) => {
                tracing::debug!(%name, attempt, "allocation conflict, retrying");
                if attempt > 1 {
                    tokio::time::sleep(Duration::from_millis(5 << attempt.min(6))).await;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ControllerError::Contention(format!(
        "network allocation {name}"
    )))
}

/// Give `owner` addresses on the network whose allocation object is `name` (idempotent).
pub async fn allocate(
    api: &Api<NetworkAllocation>,
    name: &str,
    spec: &NetworkSpec,
    owner: &str,
    requested: &[IpAddr],
) -> Result<Vec<IpAddr>, ControllerError> {
    update(api, name, spec, |ipam| {
        let held = ipam.leases().contains_key(owner);
        let addrs = ipam.allocate(owner, requested)?;
        Ok((addrs, !held))
    })
    .await
}

/// Free what `owner` holds (a repeated release succeeds and writes nothing).
pub async fn release(
    api: &Api<NetworkAllocation>,
    name: &str,
    spec: &NetworkSpec,
    owner: &str,
) -> Result<Vec<IpAddr>, ControllerError> {
    update(api, name, spec, |ipam| {
        let freed = ipam.release(owner);
        let changed = !freed.is_empty();
        Ok((freed, changed))
    })
    .await
}

/// Release the leases whose owner `live` rejects (pods that are gone); returns them.
pub async fn collect_leaks(
    api: &Api<NetworkAllocation>,
    name: &str,
    spec: &NetworkSpec,
    live: impl Fn(&str) -> bool,
) -> Result<Vec<String>, ControllerError> {
    update(api, name, spec, |ipam| {
        let dead = ipam.collect_leaks(&live);
        let changed = !dead.is_empty();
        Ok((dead, changed))
    })
    .await
}
