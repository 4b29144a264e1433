//! VLAN assignment from a provider network's pool: unique per provider, stable once given,
//! released when the network goes. Pure: the caller persists [`VlanPool::assignments`].

use std::collections::BTreeMap;

use crate::crd::VlanRange;

/// Why a VLAN could not be assigned.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VlanError {
    /// Outside 1-4094.
    #[error("spec.vlan: {vlan} is outside 1-4094; pick a VLAN id from 1 to 4094")]
    OutOfRange {
        /// The VLAN asked for.
        vlan: u16,
    },
    /// Outside the provider's pool.
    #[error(
        "spec.vlan: {vlan} is outside the pool of provider network {provider} ({pool}); pick one \
         inside it, or omit spec.vlan to have one assigned"
    )]
    OutsidePool {
        /// The VLAN asked for.
        vlan: u16,
        /// Provider network name.
        provider: String,
        /// The pool, e.g. `100-199,300`.
        pool: String,
    },
    /// Used by another network on the provider.
    #[error("spec.vlan: {vlan} is already used by network {holder} on provider network {provider}; pick another or omit spec.vlan")]
    Taken {
        /// The VLAN asked for.
        vlan: u16,
        /// The network holding it.
        holder: String,
        /// Provider network name.
        provider: String,
    },
    /// The network already has another VLAN.
    #[error("spec.vlan: the network already uses VLAN {assigned} and cannot move to {requested}; create a new network for VLAN {requested}")]
    Changed {
        /// The VLAN in use.
        assigned: u16,
        /// The VLAN asked for.
        requested: u16,
    },
    /// Every VLAN of the pool is in use.
    #[error("provider network {provider}: every VLAN of spec.vlanPool ({pool}) is in use; widen the pool or delete networks")]
    Exhausted {
        /// Provider network name.
        provider: String,
        /// The pool.
        pool: String,
    },
}

