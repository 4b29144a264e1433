//! One subnet's allocatable addresses: parsed configuration and the bitmap allocator.

use std::net::IpAddr;

use ipnet::IpNet;

use super::bitmap::ChunkedBitmap;
use super::error::IpamError;
use crate::crd::Subnet;

/// The most addresses one pool may hold (8 MiB of bitmap).
pub const MAX_POOL_ADDRESSES: u128 = 1 << 26;
/// How many addresses an IPv6 subnet without `ranges` offers (from its first host address).
pub const DEFAULT_IPV6_POOL: u128 = 1 << 24;

/// A subnet checked and turned into integer ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// The subnet.
    pub cidr: IpNet,
    /// Allocatable ranges, inclusive, sorted, disjoint.
    pub ranges: Vec<(u128, u128)>,
    /// Gateway, never allocated.
    pub gateway: Option<IpAddr>,
    /// Excluded ranges, inclusive (clipped to the allocatable ranges when the pool is built).
    pub exclude: Vec<(u128, u128)>,
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((v as u32).into())
    } else {
        IpAddr::V6(v.into())
    }
}

impl PoolConfig {
    /// Parse and check a CRD subnet; `field` is its path (e.g. `spec.ipv4`) for messages.
    /// `want_v4` is the family the field must hold.
    pub fn parse(field: &str, subnet: &Subnet, want_v4: bool) -> Result<Self, IpamError> {
        let family = if want_v4 { "IPv4" } else { "IPv6" };
        let cidr: IpNet = subnet.cidr.parse().map_err(|_| IpamError::BadCidr {
            field: format!("{field}.cidr"),
            value: subnet.cidr.clone(),
        })?;
        if cidr.network() != cidr.addr() {
            return Err(IpamError::HostBitsSet {
                field: format!("{field}.cidr"),
                value: subnet.cidr.clone(),
                network: cidr.trunc().to_string(),
            });
        }
        if matches!(cidr, IpNet::V4(_)) != want_v4 {
            return Err(IpamError::WrongFamily {
                field: format!("{field}.cidr"),
                value: subnet.cidr.clone(),
                family,
            });
        }
        let net_lo = to_u128(cidr.network());
        let net_hi = to_u128(cidr.broadcast());
        let addr = |f: String, s: &str| -> Result<u128, IpamError> {
            let a: IpAddr = s.parse().map_err(|_| IpamError::BadAddress {
                field: f.clone(),
                value: s.to_string(),
                family,
            })?;
            if a.is_ipv4() != want_v4 {
                return Err(IpamError::BadAddress {
                    field: f,
                    value: s.to_string(),
                    family,
                });
            }
            if !cidr.contains(&a) {
                return Err(IpamError::OutsideSubnet {
                    field: f,
                    value: s.to_string(),
                    cidr: cidr.to_string(),
                });
            }
            Ok(to_u128(a))
        };
        let mut ranges = Vec::new();
        for (i, r) in subnet.ranges.iter().enumerate() {
            let f = format!("{field}.ranges[{i}]");
            let lo = addr(format!("{f}.start"), &r.start)?;
            let hi = addr(format!("{f}.end"), &r.end)?;
            if lo > hi {
                return Err(IpamError::BackwardsRange {
                    field: f,
                    start: r.start.clone(),
                    end: r.end.clone(),
                });
            }
            ranges.push((lo, hi, i));
        }
        ranges.sort();
        for w in ranges.windows(2) {
            if w[1].0 <= w[0].1 {
                return Err(IpamError::RangesOverlap {
                    field: format!("{field}.ranges[{}]", w[1].2),
                    other: format!("{field}.ranges[{}]", w[0].2),
                });
            }
        }
        let mut ranges: Vec<(u128, u128)> = ranges.into_iter().map(|(l, h, _)| (l, h)).collect();
        if ranges.is_empty() {
            let prefix = cidr.prefix_len();
            let (lo, hi) = if want_v4 && prefix <= 30 {
                (net_lo + 1, net_hi - 1)
            } else if want_v4 || prefix == 128 {
                // An IPv4 /31 (RFC 3021) or /32, or a single IPv6 address: all of it.
                (net_lo, net_hi)
            } else {
                (net_lo + 1, net_hi.min(net_lo + DEFAULT_IPV6_POOL))
            };
            ranges.push((lo, hi));
        }
        let total: u128 = ranges.iter().map(|(l, h)| h - l + 1).sum();
        if total > MAX_POOL_ADDRESSES {
            return Err(IpamError::PoolTooLarge {
                field: format!("{field}.ranges"),
                addresses: total,
                max: MAX_POOL_ADDRESSES,
            });
        }
        let gateway = match &subnet.gateway {
            Some(g) => Some(from_u128(addr(format!("{field}.gateway"), g)?, want_v4)),
            None => None,
        };
        let mut exclude = Vec::new();
        for (i, e) in subnet.exclude.iter().enumerate() {
            let f = format!("{field}.exclude[{i}]");
            if e.contains('/') {
                let n: IpNet = e.parse().map_err(|_| IpamError::BadCidr {
                    field: f.clone(),
                    value: e.clone(),
                })?;
                let lo = addr(f.clone(), &n.network().to_string())?;
                let hi = addr(f, &n.broadcast().to_string())?;
                exclude.push((lo, hi));
            } else {
                let a = addr(f, e)?;
                exclude.push((a, a));
            }
        }
        Ok(Self {
            cidr,
            ranges,
            gateway,
            exclude,
        })
    }

