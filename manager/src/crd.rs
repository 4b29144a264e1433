//! The `heddle.dev/v1alpha1` custom resources, derived in Rust.
//!
//! * [`ProviderNetwork`] (cluster-scoped): which uplink (a NIC or a VF pool) carries networks on
//!   which nodes, the VLAN pool to assign from, the MTU. Its status holds the VLAN and subnet
//!   assignments of every network on it, updated with optimistic concurrency, so VLANs are
//!   unique per provider and subnets never overlap on it.
//! * [`Network`] (namespaced, a tenant network) and [`ClusterNetwork`] (cluster-wide): the same
//!   [`NetworkSpec`]; pods reference them by name through the NetworkAttachmentDefinition the
//!   manager creates.
//! * [`NetworkAllocation`] (namespaced, owned by its network): the address leases of one network, the object the
//!   cluster-wide IP allocator updates with `resourceVersion` preconditions.
//!
//! * [`NetworkAddressBlock`] (namespaced, owned by its network): one address block of a
//!   network and its leases, claimed by a node (cluster IPAM; see `controller::blocks`).
//!   [`NetworkAllocation`] is the single-object format the blocks replace; the manager
//!   migrates it.
//!
//! `heddle-manager crdgen` prints [`crds_yaml`]; the chart ships the same text.

use std::collections::BTreeMap;

use kube::core::CustomResourceExt;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Heddle resource.
pub const GROUP: &str = "heddle.dev";
/// The API version served by this manager.
pub const VERSION: &str = "v1alpha1";

/// An uplink and the VLANs it may carry: the physical side of a set of networks.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "heddle.dev",
    version = "v1alpha1",
    kind = "ProviderNetwork",
    plural = "providernetworks",
    shortname = "pnet",
    status = "ProviderNetworkStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Interface","type":"string","jsonPath":".spec.interface"}"#,
    printcolumn = r#"{"name":"VF pool","type":"string","jsonPath":".spec.vfPool"}"#,
    printcolumn = r#"{"name":"MTU","type":"integer","jsonPath":".spec.mtu"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ProviderNetworkSpec {
    /// Host interface (NIC, bond or DPDK port name) that trunks the networks.
    /// Exactly one of `interface` and `vfPool` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// SR-IOV VF pool (device plugin resource name) that carries the networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vf_pool: Option<String>,
    /// Labels a node must carry to have this provider network; empty means every node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// VLAN ranges networks on this provider may use (explicitly or by assignment).
    #[serde(default)]
    pub vlan_pool: Vec<VlanRange>,
    /// MTU of the uplink and of every network on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 576, max = 9216))]
    pub mtu: Option<u32>,
}

/// An inclusive range of VLAN ids.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub struct VlanRange {
    /// First VLAN id of the range (1-4094).
    #[schemars(range(min = 1, max = 4094))]
    pub start: u16,
    /// Last VLAN id of the range, inclusive (1-4094, not below `start`).
    #[schemars(range(min = 1, max = 4094))]
    pub end: u16,
}

/// What the manager recorded on a provider network.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderNetworkStatus {
    /// One entry per network on this provider: its VLAN and subnets. The list is the source
    /// of truth for VLAN uniqueness and subnet overlap; it is replaced with a
    /// `resourceVersion` precondition.
    #[serde(default)]
    pub assignments: Vec<VlanAssignment>,
    /// Standard conditions (`Ready`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A network's claim on a provider network.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VlanAssignment {
    /// `namespace/name` of a `Network`, or `name` of a `ClusterNetwork`.
    pub network: String,
    /// UID of the network object; a recreated network with the same name is a new claim.
    pub uid: String,
    /// The VLAN the network uses.
    pub vlan: u16,
    /// The network's IPv4 and IPv6 subnets (CIDR), checked for overlap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
}

