//! IP address management: pure allocators, no I/O.
//!
//! [`AddressPool`] allocates one subnet from a chunked bitmap; [`NetworkIpam`] holds a
//! network's IPv4 and IPv6 pools and the leases by owner (`<container id>/<ifname>`), so an
//! allocation is idempotent per owner, a release frees exactly what the owner held, and leaks
//! are collected from the set of live owners. The same type backs the embedded store and the
//! cluster-wide allocator, which only differ in where the leases are persisted.

mod bitmap;
mod error;
mod pool;

use std::collections::BTreeMap;
use std::net::IpAddr;

pub use bitmap::ChunkedBitmap;
pub use error::IpamError;
pub use pool::{AddressPool, PoolConfig, DEFAULT_IPV6_POOL, MAX_POOL_ADDRESSES};

use crate::crd::{AddressCounts, AllocationMode, NetworkSpec};

/// The address pools and leases of one network.
#[derive(Clone, Debug)]
pub struct NetworkIpam {
    mode: AllocationMode,
    v4: Option<AddressPool>,
    v6: Option<AddressPool>,
    leases: BTreeMap<String, Vec<IpAddr>>,
}

impl NetworkIpam {
    /// Build the pools of a network spec (field paths in errors start at `spec`).
    pub fn from_spec(spec: &NetworkSpec) -> Result<Self, IpamError> {
        let v4 = spec
            .ipv4
            .as_ref()
            .map(|s| PoolConfig::parse("spec.ipv4", s, true))
            .transpose()?;
        let v6 = spec
            .ipv6
            .as_ref()
            .map(|s| PoolConfig::parse("spec.ipv6", s, false))
            .transpose()?;
        Ok(Self::new(spec.allocation, v4, v6))
    }

    /// Build from parsed pool configurations.
    pub fn new(mode: AllocationMode, v4: Option<PoolConfig>, v6: Option<PoolConfig>) -> Self {
        Self {
            mode,
            v4: v4.map(AddressPool::new),
            v6: v6.map(AddressPool::new),
            leases: BTreeMap::new(),
        }
    }

