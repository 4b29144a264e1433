//! Pure checks of provider networks and networks, run before anything is assigned or stored.
//! Every message names the field and the fix.

use ipnet::IpNet;

use crate::crd::{AllocationMode, NetworkKind, NetworkSpec, ProviderNetworkSpec, VlanAssignment};
use crate::ipam::{IpamError, PoolConfig};
use crate::vlan::{pool_to_string, VlanError};

/// One reason a resource is refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ValidationError {
    /// A VLAN problem.
    #[error(transparent)]
    Vlan(#[from] VlanError),
    /// A subnet, range, gateway or exclusion problem.
    #[error(transparent)]
    Subnet(#[from] IpamError),
    /// Two networks on one provider with overlapping subnets.
    #[error("{field}: {cidr} overlaps {other_cidr} of network {other} on provider network {provider}; use a disjoint subnet")]
    SubnetOverlap {
        /// Field path.
        field: String,
        /// This network's subnet.
        cidr: String,
        /// The other network's subnet.
        other_cidr: String,
        /// The other network.
        other: String,
        /// Provider network name.
        provider: String,
    },
    /// Any other field problem.
    #[error("{field}: {message}")]
    Field {
        /// Field path.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

fn field(field: &str, message: impl Into<String>) -> ValidationError {
    ValidationError::Field {
        field: field.into(),
        message: message.into(),
    }
}

/// Every reason a resource is refused (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl std::fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let msgs: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&msgs.join("; "))
    }
}

impl std::error::Error for ValidationErrors {}

fn finish<T>(errors: Vec<ValidationError>, ok: T) -> Result<T, ValidationErrors> {
    if errors.is_empty() {
        Ok(ok)
    } else {
        Err(ValidationErrors(errors))
    }
}

/// Check a provider network spec.
pub fn validate_provider(spec: &ProviderNetworkSpec) -> Result<(), ValidationErrors> {
    let mut errors = Vec::new();
    match (&spec.interface, &spec.vf_pool) {
        (Some(_), Some(_)) | (None, None) => errors.push(field(
            "spec.interface",
            "set exactly one of spec.interface (a NIC) and spec.vfPool (an SR-IOV VF pool)",
        )),
        _ => {}
    }
    for (i, r) in spec.vlan_pool.iter().enumerate() {
        let f = format!("spec.vlanPool[{i}]");
        if !(1..=4094).contains(&r.start) || !(1..=4094).contains(&r.end) {
            errors.push(field(
                &f,
                format!(
                    "{}-{} leaves 1-4094; VLAN ids are 1 to 4094",
                    r.start, r.end
                ),
            ));
        } else if r.start > r.end {
            errors.push(field(
                &f,
                format!("start {} is after end {}; swap them", r.start, r.end),
            ));
        }
    }
    if let Some(mtu) = spec.mtu {
        if !(576..=9216).contains(&mtu) {
            errors.push(field("spec.mtu", format!("{mtu} is outside 576-9216")));
        }
    }
    finish(errors, ())
}

/// A network that passed validation: its parsed subnets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidNetwork {
    /// IPv4 pool, if any.
    pub ipv4: Option<PoolConfig>,
    /// IPv6 pool, if any.
    pub ipv6: Option<PoolConfig>,
}

impl ValidNetwork {
    /// The subnets as CIDR strings (what a provider assignment records).
    pub fn subnets(&self) -> Vec<String> {
        self.ipv4
            .iter()
            .chain(self.ipv6.iter())
            .map(|p| p.cidr.to_string())
            .collect()
    }
}