    /// Whether this is an IPv4 pool.
    pub fn is_v4(&self) -> bool {
        matches!(self.cidr, IpNet::V4(_))
    }
}

/// The allocator of one subnet: addresses map to bitmap indexes through the ranges.
#[derive(Clone, Debug)]
pub struct AddressPool {
    config: PoolConfig,
    /// (first address, first index) of each range.
    bases: Vec<(u128, u64)>,
    bitmap: ChunkedBitmap,
    /// Indexes reserved for the gateway and exclusions (sorted, inclusive, disjoint).
    reserved: Vec<(u64, u64)>,
    reserved_count: u64,
}

impl AddressPool {
    /// Build an empty pool; the gateway and exclusions are marked used from the start.
    pub fn new(config: PoolConfig) -> Self {
        let mut bases = Vec::with_capacity(config.ranges.len());
        let mut next = 0u64;
        for &(lo, hi) in &config.ranges {
            bases.push((lo, next));
            next += (hi - lo + 1) as u64;
        }
        let mut pool = Self {
            bitmap: ChunkedBitmap::new(next),
            bases,
            reserved: Vec::new(),
            reserved_count: 0,
            config,
        };
        let mut reserved: Vec<(u128, u128)> = pool.config.exclude.clone();
        if let Some(g) = pool.config.gateway {
            let g = to_u128(g);
            reserved.push((g, g));
        }
        let mut idx_ranges = Vec::new();
        for (lo, hi) in reserved {
            for (i, &(rlo, rhi)) in pool.config.ranges.iter().enumerate() {
                let (a, b) = (lo.max(rlo), hi.min(rhi));
                if a <= b {
                    let base = pool.bases[i].1;
                    idx_ranges.push((base + (a - rlo) as u64, base + (b - rlo) as u64));
                }
            }
        }
        idx_ranges.sort();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, b) in idx_ranges {
            match merged.last_mut() {
                Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        for &(a, b) in &merged {
            for i in a..=b {
                pool.bitmap.set(i);
            }
            pool.reserved_count += b - a + 1;
        }
        pool.reserved = merged;
        pool
    }

    /// The configuration this pool was built from.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    fn index_of(&self, addr: IpAddr) -> Option<u64> {
        if addr.is_ipv4() != self.config.is_v4() {
            return None;
        }
        let a = to_u128(addr);
        let pos = self
            .bases
            .partition_point(|&(lo, _)| lo <= a)
            .checked_sub(1)?;
        let (lo, base) = self.bases[pos];
        let hi = self.config.ranges[pos].1;
        (a <= hi).then(|| base + (a - lo) as u64)
    }

    fn addr_of(&self, index: u64) -> IpAddr {
        let pos = self.bases.partition_point(|&(_, b)| b <= index) - 1;
        let (lo, base) = self.bases[pos];
        from_u128(lo + u128::from(index - base), self.config.is_v4())
    }

    fn is_reserved(&self, index: u64) -> bool {
        let pos = self.reserved.partition_point(|&(a, _)| a <= index);
        pos > 0 && self.reserved[pos - 1].1 >= index
    }

    /// Take the next free address.
    pub fn allocate(&mut self) -> Result<IpAddr, IpamError> {
        match self.bitmap.set_next_free() {
            Some(i) => Ok(self.addr_of(i)),
            None => Err(IpamError::Exhausted {
                cidr: self.config.cidr.to_string(),
            }),
        }
    }

    /// The bitmap index of `addr`, if it is in the pool and not reserved (gateway, exclusion).
    fn assignable_index(&self, addr: IpAddr) -> Result<u64, IpamError> {
        let i = self.index_of(addr).ok_or_else(|| IpamError::NotInPool {
            address: addr,
            cidr: self.config.cidr.to_string(),
        })?;
        if self.is_reserved(i) {
            return Err(IpamError::Reserved { address: addr });
        }
        Ok(i)
    }

    /// Take a specific address (a static request).
    pub fn allocate_specific(&mut self, addr: IpAddr) -> Result<(), IpamError> {
        let i = self.assignable_index(addr)?;
        if !self.bitmap.set(i) {
            return Err(IpamError::InUse { address: addr });
        }
        Ok(())
    }

    /// Give an address back. Releasing a free or reserved address is an error.
    pub fn release(&mut self, addr: IpAddr) -> Result<(), IpamError> {
        let i = self.assignable_index(addr)?;
        if !self.bitmap.clear(i) {
            return Err(IpamError::NotAllocated { address: addr });
        }
        Ok(())
    }

    /// Whether `addr` is currently given out (reserved addresses are not).
    pub fn is_allocated(&self, addr: IpAddr) -> bool {
        self.index_of(addr)
            .is_some_and(|i| self.bitmap.get(i) && !self.is_reserved(i))
    }

    /// Addresses that can be given out (ranges minus reservations).
    pub fn total(&self) -> u64 {
        self.bitmap.len() - self.reserved_count
    }

    /// Addresses given out.
    pub fn allocated(&self) -> u64 {
        self.bitmap.used() - self.reserved_count
    }

    /// Every address given out, ascending within each range.
    pub fn allocated_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.bitmap
            .iter_set()
            .filter(|&i| !self.is_reserved(i))
            .map(|i| self.addr_of(i))
    }

    /// Heap bytes held by the allocator.
    pub fn heap_bytes(&self) -> usize {
        self.bitmap.heap_bytes() + self.bases.capacity() * 32 + self.reserved.capacity() * 16
    }
}