/// The spec shared by [`Network`] (namespaced) and [`ClusterNetwork`] (cluster-wide).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "heddle.dev",
    version = "v1alpha1",
    kind = "Network",
    plural = "networks",
    shortname = "hnet",
    namespaced,
    status = "NetworkStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".spec.kind"}"#,
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider"}"#,
    printcolumn = r#"{"name":"VLAN","type":"integer","jsonPath":".status.vlan"}"#,
    printcolumn = r#"{"name":"Blocks","type":"integer","jsonPath":".status.addressBlocks.blocks"}"#,
    printcolumn = r#"{"name":"Claimed","type":"integer","jsonPath":".status.addressBlocks.claimed"}"#,
    printcolumn = r#"{"name":"Leases","type":"integer","jsonPath":".status.addressBlocks.leases"}"#,
    printcolumn = r#"{"name":"Free IPv4","type":"integer","jsonPath":".status.ipv4.free"}"#,
    printcolumn = r#"{"name":"Free IPv6","type":"integer","jsonPath":".status.ipv6.free","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(oldSelf.vlan) || (has(self.vlan) && self.vlan == oldSelf.vlan)",
    "message": "spec.vlan cannot change once set: create a new network for another VLAN"
}, {
    "rule": "self.provider == oldSelf.provider",
    "message": "spec.provider cannot change: create a new network on the other provider"
}]))]
pub struct NetworkSpec {
    /// How pods attach: vhost-user, memif, sriov or kernel.
    pub kind: NetworkKind,
    /// Name of the `ProviderNetwork` that carries this network.
    pub provider: String,
    /// VLAN id (1-4094). Omit it to have one assigned from the provider's pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4094))]
    pub vlan: Option<u16>,
    /// IPv4 subnet, ranges, gateway and exclusions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Subnet>,
    /// IPv6 subnet, ranges, gateway and exclusions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Subnet>,
    /// How addresses are given: dynamic (from the ranges), static (the pod names them) or
    /// none (no IPAM, e.g. for a DPDK VNF that brings its own).
    #[serde(default)]
    pub allocation: AllocationMode,
    /// Defaults for vhost-user ports on this network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_user: Option<VhostUserDefaults>,
    /// Defaults for memif ports on this network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memif: Option<MemifDefaults>,
    /// Device plugin resource a pod requests for each interface on this network (e.g.
    /// `heddle.dev/vhost-user: 2` in its limits); the NetworkAttachmentDefinition carries it
    /// as `k8s.v1.cni.cncf.io/resourceName`, so Multus hands heddle-cni the device the kubelet
    /// chose. Default: `heddle.dev/vhost-user` for vhost-user, `heddle.dev/memif` for memif,
    /// the provider network's `vfPool` for sriov; kernel networks take none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
}

/// Default device plugin resource of vhost-user networks.
pub const VHOST_USER_RESOURCE: &str = "heddle.dev/vhost-user";
/// Default device plugin resource of memif networks.
pub const MEMIF_RESOURCE: &str = "heddle.dev/memif";

impl NetworkSpec {
    /// The device plugin resource pods request for this network's interfaces:
    /// `spec.resourceName`, else the kind's default (`vf_pool` is the provider network's
    /// `vfPool`, the default of sriov networks). `None` for kernel networks.
    pub fn device_resource(&self, vf_pool: Option<&str>) -> Option<String> {
        match self.kind {
            NetworkKind::Kernel => None,
            NetworkKind::VhostUser => Some(
                self.resource_name
                    .clone()
                    .unwrap_or_else(|| VHOST_USER_RESOURCE.into()),
            ),
            NetworkKind::Memif => Some(
                self.resource_name
                    .clone()
                    .unwrap_or_else(|| MEMIF_RESOURCE.into()),
            ),
            NetworkKind::Sriov => self
                .resource_name
                .clone()
                .or_else(|| vf_pool.map(str::to_owned)),
        }
    }
}

/// The same spec as [`Network`], cluster-wide (DANM's ClusterNetwork).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "heddle.dev",
    version = "v1alpha1",
    kind = "ClusterNetwork",
    plural = "clusternetworks",
    shortname = "cnet",
    status = "NetworkStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".spec.kind"}"#,
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider"}"#,
    printcolumn = r#"{"name":"VLAN","type":"integer","jsonPath":".status.vlan"}"#,
    printcolumn = r#"{"name":"Blocks","type":"integer","jsonPath":".status.addressBlocks.blocks"}"#,
    printcolumn = r#"{"name":"Claimed","type":"integer","jsonPath":".status.addressBlocks.claimed"}"#,
    printcolumn = r#"{"name":"Leases","type":"integer","jsonPath":".status.addressBlocks.leases"}"#,
    printcolumn = r#"{"name":"Free IPv4","type":"integer","jsonPath":".status.ipv4.free"}"#,
    printcolumn = r#"{"name":"Free IPv6","type":"integer","jsonPath":".status.ipv6.free","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkSpec {
    /// The network definition, identical to a namespaced `Network`'s.
    #[serde(flatten)]
    pub network: NetworkSpec,
}

