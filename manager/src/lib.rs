//! `heddle-manager`: the cluster brain of Heddle.
//!
//! * [`crd`]: the `heddle.dev/v1alpha1` resources and the YAML `crdgen` prints.
//! * [`validation`]: pure checks of provider networks and networks, messages naming the field.
//! * [`vlan`]: VLAN assignment from a provider network's pool.
//! * [`ipam`]: IPv4/IPv6 address allocation (chunked bitmap, leases by owner).
//! * [`embedded`]: the same allocators on a crash-safe local journal, for single-node sites.
//! * [`device_plugin`]: the kubelet device plugin (vhost-user, memif, SR-IOV VF pools).
//! * [`controller`]: the kube-rs reconcilers and the cluster-wide allocator.
//! * [`cni_ipam`]: `heddle-ipam`, the allocators as a CNI IPAM plugin (embedded or cluster).
//! * [`fake_api`]: an in-memory API server (resourceVersion preconditions, etcd's size
//!   limit) behind a real `kube::Client`, for the allocators' tests and benchmarks.
//! * [`fuzz`]: the fuzzing entry points for `heddle-ipam`'s stdin and the device plugin config.
//! * [`trunks`]: the VLANs each uplink trunk of a node must carry, for the node daemon.

pub mod cni_ipam;
pub mod controller;
pub mod crd;
pub mod device_plugin;
pub mod embedded;
pub mod fake_api;
pub mod fuzz;
pub mod ipam;
pub mod leader;
pub mod node_agent;
pub mod trunks;
pub mod validation;
pub mod vlan;
pub mod webhook;