    /// Restore leases read from a store; fails when two owners hold one address.
    pub fn restore<'a>(
        &mut self,
        leases: impl IntoIterator<Item = (&'a String, &'a Vec<IpAddr>)>,
    ) -> Result<(), IpamError> {
        for (owner, addrs) in leases {
            for &a in addrs {
                self.pool_mut(a)
                    .and_then(|p| p.allocate_specific(a))
                    .map_err(|e| IpamError::Restore {
                        owner: owner.clone(),
                        source: Box::new(e),
                    })?;
            }
            self.leases.insert(owner.clone(), addrs.clone());
        }
        Ok(())
    }

    fn pool_mut(&mut self, a: IpAddr) -> Result<&mut AddressPool, IpamError> {
        let pool = if a.is_ipv4() {
            self.v4.as_mut()
        } else {
            self.v6.as_mut()
        };
        pool.ok_or_else(|| {
            IpamError::Mode(format!(
                "address {a}: the network has no {} subnet",
                if a.is_ipv4() { "IPv4" } else { "IPv6" }
            ))
        })
    }

    /// Give `owner` its addresses: the ones it already holds (idempotent), else `requested`
    /// (static mode; dynamic mode also accepts them) or one free address per family
    /// (dynamic mode). All-or-nothing: on error nothing is taken.
    pub fn allocate(
        &mut self,
        owner: &str,
        requested: &[IpAddr],
    ) -> Result<Vec<IpAddr>, IpamError> {
        if let Some(held) = self.leases.get(owner) {
            if requested.is_empty() || requested.iter().all(|a| held.contains(a)) {
                return Ok(held.clone());
            }
            return Err(IpamError::Mode(format!(
                "{owner} already holds {held:?}; release it before asking for {requested:?}"
            )));
        }
        let mut taken: Vec<IpAddr> = Vec::new();
        let result = self.take(requested, &mut taken);
        if let Err(e) = result {
            for a in taken {
                let _ = self.pool_mut(a).and_then(|p| p.release(a));
            }
            return Err(e);
        }
        self.leases.insert(owner.to_string(), taken.clone());
        Ok(taken)
    }

    fn take(&mut self, requested: &[IpAddr], taken: &mut Vec<IpAddr>) -> Result<(), IpamError> {
        match (self.mode, requested.is_empty()) {
            (AllocationMode::None, _) => {
                return Err(IpamError::Mode(
                    "spec.allocation is none: this network gives no addresses".into(),
                ))
            }
            (AllocationMode::Static, true) => {
                return Err(IpamError::Mode(
                    "spec.allocation is static: the pod must name its addresses (CNI args `ips`)"
                        .into(),
                ))
            }
            (_, false) => {
                for &a in requested {
                    self.pool_mut(a)?.allocate_specific(a)?;
                    taken.push(a);
                }
            }
            (AllocationMode::Dynamic, true) => {
                for pool in [self.v4.as_mut(), self.v6.as_mut()].into_iter().flatten() {
                    taken.push(pool.allocate()?);
                }
                if taken.is_empty() {
                    return Err(IpamError::Mode(
                        "the network has neither spec.ipv4 nor spec.ipv6".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Free what `owner` holds; returns the addresses (empty when it held nothing, so a
    /// repeated DEL succeeds).
    pub fn release(&mut self, owner: &str) -> Vec<IpAddr> {
        let addrs = self.leases.remove(owner).unwrap_or_default();
        for &a in &addrs {
            let released = self.pool_mut(a).and_then(|p| p.release(a));
            debug_assert!(
                released.is_ok(),
                "lease of {owner} was not allocated: {released:?}"
            );
        }
        addrs
    }

    /// Release every owner for which `live` is false (leak collection); returns them.
    pub fn collect_leaks(&mut self, mut live: impl FnMut(&str) -> bool) -> Vec<String> {
        let dead: Vec<String> = self.leases.keys().filter(|o| !live(o)).cloned().collect();
        for o in &dead {
            self.release(o);
        }
        dead
    }

    /// Leases by owner.
    pub fn leases(&self) -> &BTreeMap<String, Vec<IpAddr>> {
        &self.leases
    }

    /// IPv4 counts, when the network has an IPv4 subnet.
    pub fn counts_v4(&self) -> Option<AddressCounts> {
        self.v4.as_ref().map(|p| AddressCounts {
            total: p.total(),
            allocated: p.allocated(),
            free: p.total() - p.allocated(),
        })
    }

    /// IPv6 counts, when the network has an IPv6 subnet.
    pub fn counts_v6(&self) -> Option<AddressCounts> {
        self.v6.as_ref().map(|p| AddressCounts {
            total: p.total(),
            allocated: p.allocated(),
            free: p.total() - p.allocated(),
        })
    }

    /// Heap bytes of the pools (leases not counted).
    pub fn pool_heap_bytes(&self) -> usize {
        self.v4
            .iter()
            .chain(self.v6.iter())
            .map(AddressPool::heap_bytes)
            .sum()
    }

    /// Check that the pools and the leases agree: every leased address allocated exactly once
    /// and nothing allocated without a lease. Returns a description of the first mismatch.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for (owner, addrs) in &self.leases {
            for a in addrs {
                if !seen.insert(*a) {
                    return Err(format!("{a} leased twice (second time to {owner})"));
                }
                let pool = if a.is_ipv4() { &self.v4 } else { &self.v6 };
                if !pool.as_ref().is_some_and(|p| p.is_allocated(*a)) {
                    return Err(format!("{a} leased to {owner} but free in the pool"));
                }
            }
        }
        let allocated: u64 = self
            .v4
            .iter()
            .chain(self.v6.iter())
            .map(AddressPool::allocated)
            .sum();
        if allocated != seen.len() as u64 {
            return Err(format!(
                "{allocated} allocated in the pools, {} leased (leak)",
                seen.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