/// Format a pool as `100-199,300`.
pub fn pool_to_string(pool: &[VlanRange]) -> String {
    if pool.is_empty() {
        return "empty".into();
    }
    pool.iter()
        .map(|r| {
            if r.start == r.end {
                r.start.to_string()
            } else {
                format!("{}-{}", r.start, r.end)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The VLANs of one provider network and which network holds each.
#[derive(Clone, Debug, Default)]
pub struct VlanPool {
    provider: String,
    pool: Vec<VlanRange>,
    by_vlan: BTreeMap<u16, String>,
    by_network: BTreeMap<String, u16>,
}

impl VlanPool {
    /// A pool with no assignment yet.
    pub fn new(provider: impl Into<String>, pool: Vec<VlanRange>) -> Self {
        Self {
            provider: provider.into(),
            pool,
            ..Self::default()
        }
    }

    /// Whether `vlan` is inside the pool.
    pub fn in_pool(&self, vlan: u16) -> bool {
        self.pool.iter().any(|r| (r.start..=r.end).contains(&vlan))
    }

    /// Record an assignment read back from the store, without pool checks (an operator may
    /// have shrunk the pool under a live network: the network keeps its VLAN).
    /// Returns false when the VLAN or the network is already recorded (a corrupt store).
    pub fn restore(&mut self, network: &str, vlan: u16) -> bool {
        if self.by_vlan.contains_key(&vlan) || self.by_network.contains_key(network) {
            return false;
        }
        self.by_vlan.insert(vlan, network.to_string());
        self.by_network.insert(network.to_string(), vlan);
        true
    }

    /// The VLAN for `network`: the one it already has (stable), else `requested` if free and
    /// in the pool, else the lowest free VLAN of the pool.
    pub fn assign(&mut self, network: &str, requested: Option<u16>) -> Result<u16, VlanError> {
        if let Some(&have) = self.by_network.get(network) {
            return match requested {
                Some(r) if r != have => Err(VlanError::Changed {
                    assigned: have,
                    requested: r,
                }),
                _ => Ok(have),
            };
        }
        let vlan = match requested {
            Some(v) => {
                if !(1..=4094).contains(&v) {
                    return Err(VlanError::OutOfRange { vlan: v });
                }
                if !self.in_pool(v) {
                    return Err(VlanError::OutsidePool {
                        vlan: v,
                        provider: self.provider.clone(),
                        pool: pool_to_string(&self.pool),
                    });
                }
                if let Some(holder) = self.by_vlan.get(&v) {
                    return Err(VlanError::Taken {
                        vlan: v,
                        holder: holder.clone(),
                        provider: self.provider.clone(),
                    });
                }
                v
            }
            None => self
                .pool
                .iter()
                .flat_map(|r| r.start.max(1)..=r.end.min(4094))
                .find(|v| !self.by_vlan.contains_key(v))
                .ok_or_else(|| VlanError::Exhausted {
                    provider: self.provider.clone(),
                    pool: pool_to_string(&self.pool),
                })?,
        };
        self.by_vlan.insert(vlan, network.to_string());
        self.by_network.insert(network.to_string(), vlan);
        Ok(vlan)
    }

    /// Free the VLAN of `network`; returns it.
    pub fn release(&mut self, network: &str) -> Option<u16> {
        let vlan = self.by_network.remove(network)?;
        self.by_vlan.remove(&vlan);
        Some(vlan)
    }

    /// The VLAN `network` holds.
    pub fn vlan_of(&self, network: &str) -> Option<u16> {
        self.by_network.get(network).copied()
    }

    /// Every assignment, by VLAN.
    pub fn assignments(&self) -> &BTreeMap<u16, String> {
        &self.by_vlan
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pool() -> VlanPool {
        VlanPool::new(
            "uplink0",
            vec![
                VlanRange {
                    start: 100,
                    end: 102,
                },
                VlanRange {
                    start: 200,
                    end: 200,
                },
            ],
        )
    }

    #[test]
    fn assigns_lowest_free_and_stays_stable() {
        let mut p = pool();
        assert_eq!(p.assign("a/n1", None), Ok(100));
        assert_eq!(p.assign("a/n2", Some(102)), Ok(102));
        assert_eq!(p.assign("a/n3", None), Ok(101));
        assert_eq!(p.assign("a/n1", None), Ok(100));
        assert_eq!(p.assign("a/n1", Some(100)), Ok(100));
        assert_eq!(p.assign("a/n4", None), Ok(200));
        assert!(matches!(
            p.assign("a/n5", None),
            Err(VlanError::Exhausted { .. })
        ));
        assert_eq!(p.release("a/n3"), Some(101));
        assert_eq!(p.assign("a/n5", None), Ok(101));
    }

    #[test]
    fn refusals_name_the_field_and_the_fix() {
        let mut p = pool();
        p.assign("a/n1", None).unwrap();
        let msg = |e: VlanError| e.to_string();
        assert_eq!(
            msg(p.assign("a/n2", Some(4095)).unwrap_err()),
            "spec.vlan: 4095 is outside 1-4094; pick a VLAN id from 1 to 4094"
        );
        assert!(msg(p.assign("a/n2", Some(5)).unwrap_err())
            .contains("outside the pool of provider network uplink0 (100-102,200)"));
        assert!(
            msg(p.assign("a/n2", Some(100)).unwrap_err()).contains("already used by network a/n1")
        );
        assert!(msg(p.assign("a/n1", Some(101)).unwrap_err())
            .contains("already uses VLAN 100 and cannot move to 101"));
    }

    proptest! {
        /// Random assign/release/restart sequences: a VLAN is never held twice, a network's
        /// VLAN never changes while it lives, and every VLAN handed out is in the pool.
        #[test]
        fn unique_and_stable(ops in proptest::collection::vec((0u8..3, 0u8..12, proptest::option::of(95u16..205)), 1..150)) {
            let mut p = pool();
            let mut model: BTreeMap<String, u16> = BTreeMap::new();
            for (kind, n, req) in ops {
                let net = format!("ns/n{n}");
                match kind {
                    0 => {
                        if let Ok(v) = p.assign(&net, req) {
                            prop_assert!(p.in_pool(v));
                            if let Some(&old) = model.get(&net) {
                                prop_assert_eq!(old, v);
                            }
                            prop_assert!(model.iter().all(|(k, &x)| x != v || *k == net));
                            model.insert(net, v);
                        }
                    }
                    1 => { prop_assert_eq!(p.release(&net), model.remove(&net)); }
                    _ => {
                        let mut fresh = pool();
                        for (v, net) in p.assignments() { prop_assert!(fresh.restore(net, *v)); }
                        p = fresh;
                    }
                }
                let got: BTreeMap<String, u16> = p.assignments().iter().map(|(v, n)| (n.clone(), *v)).collect();
                prop_assert_eq!(&got, &model);
            }
        }
    }
}