/// Port kind of a network.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkKind {
    /// vhost-user sockets served or dialled by the switch.
    VhostUser,
    /// memif sockets.
    Memif,
    /// SR-IOV VFs handed to pods.
    Sriov,
    /// Kernel netdevs (veth/tap) on the switch.
    Kernel,
}

impl NetworkKind {
    /// The name used in CRDs and CNI configs.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkKind::VhostUser => "vhost-user",
            NetworkKind::Memif => "memif",
            NetworkKind::Sriov => "sriov",
            NetworkKind::Kernel => "kernel",
        }
    }
}

/// How addresses are given out on a network.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AllocationMode {
    /// The allocator picks a free address from the ranges.
    #[default]
    Dynamic,
    /// The pod asks for specific addresses; the allocator only checks they are free.
    Static,
    /// No addresses.
    None,
}

/// One IP subnet of a network.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subnet {
    /// The subnet, e.g. `10.10.0.0/16` or `fd00:10::/64`.
    pub cidr: String,
    /// Address ranges inside the subnet to allocate from; empty means the whole subnet
    /// (without network and broadcast addresses for IPv4; the first 2^24 addresses for a
    /// larger IPv6 subnet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<AddressRange>,
    /// Default gateway; never allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Addresses or CIDRs never allocated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// An inclusive range of addresses.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct AddressRange {
    /// First address of the range.
    pub start: String,
    /// Last address of the range, inclusive.
    pub end: String,
}

/// Defaults for vhost-user ports.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VhostUserDefaults {
    /// Which side listens on the socket: `server` (the switch) or `client` (the switch
    /// dials the pod's server and reconnects).
    #[serde(default)]
    pub mode: VhostUserMode,
    /// Queue pairs per port.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 128))]
    pub queues: u16,
}

fn one() -> u16 {
    1
}

/// Which side of a vhost-user socket the switch plays.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VhostUserMode {
    /// The switch creates the socket and listens.
    #[default]
    Server,
    /// The pod listens; the switch connects and reconnects.
    Client,
}

/// Defaults for memif ports.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemifDefaults {
    /// The switch's memif role: `server` (memif master) or `client` (memif slave).
    #[serde(default)]
    pub role: MemifRole,
    /// Ring size in descriptors, a power of two.
    #[serde(default = "default_ring_size")]
    #[schemars(range(min = 64, max = 32768))]
    pub ring_size: u32,
}

fn default_ring_size() -> u32 {
    1024
}

/// The switch's memif role.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MemifRole {
    /// The switch owns the shared memory and listens (memif master).
    #[default]
    Server,
    /// The pod owns it (memif slave).
    Client,
}

/// What the manager observed and decided about a network.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    /// The VLAN in use: `spec.vlan` or the one assigned from the provider's pool. Stable
    /// for the network's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions (`Ready`).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// IPv4 address counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<AddressCounts>,
    /// IPv6 address counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<AddressCounts>,
    /// The network's address blocks. Present once the manager has moved the network's
    /// leases into blocks (migrating its `NetworkAllocation`, if any): allocators wait for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_blocks: Option<AddressBlockCounts>,
}

/// How a network's leases are spread over address blocks.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressBlockCounts {
    /// `NetworkAddressBlock` objects of the network.
    pub blocks: u64,
    /// Blocks with a node affinity.
    pub claimed: u64,
    /// Lease owners (an owner with an IPv4 and an IPv6 address counts once per block).
    pub leases: u64,
}

/// Address counts of one subnet.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressCounts {
    /// Addresses the ranges hold, minus gateway and exclusions.
    pub total: u64,
    /// Addresses given to pods.
    pub allocated: u64,
    /// Addresses left (`total - allocated`).
    #[serde(default)]
    pub free: u64,
}

