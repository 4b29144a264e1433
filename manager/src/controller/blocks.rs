//! Cluster IPAM in address blocks with node affinity: a network's leases live in
//! [`NetworkAddressBlock`] objects, one per CIDR-aligned block of its address space.
//!
//! A node allocates from the blocks it has claimed (`spec.node`), so nodes do not contend;
//! when its blocks are full it claims another (an unclaimed existing block, else it creates a
//! new one: the name derives from the block's CIDR, so two nodes claiming the same block
//! collide on `create` and the loser moves on); only when every block of the family is
//! claimed does it borrow a free address from another node's block. Every write carries the
//! `resourceVersion` it read; a 409 means re-read that block and decide again.
//!
//! Finding a node's blocks costs one list with a label selector: each block carries
//! `heddle.dev/network: <allocation name>` and, per node that holds leases in it,
//! `nodes.heddle.dev/<node>: affinity` (its own block) or `borrowed`. So an allocation is one
//! list plus one write, a repeated ADD or a DEL one list, whatever the size of the network.
//!
//! ## Block size
//!
//! A block holds at most 256 addresses (a /24 of IPv4, a /120 of IPv6); a smaller subnet is
//! cut into 16 blocks (at least 4 addresses each) so that several nodes can claim some.
//! Worst case of a full block: 256 leases x (owner `<64-hex container id>/<15-char ifname>`
//! = 80 bytes + an IPv6 address, 39 + JSON punctuation, 7 = 126 bytes) + 256 borrowed
//! entries x (80-byte owner + a 253-byte node name + 6 = 339 bytes) = 119,040 bytes plus
//! ~1 KiB of metadata: under 8% of etcd's 1.5 MiB. A typical full block (pod UID owners,
//! IPv4) is ~15 KiB. 4096-address blocks would reach 1.9 MB in the worst case: too big.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::{Api, ResourceExt};

use super::{is_not_found, ControllerError, CONFLICT_RETRIES};
use crate::crd::{
    block_name, AddressBlockCounts, AddressCounts, AllocationMode, NetworkAddressBlock,
    NetworkAddressBlockSpec, NetworkAllocation, NetworkSpec,
};
use crate::ipam::{AddressPool, IpamError, PoolConfig};

/// Host bits of the largest block (256 addresses).
pub const MAX_BLOCK_BITS: u32 = 8;
/// The label naming a block's network (its allocation name, e.g. `network.n3`).
pub const NETWORK_LABEL: &str = "heddle.dev/network";
/// The prefix of the per-node membership labels (`nodes.heddle.dev/<node>`).
pub const NODE_LABEL_PREFIX: &str = "nodes.heddle.dev/";
/// Membership label value of a node's own block.
pub const AFFINITY: &str = "affinity";
/// Membership label value of a block a node borrowed from.
pub const BORROWED: &str = "borrowed";

