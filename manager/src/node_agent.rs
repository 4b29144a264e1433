//! The node agent: makes each uplink trunk of this node's `heddle-switch` carry exactly the
//! VLANs the cluster's networks claimed on its provider network.
//!
//! A provider network's `interface` names the switch port of the uplink (a trunk). The agent
//! reads the node's labels and the ProviderNetworks (their status holds the VLAN claims, see
//! [`crate::trunks`]), compares with the switch's ports, and replaces a trunk's VLAN set
//! (`PUT /v1/ports/{name}/vlans`) when it differs. It runs on every ProviderNetwork change
//! and on a resync timer, so a restarted switch is brought back in line.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use heddle_api::{PortMode, PortStatus, TrunkVlans, VlanRange};

use crate::trunks::Trunk;

/// One change to make on the switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkChange {
    /// Switch port (the provider network's `interface`).
    pub port: String,
    /// The VLAN set it must carry (the native VLAN, if any, is kept).
    pub vlans: TrunkVlans,
}

/// Why a trunk could not be programmed; reported, never fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Provider network.
    pub provider: String,
    /// The sentence: what is wrong and the fix.
    pub reason: String,
}

/// Compresses VLAN ids into ranges: `[100, 101, 102, 200]` becomes `100-102, 200`.
pub fn ranges(vlans: &BTreeSet<u16>) -> Vec<VlanRange> {
    let mut out = Vec::new();
    let mut it = vlans.iter().copied().peekable();
    while let Some(first) = it.next() {
        let mut last = first;
        while it.peek() == Some(&(last + 1)) {
            last += 1;
            it.next();
        }
        out.push(if first == last {
            VlanRange::One(first)
        } else {
            VlanRange::Range((first, last))
        });
    }
    out
}

fn expand(vlans: &[VlanRange]) -> BTreeSet<u16> {
    vlans
        .iter()
        .flat_map(|r| {
            let (a, b) = r.bounds();
            a..=b
        })
        .collect()
}

/// Pure decision: the changes that make the switch's trunks match `trunks`.
pub fn plan(trunks: &[Trunk], ports: &[PortStatus]) -> (Vec<TrunkChange>, Vec<Skipped>) {
    let by_name: BTreeMap<&str, &PortStatus> =
        ports.iter().map(|p| (p.spec.name.as_str(), p)).collect();
    let mut changes = Vec::new();
    let mut skipped = Vec::new();
    for t in trunks {
        let Some(port) = by_name.get(t.uplink.as_str()) else {
            skipped.push(Skipped {
                provider: t.provider.clone(),
                reason: format!(
                    "provider network {} names uplink {:?}, which is not a port of this node's heddle-switch: add it as a trunk port (heddlectl add-port {} --devargs ... --trunk ...)",
                    t.provider, t.uplink, t.uplink
                ),
            });
            continue;
        };
        let PortMode::Trunk { vlans, native_vlan } = &port.spec.mode else {
            skipped.push(Skipped {
                provider: t.provider.clone(),
                reason: format!(
                    "uplink port {:?} of provider network {} is an access port: make it a trunk",
                    t.uplink, t.provider
                ),
            });
            continue;
        };
        if t.vlans.is_empty() {
            // A trunk needs at least one VLAN; with no network claiming one, leave it as is.
            continue;
        }
        if expand(vlans) != t.vlans {
            changes.push(TrunkChange {
                port: t.uplink.clone(),
                vlans: TrunkVlans {
                    vlans: ranges(&t.vlans),
                    native_vlan: *native_vlan,
                },
            });
        }
    }
    (changes, skipped)
}

/// Applies `changes` through the daemon client; returns the errors (one sentence each).
pub fn apply(switch: &heddle_api::Client, changes: &[TrunkChange]) -> Vec<String> {
    changes
        .iter()
        .filter_map(|c| {
            switch
                .set_trunk_vlans(&c.port, &c.vlans)
                .err()
                .map(|e| format!("trunk {}: {e}", c.port))
        })
        .collect()
}

