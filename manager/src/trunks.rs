//! What the node daemon programs on its uplinks: for each provider network that selects this
//! node, the trunk interface (or VF pool) and every VLAN claimed on it.

use std::collections::{BTreeMap, BTreeSet};

use crate::crd::ProviderNetwork;

/// One uplink's trunk on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trunk {
    /// Provider network name.
    pub provider: String,
    /// `interface` or `vfPool` of the provider network.
    pub uplink: String,
    /// MTU, when the provider sets one.
    pub mtu: Option<u32>,
    /// VLANs the trunk must carry.
    pub vlans: BTreeSet<u16>,
}

/// Whether a provider network's node selector matches a node's labels (every selector label
/// present with the same value; an empty selector matches every node).
pub fn selects(provider: &ProviderNetwork, node_labels: &BTreeMap<String, String>) -> bool {
    provider
        .spec
        .node_selector
        .iter()
        .all(|(k, v)| node_labels.get(k) == Some(v))
}

/// The trunks of a node, from the provider networks and their claimed VLANs (status).
pub fn node_trunks(
    providers: &[ProviderNetwork],
    node_labels: &BTreeMap<String, String>,
) -> Vec<Trunk> {
    let mut out: Vec<Trunk> = providers
        .iter()
        .filter(|p| selects(p, node_labels))
        .filter_map(|p| {
            let uplink = p
                .spec
                .interface
                .clone()
                .or_else(|| p.spec.vf_pool.clone())?;
            let vlans = p
                .status
                .iter()
                .flat_map(|s| s.assignments.iter().map(|a| a.vlan))
                .collect();
            Some(Trunk {
                provider: p.metadata.name.clone().unwrap_or_default(),
                uplink,
                mtu: p.spec.mtu,
                vlans,
            })
        })
        .collect();
    out.sort_by(|a, b| a.provider.cmp(&b.provider));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ProviderNetworkSpec, ProviderNetworkStatus, VlanAssignment};

    fn provider(name: &str, selector: &[(&str, &str)], vlans: &[u16]) -> ProviderNetwork {
        let mut p = ProviderNetwork::new(
            name,
            ProviderNetworkSpec {
                interface: Some(format!("{name}-if")),
                vf_pool: None,
                node_selector: selector
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                vlan_pool: vec![],
                mtu: Some(1500),
            },
        );
        p.status = Some(ProviderNetworkStatus {
            assignments: vlans
                .iter()
                .map(|&v| VlanAssignment {
                    network: format!("ns/n{v}"),
                    uid: "u".into(),
                    vlan: v,
                    subnets: vec![],
                })
                .collect(),
            conditions: vec![],
        });
        p
    }

    #[test]
    fn node_gets_the_vlans_of_the_providers_that_select_it() {
        let providers = [
            provider("a", &[], &[100, 101]),
            provider("b", &[("rack", "r1")], &[200]),
            provider("c", &[("rack", "r2")], &[300]),
        ];
        let labels: BTreeMap<String, String> = [("rack".to_string(), "r1".to_string())].into();
        let trunks = node_trunks(&providers, &labels);
        assert_eq!(trunks.len(), 2);
        assert_eq!(trunks[0].uplink, "a-if");
        assert_eq!(trunks[0].vlans, BTreeSet::from([100, 101]));
        assert_eq!(trunks[1].vlans, BTreeSet::from([200]));
    }
}