/// A 409: a stale `resourceVersion` (Conflict) or a name taken (AlreadyExists): another
/// writer won the race; re-read and decide again.
fn lost_race(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `s` as a label value or label name part (at most 63 characters): itself when it fits,
/// else its first 46 characters, `-`, and 16 hex digits of its hash.
pub fn label_safe(s: &str) -> String {
    if s.len() <= 63 {
        s.to_string()
    } else {
        let head: String = s.chars().take(46).collect();
        format!("{}-{:016x}", head.trim_end_matches(['-', '.', '_']), fnv(s))
    }
}

/// The membership label of `node`.
pub fn node_label(node: &str) -> String {
    format!("{NODE_LABEL_PREFIX}{}", label_safe(node))
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

/// How one family's address space is cut into blocks.
#[derive(Clone, Debug)]
pub struct Family {
    config: PoolConfig,
    bits: u32,
    v4: bool,
}

impl Family {
    fn new(config: PoolConfig) -> Self {
        let v4 = config.is_v4();
        let width = if v4 { 32 } else { 128 };
        let host = width - u32::from(config.cidr.prefix_len());
        let bits = host.saturating_sub(4).clamp(2, MAX_BLOCK_BITS).min(host);
        Self { config, bits, v4 }
    }

    /// Addresses per block.
    pub fn block_size(&self) -> u128 {
        1u128 << self.bits
    }

    fn prefix_len(&self) -> u8 {
        (if self.v4 { 32 } else { 128 }) - self.bits as u8
    }

    fn block_of(&self, a: u128) -> u128 {
        a & !(self.block_size() - 1)
    }

    fn cidr(&self, start: u128) -> String {
        format!("{}/{}", from_u128(start, self.v4), self.prefix_len())
    }

    /// The pool configuration of the block at `start`: the network's ranges clipped to it;
    /// `None` when no allocatable range meets it.
    fn block_config(&self, start: u128) -> Option<PoolConfig> {
        let end = start + self.block_size() - 1;
        let ranges: Vec<(u128, u128)> = self
            .config
            .ranges
            .iter()
            .filter_map(|&(lo, hi)| {
                let (a, b) = (lo.max(start), hi.min(end));
                (a <= b).then_some((a, b))
            })
            .collect();
        if ranges.is_empty() {
            return None;
        }
        let cidr = IpNet::new(from_u128(start, self.v4), self.prefix_len()).ok()?;
        Some(PoolConfig {
            cidr,
            ranges,
            gateway: self.config.gateway,
            exclude: self.config.exclude.clone(),
        })
    }

    /// Start of every block that meets an allocatable range, ascending.
    fn blocks(&self) -> Vec<u128> {
        let mut out: Vec<u128> = Vec::new();
        for &(lo, hi) in &self.config.ranges {
            let mut s = self.block_of(lo);
            while s <= hi {
                if out.last() != Some(&s) {
                    out.push(s);
                }
                s += self.block_size();
            }
        }
        out
    }

    fn in_ranges(&self, a: u128) -> bool {
        self.config
            .ranges
            .iter()
            .any(|&(lo, hi)| lo <= a && a <= hi)
    }

    /// Addresses the network's ranges give out (minus gateway and exclusions).
    fn total(&self) -> u64 {
        AddressPool::new(self.config.clone()).total()
    }
}

/// The start address of a block object's CIDR.
fn block_start(b: &NetworkAddressBlock) -> Option<(u128, bool)> {
    let net: IpNet = b.spec.cidr.parse().ok()?;
    Some((to_u128(net.network()), net.network().is_ipv4()))
}

fn set_lease(b: &mut NetworkAddressBlock, owner: &str, a: IpAddr) {
    b.spec
        .leases
        .entry(owner.to_string())
        .or_default()
        .push(a.to_string());
    b.spec.used = b.spec.leases.values().map(|v| v.len() as u32).sum();
}

fn parse_addrs(owner: &str, addrs: &[String]) -> Result<Vec<IpAddr>, IpamError> {
    addrs
        .iter()
        .map(|a| {
            a.parse().map_err(|_| IpamError::Restore {
                owner: owner.to_string(),
                source: Box::new(IpamError::BadAddress {
                    field: format!("spec.leases[{owner}]"),
                    value: a.clone(),
                    family: "IP",
                }),
            })
        })
        .collect()
}

/// Allocates a network's addresses on one node.
pub struct BlockAllocator {
    api: Api<NetworkAddressBlock>,
    prefix: String,
    network: String,
    node: String,
    owner_ref: Option<OwnerReference>,
    mode: AllocationMode,
    v4: Option<Family>,
    v6: Option<Family>,
}

impl BlockAllocator {
    /// The allocator of `network` (key `namespace/name` or `name`) on `node`; its blocks live
    /// in `api`'s namespace, named after `prefix` (the allocation name, `network.<name>` or
    /// `clusternetwork.<name>`); blocks it creates are owned by `owner_ref` (the network).
    pub fn new(
        api: Api<NetworkAddressBlock>,
        prefix: &str,
        network: &str,
        spec: &NetworkSpec,
        node: &str,
        owner_ref: Option<OwnerReference>,
    ) -> Result<Self, ControllerError> {
        let err = |source| ControllerError::Ipam {
            network: network.to_string(),
            source,
        };
        let v4 = spec
            .ipv4
            .as_ref()
            .map(|s| PoolConfig::parse("spec.ipv4", s, true))
            .transpose()
            .map_err(err)?;
        let v6 = spec
            .ipv6
            .as_ref()
            .map(|s| PoolConfig::parse("spec.ipv6", s, false))
            .transpose()
            .map_err(err)?;
        Ok(Self {
            api,
            prefix: prefix.to_string(),
            network: network.to_string(),
            node: node.to_string(),
            owner_ref,
            mode: spec.allocation,
            v4: v4.map(Family::new),
            v6: v6.map(Family::new),
        })
    }

    /// The node this allocator works for.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Addresses per block of IPv4 and IPv6.
    pub fn block_sizes(&self) -> (Option<u128>, Option<u128>) {
        (
            self.v4.as_ref().map(Family::block_size),
            self.v6.as_ref().map(Family::block_size),
        )
    }

    fn err(&self, source: IpamError) -> ControllerError {
        ControllerError::Ipam {
            network: self.network.clone(),
            source,
        }
    }

    fn family(&self, v4: bool) -> Option<&Family> {
        if v4 {
            self.v4.as_ref()
        } else {
            self.v6.as_ref()
        }
    }

    fn network_selector(&self) -> String {
        format!("{NETWORK_LABEL}={}", label_safe(&self.prefix))
    }

    /// The blocks this node has claimed or borrowed from.
    pub async fn my_blocks(&self) -> Result<Vec<NetworkAddressBlock>, ControllerError> {
        let sel = format!("{},{}", self.network_selector(), node_label(&self.node));
        Ok(self
            .api
            .list(&ListParams::default().labels(&sel))
            .await?
            .items)
    }

    /// Every block of the network.
    pub async fn all_blocks(&self) -> Result<Vec<NetworkAddressBlock>, ControllerError> {
        let sel = self.network_selector();
        Ok(self
            .api
            .list(&ListParams::default().labels(&sel))
            .await?
            .items)
    }

    fn new_block(&self, fam: &Family, start: u128, affinity: bool) -> NetworkAddressBlock {
        let name = block_name(&self.prefix, from_u128(start, fam.v4), fam.prefix_len());
        let mut b = NetworkAddressBlock::new(
            &name,
            NetworkAddressBlockSpec {
                network: self.network.clone(),
                cidr: fam.cidr(start),
                node: affinity.then(|| self.node.clone()),
                leases: BTreeMap::new(),
                borrowed: BTreeMap::new(),
                used: 0,
            },
        );
        let mut labels = BTreeMap::from([(NETWORK_LABEL.to_string(), label_safe(&self.prefix))]);
        labels.insert(
            node_label(&self.node),
            if affinity { AFFINITY } else { BORROWED }.into(),
        );
        b.metadata.labels = Some(labels);
        b.metadata.namespace = self.api_namespace();
        b.metadata.owner_references = self.owner_ref.clone().map(|o| vec![o]);
        b
    }

    fn api_namespace(&self) -> Option<String> {
        let url = self.api.resource_url();
        url.split("/namespaces/")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .map(String::from)
    }

    /// The block's allocator with its leases restored.
    fn pool(&self, b: &NetworkAddressBlock) -> Result<(AddressPool, bool), IpamError> {
        let bad = || IpamError::BadCidr {
            field: format!("block {} spec.cidr", b.name_any()),
            value: b.spec.cidr.clone(),
        };
        let (start, v4) = block_start(b).ok_or_else(bad)?;
        let fam = self.family(v4).ok_or_else(bad)?;
        let config = fam.block_config(start).ok_or_else(bad)?;
        let mut pool = AddressPool::new(config);
        for (owner, addrs) in &b.spec.leases {
            for a in parse_addrs(owner, addrs)? {
                pool.allocate_specific(a).map_err(|e| IpamError::Restore {
                    owner: owner.clone(),
                    source: Box::new(e),
                })?;
            }
        }
        Ok((pool, v4))
    }

    /// Mark `b` as holding a lease of this node borrowed from elsewhere.
    fn mark_borrowed(&self, b: &mut NetworkAddressBlock, owner: &str) {
        if b.spec.node.as_deref() == Some(self.node.as_str()) {
            return;
        }
        b.spec.borrowed.insert(owner.to_string(), self.node.clone());
        b.labels_mut()
            .entry(node_label(&self.node))
            .or_insert_with(|| BORROWED.into());
    }

    /// Give `owner` its addresses (idempotent per owner): the ones it holds, else the
    /// `requested` ones (static), else one per family from this node's blocks, a newly
    /// claimed block, or, when every block is claimed, another node's block. All or nothing.
    pub async fn allocate(
        &self,
        owner: &str,
        requested: &[IpAddr],
    ) -> Result<Vec<IpAddr>, ControllerError> {
        let mine = self.my_blocks().await?;
        let mut held: Vec<IpAddr> = Vec::new();
        for b in &mine {
            if let Some(addrs) = b.spec.leases.get(owner) {
                held.extend(parse_addrs(owner, addrs).map_err(|e| self.err(e))?);
            }
        }
        if !held.is_empty() && !requested.is_empty() {
            if requested.iter().all(|a| held.contains(a)) {
                return Ok(held);
            }
            return Err(self.err(IpamError::Mode(format!(
                "{owner} already holds {held:?}; release it before asking for {requested:?}"
            ))));
        }
        match (self.mode, requested.is_empty()) {
            (AllocationMode::None, _) => {
                return Err(self.err(IpamError::Mode(
                    "spec.allocation is none: this network gives no addresses".into(),
                )))
            }
            (AllocationMode::Static, true) if held.is_empty() => {
                return Err(self.err(IpamError::Mode(
                    "spec.allocation is static: the pod must name its addresses (CNI args `ips`)"
                        .into(),
                )))
            }
            _ => {}
        }
        if self.v4.is_none() && self.v6.is_none() {
            return Err(self.err(IpamError::Mode(
                "the network has neither spec.ipv4 nor spec.ipv6".into(),
            )));
        }
        let had = !held.is_empty();
        let mut result = Ok(());
        if !requested.is_empty() {
            for &a in requested {
                match self.take_static(owner, a).await {
                    Ok(()) => held.push(a),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        } else if self.mode == AllocationMode::Dynamic {
            // A family the owner lacks (a call cut short between two families) is filled in.
            for fam in [self.v4.as_ref(), self.v6.as_ref()].into_iter().flatten() {
                if held.iter().any(|a| a.is_ipv4() == fam.v4) {
                    continue;
                }
                match self.take_dynamic(fam, owner, &mine).await {
                    Ok(a) => held.push(a),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        if let Err(e) = result {
            if !had {
                // All or nothing: give back what this call took.
                self.release(owner).await?;
            }
            return Err(e);
        }
        held.sort_by_key(|a| !a.is_ipv4());
        Ok(held)
    }

    async fn take_static(&self, owner: &str, a: IpAddr) -> Result<(), ControllerError> {
        let fam = self.family(a.is_ipv4()).ok_or_else(|| {
            self.err(IpamError::Mode(format!(
                "address {a}: the network has no {} subnet",
                if a.is_ipv4() { "IPv4" } else { "IPv6" }
            )))
        })?;
        if !fam.in_ranges(to_u128(a)) {
            return Err(self.err(IpamError::NotInPool {
                address: a,
                cidr: fam.config.cidr.to_string(),
            }));
        }
        let start = fam.block_of(to_u128(a));
        let name = block_name(&self.prefix, from_u128(start, fam.v4), fam.prefix_len());
        for _ in 0..CONFLICT_RETRIES {
            match self.api.get_opt(&name).await? {
                None => {
                    // Nobody's block yet: create it without affinity (any node may claim it).
                    let mut b = self.new_block(fam, start, false);
                    let (mut pool, _) = self.pool(&b).map_err(|e| self.err(e))?;
                    pool.allocate_specific(a).map_err(|e| self.err(e))?;
                    set_lease(&mut b, owner, a);
                    self.mark_borrowed(&mut b, owner);
                    match self.api.create(&PostParams::default(), &b).await {
                        Ok(_) => return Ok(()),
                        Err(e) if lost_race(&e) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(mut b) => {
                    let (mut pool, _) = self.pool(&b).map_err(|e| self.err(e))?;
                    pool.allocate_specific(a).map_err(|e| self.err(e))?;
                    set_lease(&mut b, owner, a);
                    self.mark_borrowed(&mut b, owner);
                    match self.api.replace(&name, &PostParams::default(), &b).await {
                        Ok(_) => return Ok(()),
                        Err(e) if lost_race(&e) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Err(ControllerError::Contention(format!("address block {name}")))
    }

    /// Take a free address of `b` for `owner`, re-reading on conflicts; `None` when the
    /// block is full (or gone).
    async fn take_in(
        &self,
        mut b: NetworkAddressBlock,
        owner: &str,
        claim: bool,
    ) -> Result<Option<IpAddr>, ControllerError> {
        let name = b.name_any();
        for _ in 0..CONFLICT_RETRIES {
            if claim {
                if b.spec.node.is_some() && b.spec.node.as_deref() != Some(self.node.as_str()) {
                    return Ok(None); // someone else claimed it first
                }
                b.spec.node = Some(self.node.clone());
                // This node's static leases in the block are its own now, no longer borrowed.
                let me = self.node.as_str();
                b.spec.borrowed.retain(|_, n| n != me);
                b.labels_mut()
                    .insert(node_label(&self.node), AFFINITY.into());
            }
            let (mut pool, _) = self.pool(&b).map_err(|e| self.err(e))?;
            let Ok(a) = pool.allocate() else {
                return Ok(None);
            };
            set_lease(&mut b, owner, a);
            self.mark_borrowed(&mut b, owner);
            match self.api.replace(&name, &PostParams::default(), &b).await {
                Ok(_) => return Ok(Some(a)),
                Err(e) if lost_race(&e) => match self.api.get_opt(&name).await? {
                    Some(fresh) => b = fresh,
                    None => return Ok(None),
                },
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControllerError::Contention(format!("address block {name}")))
    }

    async fn take_dynamic(
        &self,
        fam: &Family,
        owner: &str,
        mine: &[NetworkAddressBlock],
    ) -> Result<IpAddr, ControllerError> {
        // 1. This node's own blocks.
        for b in mine {
            let own = b.spec.node.as_deref() == Some(self.node.as_str());
            if own && block_start(b).is_some_and(|(_, v4)| v4 == fam.v4) {
                if let Some(a) = self.take_in(b.clone(), owner, false).await? {
                    return Ok(a);
                }
            }
        }
        // 2. Claim a block: an existing one nobody claims, else a new one.
        let listed = self
            .api
            .list_metadata(&ListParams::default().labels(&self.network_selector()))
            .await?
            .items;
        let mut existing = BTreeSet::new();
        for m in &listed {
            let name = m.name_any();
            let claimed = m.labels().values().any(|v| v == AFFINITY);
            if !claimed {
                if let Some(b) = self.api.get_opt(&name).await? {
                    if b.spec.node.is_none() && block_start(&b).is_some_and(|(_, v4)| v4 == fam.v4)
                    {
                        if let Some(a) = self.take_in(b, owner, true).await? {
                            return Ok(a);
                        }
                    }
                }
            }
            existing.insert(name);
        }
        let starts = fam.blocks();
        if !starts.is_empty() {
            // Nodes start looking at different places, so they rarely race for one block.
            let offset = (fnv(&self.node) % starts.len() as u64) as usize;
            for &start in starts[offset..].iter().chain(&starts[..offset]) {
                let name = block_name(&self.prefix, from_u128(start, fam.v4), fam.prefix_len());
                if existing.contains(&name) {
                    continue;
                }
                let mut b = self.new_block(fam, start, true);
                let (mut pool, _) = self.pool(&b).map_err(|e| self.err(e))?;
                let Ok(a) = pool.allocate() else {
                    continue; // only reserved addresses in this block
                };
                set_lease(&mut b, owner, a);
                match self.api.create(&PostParams::default(), &b).await {
                    Ok(_) => return Ok(a),
                    Err(e) if lost_race(&e) => continue, // another node claimed it
                    Err(e) => return Err(e.into()),
                }
            }
        }
        // 3. Every block is claimed: borrow from another node's block.
        for b in self.all_blocks().await? {
            let other = b.spec.node.as_deref() != Some(self.node.as_str());
            if other && block_start(&b).is_some_and(|(_, v4)| v4 == fam.v4) {
                if let Some(a) = self.take_in(b, owner, false).await? {
                    return Ok(a);
                }
            }
        }
        Err(self.err(IpamError::Exhausted {
            cidr: fam.config.cidr.to_string(),
        }))
    }

    /// Free what `owner` holds in this node's blocks and the blocks it borrowed from;
    /// returns the addresses (empty when it held nothing: a repeated DEL writes nothing).
    pub async fn release(&self, owner: &str) -> Result<Vec<IpAddr>, ControllerError> {
        let mut freed = Vec::new();
        for b in self.my_blocks().await? {
            if !b.spec.leases.contains_key(owner) {
                continue;
            }
            let name = b.name_any();
            let mut b = Some(b);
            let mut done = false;
            for _ in 0..CONFLICT_RETRIES {
                let Some(mut cur) = b.take() else {
                    done = true;
                    break;
                };
                let Some(addrs) = cur.spec.leases.remove(owner) else {
                    done = true;
                    break;
                };
                cur.spec.borrowed.remove(owner);
                cur.spec.used = cur.spec.leases.values().map(|v| v.len() as u32).sum();
                let still_borrowing = cur.spec.borrowed.values().any(|n| *n == self.node);
                if cur.spec.node.as_deref() != Some(self.node.as_str()) && !still_borrowing {
                    cur.labels_mut().remove(&node_label(&self.node));
                }
                match self.api.replace(&name, &PostParams::default(), &cur).await {
                    Ok(_) => {
                        freed.extend(parse_addrs(owner, &addrs).map_err(|e| self.err(e))?);
                        done = true;
                        break;
                    }
                    Err(e) if lost_race(&e) => b = self.api.get_opt(&name).await?,
                    Err(e) => return Err(e.into()),
                }
            }
            if !done {
                return Err(ControllerError::Contention(format!("address block {name}")));
            }
        }
        Ok(freed)
    }

    /// The network's block and address counts, for its status.
    pub async fn counts(
        &self,
    ) -> Result<
        (
            AddressBlockCounts,
            Option<AddressCounts>,
            Option<AddressCounts>,
        ),
        ControllerError,
    > {
        let blocks = self.all_blocks().await?;
        let mut c = AddressBlockCounts {
            blocks: blocks.len() as u64,
            ..AddressBlockCounts::default()
        };
        let (mut used4, mut used6) = (0u64, 0u64);
        for b in &blocks {
            c.claimed += u64::from(b.spec.node.is_some());
            c.leases += b.spec.leases.len() as u64;
            match block_start(b) {
                Some((_, true)) => used4 += u64::from(b.spec.used),
                Some((_, false)) => used6 += u64::from(b.spec.used),
                None => {}
            }
        }
        let counts = |fam: Option<&Family>, used: u64| {
            fam.map(|f| {
                let total = f.total();
                AddressCounts {
                    total,
                    allocated: used,
                    free: total.saturating_sub(used),
                }
            })
        };
        Ok((
            c,
            counts(self.v4.as_ref(), used4),
            counts(self.v6.as_ref(), used6),
        ))
    }

    /// Move the leases of the network's single [`NetworkAllocation`] object `name` into
    /// blocks (without affinity), then delete that object with a `resourceVersion`
    /// precondition. A 409 (an old allocator wrote meanwhile) starts over from a fresh read:
    /// leases added meanwhile are copied, leases released meanwhile are removed again, so no
    /// lease is lost or duplicated. An address held by two owners (in the object and a block)
    /// is refused. Returns the leases moved; nothing to do when the object does not exist.
    pub async fn migrate(
        &self,
        allocs: &Api<NetworkAllocation>,
        name: &str,
    ) -> Result<usize, ControllerError> {
        let mut copied: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for _ in 0..CONFLICT_RETRIES {
            let Some(alloc) = allocs.get_opt(name).await? else {
                return Ok(copied.len());
            };
            let mut current: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
            for (owner, addrs) in &alloc.spec.leases {
                current.insert(
                    owner.clone(),
                    parse_addrs(owner, addrs).map_err(|e| self.err(e))?,
                );
            }
            // Leases the old object dropped since the last pass: take them out again.
            let gone: Vec<(String, Vec<IpAddr>)> = copied
                .iter()
                .filter(|(o, a)| current.get(*o) != Some(a))
                .map(|(o, a)| (o.clone(), a.clone()))
                .collect();
            for (owner, addrs) in gone {
                self.edit_blocks(&addrs, |b| {
                    b.spec.leases.remove(&owner);
                    Ok(())
                })
                .await?;
                copied.remove(&owner);
            }
            for (owner, addrs) in &current {
                if copied.get(owner) == Some(addrs) {
                    continue;
                }
                self.edit_blocks(addrs, |b| {
                    let (mut pool, v4) = self.pool(b)?;
                    let mine: Vec<IpAddr> = addrs
                        .iter()
                        .copied()
                        .filter(|a| {
                            a.is_ipv4() == v4
                                && b.spec.cidr.parse::<IpNet>().is_ok_and(|n| n.contains(a))
                        })
                        .collect();
                    if b.spec
                        .leases
                        .get(owner)
                        .is_some_and(|held| mine.iter().all(|a| held.contains(&a.to_string())))
                    {
                        return Ok(());
                    }
                    for &a in &mine {
                        pool.allocate_specific(a).map_err(|e| IpamError::Restore {
                            owner: owner.clone(),
                            source: Box::new(e),
                        })?;
                        set_lease(b, owner, a);
                    }
                    Ok(())
                })
                .await?;
                copied.insert(owner.clone(), addrs.clone());
            }
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: alloc.metadata.resource_version.clone(),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            match allocs.delete(name, &dp).await {
                Ok(_) => return Ok(copied.len()),
                Err(e) if lost_race(&e) => continue,
                Err(e) if is_not_found(&e) => return Ok(copied.len()),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControllerError::Contention(format!(
            "network allocation {name}"
        )))
    }

    /// Apply `edit` to the block of each of `addrs` (created without affinity if missing),
    /// writing each with its `resourceVersion`, retrying on conflicts.
    async fn edit_blocks(
        &self,
        addrs: &[IpAddr],
        mut edit: impl FnMut(&mut NetworkAddressBlock) -> Result<(), IpamError>,
    ) -> Result<(), ControllerError> {
        let mut starts = BTreeSet::new();
        for &a in addrs {
            let fam = self.family(a.is_ipv4()).ok_or_else(|| {
                self.err(IpamError::Mode(format!(
                    "address {a}: the network has no subnet of its family"
                )))
            })?;
            starts.insert((fam.v4, fam.block_of(to_u128(a))));
        }
        for (v4, start) in starts {
            let fam = self.family(v4).expect("checked above");
            let name = block_name(&self.prefix, from_u128(start, v4), fam.prefix_len());
            let mut done = false;
            for _ in 0..CONFLICT_RETRIES {
                let (mut b, exists) = match self.api.get_opt(&name).await? {
                    Some(b) => (b, true),
                    None => {
                        let mut b = self.new_block(fam, start, false);
                        b.labels_mut().remove(&node_label(&self.node));
                        (b, false)
                    }
                };
                let before = b.spec.clone();
                edit(&mut b).map_err(|e| self.err(e))?;
                b.spec.used = b.spec.leases.values().map(|v| v.len() as u32).sum();
                if b.spec == before {
                    done = true;
                    break;
                }
                let r = if exists {
                    self.api.replace(&name, &PostParams::default(), &b).await
                } else {
                    self.api.create(&PostParams::default(), &b).await
                };
                match r {
                    Ok(_) => {
                        done = true;
                        break;
                    }
                    Err(e) if lost_race(&e) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            if !done {
                return Err(ControllerError::Contention(format!("address block {name}")));
            }
        }
        Ok(())
    }
}

/// Tidy one block after leases were dropped: forget `borrowed` entries without a lease,
/// and drop the membership label of every node that no longer borrows from it (a label
/// left behind would keep listing the block among that node's blocks, forever).
fn tidy_membership(b: &mut NetworkAddressBlock) {
    let leases = &b.spec.leases;
    b.spec.borrowed.retain(|o, _| leases.contains_key(o));
    let keep: BTreeSet<String> = b
        .spec
        .borrowed
        .values()
        .chain(b.spec.node.as_ref())
        .map(|n| node_label(n))
        .collect();
    b.labels_mut()
        .retain(|k, _| !k.starts_with(NODE_LABEL_PREFIX) || keep.contains(k));
}

/// Leak collection and node departure over every block: drop leases `dead` names (pods that
/// are gone) with their `borrowed` entries and stale membership labels. A block whose
/// affinity node is not in `nodes` (the node left) loses that affinity once none of the
/// node's own leases is left: it is deleted when it holds no lease at all (with a
/// `resourceVersion` precondition, so a lease written meanwhile keeps it), else it becomes
/// unclaimed (`spec.node` and the node's label removed), keeping the leases other nodes
/// borrowed in it, and any node may claim it again. Returns (leases dropped, blocks
/// deleted).
pub async fn collect(
    api: &Api<NetworkAddressBlock>,
    listed: Vec<NetworkAddressBlock>,
    dead: impl Fn(&str) -> bool,
    nodes: &BTreeSet<String>,
) -> Result<(usize, usize), ControllerError> {
    let (mut dropped, mut deleted) = (0, 0);
    for block in listed {
        let ns = block.namespace().unwrap_or_default();
        let name = block.name_any();
        let api: Api<NetworkAddressBlock> = Api::namespaced(api.clone().into_client(), &ns);
        let mut cur = Some(block);
        let mut done = false;
        for _ in 0..CONFLICT_RETRIES {
            let Some(mut b) = cur.take() else {
                done = true;
                break;
            };
            let (spec_before, labels_before) = (b.spec.clone(), b.labels().clone());
            let before = b.spec.leases.len();
            b.spec.leases.retain(|o, _| !dead(o));
            let n = before - b.spec.leases.len();
            tidy_membership(&mut b);
            let departed = b.spec.node.clone().filter(|n| !nodes.contains(n));
            if let Some(gone) = departed {
                let borrowed = &b.spec.borrowed;
                let own_left = b.spec.leases.keys().any(|o| !borrowed.contains_key(o));
                if b.spec.leases.is_empty() {
                    let dp = DeleteParams {
                        preconditions: Some(Preconditions {
                            resource_version: b.metadata.resource_version.clone(),
                            uid: None,
                        }),
                        ..DeleteParams::default()
                    };
                    match api.delete(&name, &dp).await {
                        Ok(_) => {
                            dropped += n;
                            deleted += 1;
                            done = true;
                            break;
                        }
                        Err(e) if lost_race(&e) => {
                            cur = api.get_opt(&name).await?;
                            continue;
                        }
                        Err(e) if is_not_found(&e) => {
                            done = true;
                            break;
                        }
                        Err(e) => return Err(e.into()),
                    }
                } else if !own_left {
                    b.spec.node = None;
                    b.labels_mut().remove(&node_label(&gone));
                    tidy_membership(&mut b);
                }
            }
            if b.spec == spec_before && *b.labels() == labels_before {
                done = true;
                break;
            }
            b.spec.used = b.spec.leases.values().map(|v| v.len() as u32).sum();
            match api.replace(&name, &PostParams::default(), &b).await {
                Ok(_) => {
                    if n > 0 {
                        tracing::info!(block = %format!("{ns}/{name}"), leases = n, "collected leases of deleted pods");
                    }
                    if spec_before.node.is_some() && b.spec.node.is_none() {
                        tracing::info!(block = %format!("{ns}/{name}"), node = ?spec_before.node, "released the address block of a node that left");
                    }
                    dropped += n;
                    done = true;
                    break;
                }
                Err(e) if lost_race(&e) => cur = api.get_opt(&name).await?,
                Err(e) => return Err(e.into()),
            }
        }
        if !done {
            return Err(ControllerError::Contention(format!(
                "address block {ns}/{name}"
            )));
        }
    }
    Ok((dropped, deleted))
}

#[cfg(test)]
#[path = "blocks_tests.rs"]
mod tests;