/// Check a network against its provider network and the other networks on that provider.
///
/// * `key`: this network's key (`namespace/name` or `name`), skipped in `others`.
/// * `provider_name`, `provider`: the provider network it names.
/// * `assigned_vlan`: the VLAN already in the network's status, if any.
/// * `others`: the provider's current assignments (VLANs and subnets of every network on it).
pub fn validate_network(
    key: &str,
    spec: &NetworkSpec,
    provider_name: &str,
    provider: &ProviderNetworkSpec,
    assigned_vlan: Option<u16>,
    others: &[VlanAssignment],
) -> Result<ValidNetwork, ValidationErrors> {
    let mut errors = Vec::new();
    if let Some(v) = spec.vlan {
        if !(1..=4094).contains(&v) {
            errors.push(VlanError::OutOfRange { vlan: v }.into());
        } else if let Some(a) = assigned_vlan.filter(|&a| a != v) {
            errors.push(
                VlanError::Changed {
                    assigned: a,
                    requested: v,
                }
                .into(),
            );
        } else if assigned_vlan.is_none()
            && !provider
                .vlan_pool
                .iter()
                .any(|r| (r.start..=r.end).contains(&v))
        {
            errors.push(
                VlanError::OutsidePool {
                    vlan: v,
                    provider: provider_name.into(),
                    pool: pool_to_string(&provider.vlan_pool),
                }
                .into(),
            );
        }
    }
    let ipv4 = match spec
        .ipv4
        .as_ref()
        .map(|s| PoolConfig::parse("spec.ipv4", s, true))
        .transpose()
    {
        Ok(p) => p,
        Err(e) => {
            errors.push(e.into());
            None
        }
    };
    let ipv6 = match spec
        .ipv6
        .as_ref()
        .map(|s| PoolConfig::parse("spec.ipv6", s, false))
        .transpose()
    {
        Ok(p) => p,
        Err(e) => {
            errors.push(e.into());
            None
        }
    };
    if spec.allocation != AllocationMode::None && spec.ipv4.is_none() && spec.ipv6.is_none() {
        errors.push(field(
            "spec.allocation",
            "dynamic and static allocation need spec.ipv4 or spec.ipv6; add a subnet or set allocation: none",
        ));
    }
    if let Some(m) = &spec.memif {
        if !m.ring_size.is_power_of_two() {
            errors.push(field(
                "spec.memif.ringSize",
                format!("{} is not a power of two; use e.g. 1024", m.ring_size),
            ));
        }
    }
    if let Some(r) = &spec.resource_name {
        if spec.kind == NetworkKind::Kernel {
            errors.push(field(
                "spec.resourceName",
                "kernel networks take no device plugin resource (their interface is a veth); remove it",
            ));
        } else if !valid_resource_name(r) {
            errors.push(field(
                "spec.resourceName",
                format!(
                    "{r:?} is not a device plugin resource <domain>/<name> (letters, digits, '.', '_', '-'), such as heddle.dev/vhost-user"
                ),
            ));
        }
    }
    for (f, pool) in [("spec.ipv4.cidr", &ipv4), ("spec.ipv6.cidr", &ipv6)] {
        let Some(pool) = pool else { continue };
        for other in others.iter().filter(|o| o.network != key) {
            for theirs in &other.subnets {
                let Ok(theirs_net) = theirs.parse::<IpNet>() else {
                    continue;
                };
                if overlaps(&pool.cidr, &theirs_net) {
                    errors.push(ValidationError::SubnetOverlap {
                        field: f.into(),
                        cidr: pool.cidr.to_string(),
                        other_cidr: theirs.clone(),
                        other: other.network.clone(),
                        provider: provider_name.into(),
                    });
                }
            }
        }
    }
    finish(errors, ValidNetwork { ipv4, ipv6 })
}

/// A device plugin resource name: `<domain>/<name>`, each of letters, digits, `.`, `_`, `-`
/// (what heddle-cni accepts as `resourceName`).
pub fn valid_resource_name(r: &str) -> bool {
    r.split_once('/').is_some_and(|(domain, name)| {
        [domain, name].iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
    })
}