/// Runs the agent for `node` until the process ends.
pub async fn run(
    client: kube::Client,
    node: String,
    switch: heddle_api::Client,
    resync: Duration,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Node;
    use kube::runtime::watcher;
    use kube::Api;

    let nodes: Api<Node> = Api::all(client.clone());
    let providers: Api<crate::crd::ProviderNetwork> = Api::all(client);
    let mut events = watcher(providers.clone(), watcher::Config::default()).boxed();
    let mut timer = tokio::time::interval(resync);
    loop {
        tokio::select! {
            _ = timer.tick() => {}
            ev = events.next() => {
                if let Some(Err(e)) = ev {
                    tracing::warn!(error = %e, "ProviderNetwork watch failed; retrying at the next resync");
                }
            }
        }
        let labels = match nodes.get(&node).await {
            Ok(n) => n.metadata.labels.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(%node, error = %e, "cannot read this node's labels");
                continue;
            }
        };
        let list = match providers.list(&Default::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list ProviderNetworks");
                continue;
            }
        };
        let trunks = crate::trunks::node_trunks(&list, &labels);
        let sw = switch.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<_, heddle_api::ClientError> {
            let ports = sw.ports()?;
            let (changes, skipped) = plan(&trunks, &ports);
            let errors = apply(&sw, &changes);
            Ok((changes, skipped, errors))
        })
        .await?;
        match result {
            Ok((changes, skipped, errors)) => {
                for c in &changes {
                    tracing::info!(port = %c.port, vlans = ?c.vlans.vlans, "trunk VLANs programmed");
                }
                for s in skipped {
                    tracing::warn!(provider = %s.provider, "{}", s.reason);
                }
                for e in errors {
                    tracing::error!("{e}");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "heddle-switch not reachable; retrying at the next resync")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heddle_api::{PortOrigin, PortSpec};

    fn port(name: &str, mode: PortMode) -> PortStatus {
        PortStatus {
            spec: PortSpec {
                name: name.into(),
                devargs: "net_null0".into(),
                mode,
                mac: None,
                queues: None,
                mtu: None,
            },
            index: 0,
            dpdk_port: Some(0),
            driver: "net_null".into(),
            link_up: true,
            rx_queues: 1,
            tx_queues: 1,
            origin: PortOrigin::Config,
        }
    }

    fn trunk(provider: &str, uplink: &str, vlans: &[u16]) -> Trunk {
        Trunk {
            provider: provider.into(),
            uplink: uplink.into(),
            mtu: None,
            vlans: vlans.iter().copied().collect(),
        }
    }

    #[test]
    fn ranges_compress_runs() {
        let set: BTreeSet<u16> = [100, 101, 102, 200, 4094].into_iter().collect();
        assert_eq!(
            ranges(&set),
            vec![
                VlanRange::Range((100, 102)),
                VlanRange::One(200),
                VlanRange::One(4094)
            ]
        );
        assert_eq!(expand(&ranges(&set)), set);
    }

    #[test]
    fn plans_only_what_differs_and_keeps_the_native_vlan() {
        let ports = vec![
            port(
                "up0",
                PortMode::Trunk {
                    vlans: vec![VlanRange::One(100)],
                    native_vlan: Some(1),
                },
            ),
            port(
                "up1",
                PortMode::Trunk {
                    vlans: vec![VlanRange::Range((200, 201))],
                    native_vlan: None,
                },
            ),
            port("pod", PortMode::Access { vlan: 100 }),
        ];
        let trunks = vec![
            trunk("a", "up0", &[100, 101]),
            trunk("b", "up1", &[200, 201]),
            trunk("c", "missing", &[5]),
            trunk("d", "pod", &[7]),
            trunk("e", "up1", &[]),
        ];
        let (changes, skipped) = plan(&trunks, &ports);
        assert_eq!(
            changes,
            vec![TrunkChange {
                port: "up0".into(),
                vlans: TrunkVlans {
                    vlans: vec![VlanRange::Range((100, 101))],
                    native_vlan: Some(1)
                }
            }]
        );
        assert_eq!(skipped.len(), 2);
        assert!(skipped[0]
            .reason
            .contains("not a port of this node's heddle-switch"));
        assert!(skipped[1].reason.contains("is an access port"));
    }
}