/// A Kubernetes-style condition.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word for machines.
    pub reason: String,
    /// A sentence for humans, naming the field and the fix.
    pub message: String,
    /// RFC 3339 time of the last change of `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// The address leases of one network, updated by allocators with `resourceVersion`
/// preconditions (optimistic concurrency: a conflict means re-read and retry).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "heddle.dev",
    version = "v1alpha1",
    kind = "NetworkAllocation",
    plural = "networkallocations",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkAllocationSpec {
    /// `namespace/name` of a `Network` or `name` of a `ClusterNetwork`.
    pub network: String,
    /// Leases by owner (`<container id>/<ifname>`): the addresses that owner holds.
    #[serde(default)]
    pub leases: BTreeMap<String, Vec<String>>,
}

/// One address block of a network: a CIDR-aligned slice of its address space and the leases
/// in it. A node claims a block (`spec.node`) and allocates from its own blocks without
/// touching anyone else's; every write carries the `resourceVersion` it read. The name is
/// derived from the network and the block's CIDR ([`block_name`]), so two nodes claiming the
/// same block collide on `create` and one of them gets `409 AlreadyExists`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "heddle.dev",
    version = "v1alpha1",
    kind = "NetworkAddressBlock",
    plural = "networkaddressblocks",
    shortname = "hblock",
    namespaced,
    derive = "PartialEq",
    printcolumn = r#"{"name":"Network","type":"string","jsonPath":".spec.network"}"#,
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".spec.used"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkAddressBlockSpec {
    /// `namespace/name` of a `Network` or `name` of a `ClusterNetwork`.
    pub network: String,
    /// The block, e.g. `10.3.1.0/24`.
    pub cidr: String,
    /// The node whose allocations this block serves; none after a migration or once the
    /// node has left (any node may then claim it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Leases in this block by owner: the owner's addresses that lie in this block.
    #[serde(default)]
    pub leases: BTreeMap<String, Vec<String>>,
    /// Leases another node took here (owner -> node) because the network was nearly full.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub borrowed: BTreeMap<String, String>,
    /// Addresses leased in this block (kept equal to the leases, for `kubectl get`).
    #[serde(default)]
    pub used: u32,
}

/// The name of the block of network allocation object `prefix` (see
/// [`allocation_object`]) starting at `first`: `network.n3.10-3-1-0-24`; an IPv6 block
/// spells its first address as 32 hex digits (`...fd000003000000000000000000000100-120`).
pub fn block_name(prefix: &str, first: std::net::IpAddr, prefix_len: u8) -> String {
    match first {
        std::net::IpAddr::V4(a) => {
            let o = a.octets();
            format!("{prefix}.{}-{}-{}-{}-{prefix_len}", o[0], o[1], o[2], o[3])
        }
        std::net::IpAddr::V6(a) => format!("{prefix}.{:032x}-{prefix_len}", u128::from(a)),
    }
}

/// Namespace and name of the [`NetworkAllocation`] object of a network: `network.<name>` in
/// the network's own namespace for a `Network`, `clusternetwork.<name>` in the manager's
/// namespace (`system_namespace`) for a `ClusterNetwork`. The prefixes keep the two apart.
pub fn allocation_object(
    namespace: Option<&str>,
    name: &str,
    system_namespace: &str,
) -> (String, String) {
    match namespace {
        Some(ns) => (ns.to_string(), format!("network.{name}")),
        None => (
            system_namespace.to_string(),
            format!("clusternetwork.{name}"),
        ),
    }
}

/// The key a network is known by in provider assignments and allocation objects:
/// `namespace/name` for a `Network`, `name` for a `ClusterNetwork`.
pub fn network_key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// Every CRD this manager serves, as one multi-document YAML text (what `crdgen` prints).
pub fn crds_yaml() -> String {
    let crds = [
        ProviderNetwork::crd(),
        Network::crd(),
        ClusterNetwork::crd(),
        NetworkAllocation::crd(),
        NetworkAddressBlock::crd(),
    ];
    let mut out = String::new();
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).expect("a CRD always serializes to YAML"));
    }
    out
}