/// Whether two subnets share an address (of one family, one contains the other).
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Subnet, VlanRange};

    fn provider() -> ProviderNetworkSpec {
        ProviderNetworkSpec {
            interface: Some("ens1f0".into()),
            vf_pool: None,
            node_selector: Default::default(),
            vlan_pool: vec![VlanRange {
                start: 100,
                end: 199,
            }],
            mtu: Some(9000),
        }
    }

    fn network(vlan: Option<u16>, v4: Option<&str>) -> NetworkSpec {
        NetworkSpec {
            kind: NetworkKind::VhostUser,
            provider: "uplink0".into(),
            vlan,
            ipv4: v4.map(|c| Subnet {
                cidr: c.into(),
                ranges: vec![],
                gateway: None,
                exclude: vec![],
            }),
            ipv6: None,
            allocation: AllocationMode::Dynamic,
            vhost_user: None,
            memif: None,
            resource_name: None,
        }
    }

    fn check(
        spec: &NetworkSpec,
        assigned: Option<u16>,
        others: &[VlanAssignment],
    ) -> Result<ValidNetwork, String> {
        validate_network("ns/n3", spec, "uplink0", &provider(), assigned, others)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn good_network_passes() {
        let ok = check(&network(Some(150), Some("10.3.0.0/24")), None, &[]).unwrap();
        assert_eq!(ok.subnets(), vec!["10.3.0.0/24"]);
    }

    #[test]
    fn vlan_errors_name_the_field() {
        assert_eq!(
            check(&network(Some(4095), Some("10.3.0.0/24")), None, &[]).unwrap_err(),
            "spec.vlan: 4095 is outside 1-4094; pick a VLAN id from 1 to 4094"
        );
        assert!(check(&network(Some(0), Some("10.3.0.0/24")), None, &[])
            .unwrap_err()
            .contains("spec.vlan: 0 is outside 1-4094"));
        assert_eq!(
            check(&network(Some(50), Some("10.3.0.0/24")), None, &[]).unwrap_err(),
            "spec.vlan: 50 is outside the pool of provider network uplink0 (100-199); pick one inside it, or omit spec.vlan to have one assigned"
        );
        assert!(
            check(&network(Some(120), Some("10.3.0.0/24")), Some(110), &[])
                .unwrap_err()
                .contains("spec.vlan: the network already uses VLAN 110 and cannot move to 120")
        );
    }

    #[test]
    fn overlapping_subnets_on_one_provider_are_refused() {
        let others = vec![
            VlanAssignment {
                network: "ns/n1".into(),
                uid: "u1".into(),
                vlan: 100,
                subnets: vec!["10.0.0.0/16".into()],
            },
            VlanAssignment {
                network: "ns/n3".into(),
                uid: "u3".into(),
                vlan: 101,
                subnets: vec!["10.0.5.0/24".into()],
            },
        ];
        let err = check(&network(None, Some("10.0.5.0/24")), None, &others).unwrap_err();
        assert_eq!(err, "spec.ipv4.cidr: 10.0.5.0/24 overlaps 10.0.0.0/16 of network ns/n1 on provider network uplink0; use a disjoint subnet");
        check(&network(None, Some("10.1.0.0/24")), None, &others).unwrap();
    }

    #[test]
    fn bad_subnets_and_modes_collect_every_error() {
        let mut spec = network(Some(4095), Some("10.0.0.0/33"));
        spec.memif = Some(crate::crd::MemifDefaults {
            role: Default::default(),
            ring_size: 1000,
        });
        let err = check(&spec, None, &[]).unwrap_err();
        assert!(err.contains("spec.vlan: 4095"), "{err}");
        assert!(
            err.contains("spec.ipv4.cidr: \"10.0.0.0/33\" is not a CIDR"),
            "{err}"
        );
        assert!(
            err.contains("spec.memif.ringSize: 1000 is not a power of two"),
            "{err}"
        );
        let err = check(&network(None, None), None, &[]).unwrap_err();
        assert!(err.starts_with("spec.allocation:"), "{err}");
    }

    #[test]
    fn resource_names_are_checked_and_kernel_networks_take_none() {
        let mut spec = network(None, Some("10.1.0.0/24"));
        spec.resource_name = Some("example.com/vhost_fast".into());
        check(&spec, None, &[]).unwrap();
        for bad in ["heddle.dev", "/x", "heddle.dev/", "a b/c", "heddle.dev/x/y"] {
            spec.resource_name = Some(bad.into());
            let err = check(&spec, None, &[]).unwrap_err();
            assert!(
                err.starts_with("spec.resourceName:") && err.contains("<domain>/<name>"),
                "{bad}: {err}"
            );
        }
        spec.kind = NetworkKind::Kernel;
        spec.resource_name = Some("heddle.dev/vhost-user".into());
        let err = check(&spec, None, &[]).unwrap_err();
        assert!(
            err.contains("kernel networks take no device plugin resource"),
            "{err}"
        );
    }

    #[test]
    fn provider_checks() {
        validate_provider(&provider()).unwrap();
        let mut p = provider();
        p.vf_pool = Some("intel.com/sriov".into());
        p.vlan_pool = vec![
            VlanRange {
                start: 10,
                end: 5000,
            },
            VlanRange { start: 20, end: 10 },
        ];
        let err = validate_provider(&p).unwrap_err().to_string();
        assert!(err.contains("spec.interface: set exactly one"), "{err}");
        assert!(
            err.contains("spec.vlanPool[0]: 10-5000 leaves 1-4094"),
            "{err}"
        );
        assert!(
            err.contains("spec.vlanPool[1]: start 20 is after end 10"),
            "{err}"
        );
    }
}
