//! The block allocator against the in-memory API server ([`crate::fake_api`]), which
//! enforces `resourceVersion` preconditions and etcd's object size limit.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use kube::api::PostParams;
use kube::Api;
use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::crd::{NetworkAllocationSpec, NetworkKind, Subnet};
use crate::fake_api::{FakeApi, OBJECT_LIMIT};

const BLOCKS: &str = "heddle.dev/v1alpha1/networkaddressblocks";

fn subnet(cidr: &str) -> Subnet {
    Subnet {
        cidr: cidr.into(),
        ranges: vec![],
        gateway: None,
        exclude: vec![],
    }
}

fn spec(v4: &str, v6: Option<&str>) -> NetworkSpec {
    NetworkSpec {
        kind: NetworkKind::VhostUser,
        provider: "uplink0".into(),
        vlan: None,
        ipv4: Some(subnet(v4)),
        ipv6: v6.map(subnet),
        allocation: AllocationMode::Dynamic,
        vhost_user: None,
        memif: None,
        resource_name: None,
    }
}

fn allocator(fake: &FakeApi, node: &str, spec: &NetworkSpec) -> BlockAllocator {
    BlockAllocator::new(
        Api::namespaced(fake.client(), "ns1"),
        "network.n3",
        "ns1/n3",
        spec,
        node,
        None,
    )
    .unwrap()
}

/// Every lease stored in every block, address -> owner. Panics when an address is held
/// twice, lies outside its block, or a block's `used` disagrees with its leases.
fn stored(fake: &FakeApi) -> BTreeMap<IpAddr, String> {
    let mut all = BTreeMap::new();
    for b in fake.objects(BLOCKS) {
        let b: NetworkAddressBlock = serde_json::from_value(b).unwrap();
        let cidr: IpNet = b.spec.cidr.parse().unwrap();
        let mut used = 0;
        for (owner, addrs) in &b.spec.leases {
            for a in addrs {
                let a: IpAddr = a.parse().unwrap();
                assert!(cidr.contains(&a), "{a} of {owner} outside block {cidr}");
                if let Some(other) = all.insert(a, owner.clone()) {
                    panic!("{a} held by {other} and {owner}");
                }
                used += 1;
            }
        }
        assert_eq!(b.spec.used, used, "block {cidr}: used");
        for owner in b.spec.borrowed.keys() {
            assert!(
                b.spec.leases.contains_key(owner),
                "borrowed entry without lease"
            );
        }
        assert_eq!(
            membership(&b),
            expected_membership(&b),
            "block {cidr}: membership labels"
        );
    }
    all
}

/// The block's membership labels (`nodes.heddle.dev/<node>` -> `affinity` / `borrowed`).
fn membership(b: &NetworkAddressBlock) -> BTreeMap<String, String> {
    b.labels()
        .iter()
        .filter(|(k, _)| k.starts_with(NODE_LABEL_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// What they must be: the affinity node, and every node that borrows an address in it.
fn expected_membership(b: &NetworkAddressBlock) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = b
        .spec
        .borrowed
        .values()
        .map(|n| (node_label(n), BORROWED.to_string()))
        .collect();
    if let Some(n) = &b.spec.node {
        m.insert(node_label(n), AFFINITY.to_string());
    }
    m
}

fn blocks_of(fake: &FakeApi) -> Vec<NetworkAddressBlock> {
    fake.objects(BLOCKS)
        .into_iter()
        .map(|b| serde_json::from_value(b).unwrap())
        .collect()
}

#[tokio::test]
async fn block_sizes_follow_the_subnet() {
    let fake = FakeApi::new();
    let sizes = |v4: &str, v6: Option<&str>| allocator(&fake, "n", &spec(v4, v6)).block_sizes();
    assert_eq!(
        sizes("10.0.0.0/8", Some("fd00::/64")),
        (Some(256), Some(256))
    );
    assert_eq!(sizes("10.0.0.0/24", None), (Some(16), None));
    assert_eq!(sizes("10.0.0.0/28", None), (Some(4), None));
    assert_eq!(sizes("10.0.0.0/31", None), (Some(2), None));
    assert_eq!(
        block_name("network.n3", "10.3.1.0".parse().unwrap(), 24),
        "network.n3.10-3-1-0-24"
    );
    assert_eq!(
        block_name("network.n3", "fd00:3::100".parse().unwrap(), 120),
        "network.n3.fd000003000000000000000000000100-120"
    );
    assert_eq!(label_safe(&"a".repeat(63)), "a".repeat(63));
    let long = label_safe(&"node-".repeat(20));
    assert!(long.len() <= 63, "{long}");
    assert_ne!(long, label_safe(&"node-".repeat(21)));
}

#[tokio::test]
async fn a_node_allocates_from_its_own_block_and_claims_another_when_full() {
    let fake = FakeApi::new();
    let s = spec("10.3.0.0/24", Some("fd00:3::/64"));
    let a = allocator(&fake, "node-a", &s);
    let first = a.allocate("pod-0/eth1", &[]).await.unwrap();
    assert_eq!(first.len(), 2, "one address per family: {first:?}");
    assert!(first[0].is_ipv4() && first[1].is_ipv6());
    assert_eq!(
        a.allocate("pod-0/eth1", &[]).await.unwrap(),
        first,
        "idempotent"
    );
    let writes = fake.stats().writes;
    a.allocate("pod-0/eth1", &[]).await.unwrap();
    assert_eq!(fake.stats().writes, writes, "a repeated ADD writes nothing");
    // 16-address IPv4 blocks: 20 owners need two blocks, both claimed by node-a.
    for i in 1..20 {
        a.allocate(&format!("pod-{i}/eth1"), &[]).await.unwrap();
    }
    let blocks: Vec<NetworkAddressBlock> = fake
        .objects(BLOCKS)
        .into_iter()
        .map(|b| serde_json::from_value(b).unwrap())
        .collect();
    let v4: Vec<_> = blocks
        .iter()
        .filter(|b| b.spec.cidr.starts_with("10."))
        .collect();
    assert_eq!(v4.len(), 2);
    assert!(blocks
        .iter()
        .all(|b| b.spec.node.as_deref() == Some("node-a")));
    assert!(blocks
        .iter()
        .all(|b| b.labels()[&node_label("node-a")] == AFFINITY));
    assert_eq!(stored(&fake).len(), 40);
    // Release: both families freed; a repeated release writes nothing.
    let freed = a.release("pod-0/eth1").await.unwrap();
    assert_eq!(freed.len(), 2);
    let writes = fake.stats().writes;
    assert!(a.release("pod-0/eth1").await.unwrap().is_empty());
    assert_eq!(fake.stats().writes, writes);
    assert_eq!(stored(&fake).len(), 38);
    let (c, v4c, v6c) = a.counts().await.unwrap();
    assert_eq!((c.blocks, c.claimed, c.leases), (3, 3, 38));
    assert_eq!(
        v4c.unwrap(),
        AddressCounts {
            total: 254,
            allocated: 19,
            free: 235
        }
    );
    assert_eq!(v6c.unwrap().allocated, 19);
}

#[tokio::test]
async fn static_addresses_are_checked_and_freed_across_blocks() {
    let fake = FakeApi::new();
    let mut s = spec("10.3.0.0/24", None);
    s.ipv4.as_mut().unwrap().gateway = Some("10.3.0.1".into());
    let a = allocator(&fake, "node-a", &s);
    let b = allocator(&fake, "node-b", &s);
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    // In a block nobody claimed: created without affinity, marked as borrowed by node-a.
    assert_eq!(
        a.allocate("st-1/eth1", &[ip("10.3.0.200")]).await.unwrap(),
        vec![ip("10.3.0.200")]
    );
    let e = b
        .allocate("st-2/eth1", &[ip("10.3.0.200")])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already in use"), "{e}");
    let e = b
        .allocate("st-2/eth1", &[ip("10.3.0.1")])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("gateway"), "{e}");
    let e = b
        .allocate("st-2/eth1", &[ip("10.4.0.1")])
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("not in the allocatable ranges"),
        "{e}"
    );
    // The unclaimed block is claimable: node-b takes it over for dynamic allocation later.
    let blk: NetworkAddressBlock =
        serde_json::from_value(fake.objects(BLOCKS).pop().unwrap()).unwrap();
    assert_eq!(blk.spec.node, None);
    assert_eq!(
        blk.spec.borrowed.get("st-1/eth1").map(String::as_str),
        Some("node-a")
    );
    assert_eq!(
        a.release("st-1/eth1").await.unwrap(),
        vec![ip("10.3.0.200")]
    );
    let blk: NetworkAddressBlock =
        serde_json::from_value(fake.objects(BLOCKS).pop().unwrap()).unwrap();
    assert!(blk.spec.leases.is_empty() && blk.spec.borrowed.is_empty());
    assert!(
        !blk.labels().contains_key(&node_label("node-a")),
        "membership dropped"
    );
    // A failed request takes nothing (all or nothing).
    let e = b
        .allocate("st-3/eth1", &[ip("10.3.0.50"), ip("10.3.0.1")])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("gateway"), "{e}");
    assert!(stored(&fake).is_empty(), "{:?}", stored(&fake));
}

/// Runs `nodes` concurrent nodes on one network; each allocates `per_node` owners and
/// releases every third. Returns the live acknowledged leases (address -> owner).
async fn churn(
    fake: &FakeApi,
    s: &NetworkSpec,
    nodes: usize,
    per_node: usize,
) -> BTreeMap<IpAddr, String> {
    let mut tasks = Vec::new();
    for n in 0..nodes {
        let a = allocator(fake, &format!("node-{n}"), s);
        tasks.push(tokio::spawn(async move {
            let mut live = Vec::new();
            for i in 0..per_node {
                let owner = format!("node{n}-pod{i}/eth1");
                let got = loop {
                    match a.allocate(&owner, &[]).await {
                        Ok(got) => break got,
                        Err(ControllerError::Contention(_)) => continue,
                        Err(e) => panic!("{owner}: {e}"),
                    }
                };
                if i % 3 == 2 {
                    assert_eq!(a.release(&owner).await.unwrap(), got);
                } else {
                    live.push((owner, got));
                }
            }
            live
        }));
    }
    let mut acked = BTreeMap::new();
    for t in tasks {
        for (owner, addrs) in t.await.unwrap() {
            for a in addrs {
                assert!(
                    acked.insert(a, owner.clone()).is_none(),
                    "{a} handed out twice"
                );
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_nodes_allocate_and_release_without_duplicates_or_oversized_objects() {
    let fake = FakeApi::interleaving();
    let s = spec("10.0.0.0/16", None);
    let acked = churn(&fake, &s, 100, 30).await;
    assert_eq!(acked.len(), 100 * 20);
    assert_eq!(
        stored(&fake),
        acked,
        "the blocks hold exactly the acknowledged leases"
    );
    let st = fake.stats();
    assert_eq!(st.too_large, 0);
    assert!(
        st.largest_object < OBJECT_LIMIT / 50,
        "largest {}",
        st.largest_object
    );
    // Node affinity: every node allocated in blocks of its own (the network is far from full).
    for b in fake.objects(BLOCKS) {
        let b: NetworkAddressBlock = serde_json::from_value(b).unwrap();
        let node = b.spec.node.clone().expect("claimed");
        let prefix = node.replace('-', "");
        assert!(
            b.spec
                .leases
                .keys()
                .all(|o| o.starts_with(&format!("{prefix}-"))),
            "{node} holds foreign leases"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_network_is_shared_by_borrowing_and_never_duplicates() {
    let fake = FakeApi::interleaving();
    // 254 addresses in 16 blocks of 16 for 24 nodes: blocks run out, nodes borrow.
    let s = spec("10.3.0.0/24", None);
    let mut tasks = Vec::new();
    for n in 0..24 {
        let a = allocator(&fake, &format!("node-{n}"), &s);
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0.. {
                let owner = format!("n{n}-p{i}/eth1");
                match a.allocate(&owner, &[]).await {
                    Ok(addrs) => got.push((owner, addrs)),
                    Err(ControllerError::Contention(_)) => continue,
                    Err(ControllerError::Ipam {
                        source: IpamError::Exhausted { .. },
                        ..
                    }) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            got
        }));
    }
    let mut acked = BTreeMap::new();
    for t in tasks {
        for (owner, addrs) in t.await.unwrap() {
            for a in addrs {
                assert!(
                    acked.insert(a, owner.clone()).is_none(),
                    "{a} handed out twice"
                );
            }
        }
    }
    assert_eq!(acked.len(), 254, "every address given, none twice");
    assert_eq!(stored(&fake), acked);
    let borrowed: usize = fake
        .objects(BLOCKS)
        .into_iter()
        .map(|b| {
            serde_json::from_value::<NetworkAddressBlock>(b)
                .unwrap()
                .spec
                .borrowed
                .len()
        })
        .sum();
    assert!(
        borrowed > 0,
        "no node borrowed: the test did not reach a full network"
    );
    assert!(
        fake.stats().conflicts > 0,
        "no write conflicted: the retries were not exercised"
    );
}

fn legacy(leases: &BTreeMap<String, Vec<String>>) -> Value {
    let mut a = NetworkAllocation::new(
        "network.n3",
        NetworkAllocationSpec {
            network: "ns1/n3".into(),
            leases: leases.clone(),
        },
    );
    a.metadata.namespace = Some("ns1".into());
    serde_json::to_value(a).unwrap()
}

#[tokio::test]
async fn a_populated_network_allocation_moves_into_blocks_without_loss_or_duplicates() {
    let fake = FakeApi::new();
    let s = spec("10.3.0.0/20", Some("fd00:3::/64"));
    let mut leases = BTreeMap::new();
    for i in 0..1500u32 {
        let mut addrs = vec![format!("10.3.{}.{}", (i + 1) / 256, (i + 1) % 256)];
        if i % 2 == 0 {
            addrs.push(format!("fd00:3::{:x}", i + 1));
        }
        leases.insert(format!("pod-{i}/eth1"), addrs);
    }
    fake.insert("heddle.dev/v1alpha1/networkallocations", legacy(&leases));
    let allocs: Api<NetworkAllocation> = Api::namespaced(fake.client(), "ns1");
    let m = allocator(&fake, FIELD_MANAGER_NODE, &s);
    assert_eq!(m.migrate(&allocs, "network.n3").await.unwrap(), 1500);
    assert!(
        allocs.get_opt("network.n3").await.unwrap().is_none(),
        "old object deleted"
    );
    let after = stored(&fake);
    let mut expected = BTreeMap::new();
    for (o, addrs) in &leases {
        for a in addrs {
            expected.insert(a.parse::<IpAddr>().unwrap(), o.clone());
        }
    }
    assert_eq!(after, expected, "every lease moved, none twice");
    // Migrated blocks are unclaimed; a node claims one and never hands out a migrated address.
    let a = allocator(&fake, "node-a", &s);
    for i in 0..100 {
        a.allocate(&format!("new-{i}/eth1"), &[]).await.unwrap();
    }
    assert_eq!(stored(&fake).len(), expected.len() + 200);
    // Idempotent: migrating again (nothing left) changes nothing.
    let writes = fake.stats().writes;
    assert_eq!(m.migrate(&allocs, "network.n3").await.unwrap(), 0);
    assert_eq!(fake.stats().writes, writes);
}

#[tokio::test]
async fn an_interrupted_migration_resumes_and_a_double_holder_is_refused() {
    let fake = FakeApi::new();
    let s = spec("10.3.0.0/24", None);
    let leases: BTreeMap<String, Vec<String>> = (1..=40)
        .map(|i| (format!("pod-{i}/eth1"), vec![format!("10.3.0.{i}")]))
        .collect();
    fake.insert("heddle.dev/v1alpha1/networkallocations", legacy(&leases));
    let allocs: Api<NetworkAllocation> = Api::namespaced(fake.client(), "ns1");
    let m = allocator(&fake, FIELD_MANAGER_NODE, &s);
    // A first run that copied some leases and died before deleting the object.
    let half: Vec<IpAddr> = (1..=20)
        .map(|i| format!("10.3.0.{i}").parse().unwrap())
        .collect();
    m.edit_blocks(&half, |b| {
        let cidr: IpNet = b.spec.cidr.parse().unwrap();
        for a in half.iter().filter(|a| cidr.contains(*a)) {
            let owner = format!("pod-{}/eth1", a.to_string().rsplit('.').next().unwrap());
            set_lease(b, &owner, *a);
        }
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(m.migrate(&allocs, "network.n3").await.unwrap(), 40);
    assert_eq!(stored(&fake).len(), 40);
    // An address in the old object that a block gives to someone else: refused, kept.
    let mut clash = BTreeMap::new();
    clash.insert("other/eth1".to_string(), vec!["10.3.0.5".to_string()]);
    fake.insert("heddle.dev/v1alpha1/networkallocations", legacy(&clash));
    let e = m.migrate(&allocs, "network.n3").await.unwrap_err();
    assert!(e.to_string().contains("already in use"), "{e}");
    assert!(
        allocs.get_opt("network.n3").await.unwrap().is_some(),
        "not deleted on error"
    );
    assert_eq!(
        stored(&fake)[&"10.3.0.5".parse::<IpAddr>().unwrap()],
        "pod-5/eth1"
    );
}

#[tokio::test]
async fn a_migration_racing_an_old_allocator_loses_and_duplicates_nothing() {
    let fake = FakeApi::interleaving();
    let s = spec("10.3.0.0/22", None);
    let leases: BTreeMap<String, Vec<String>> = (1..=300)
        .map(|i| {
            (
                format!("pod-{i}/eth1"),
                vec![format!("10.3.{}.{}", i / 256, i % 256)],
            )
        })
        .collect();
    fake.insert("heddle.dev/v1alpha1/networkallocations", legacy(&leases));
    let allocs: Api<NetworkAllocation> = Api::namespaced(fake.client(), "ns1");
    // An old allocator keeps allocating and releasing on the single object until the
    // migration deletes it; `acked` is what it was told succeeded.
    let old = {
        let (allocs, s) = (allocs.clone(), s.clone());
        let mut acked: BTreeMap<String, Vec<IpAddr>> = leases
            .iter()
            .map(|(o, a)| (o.clone(), vec![a[0].parse().unwrap()]))
            .collect();
        tokio::spawn(async move {
            for i in 0.. {
                let r = if i % 3 == 2 {
                    let owner = format!("pod-{}/eth1", i + 1);
                    super::super::ipam::release(&allocs, "network.n3", &s, &owner)
                        .await
                        .map(|_| {
                            acked.remove(&owner);
                        })
                } else {
                    let owner = format!("old-{i}/eth1");
                    super::super::ipam::allocate(&allocs, "network.n3", &s, &owner, &[])
                        .await
                        .map(|a| {
                            acked.insert(owner, a);
                        })
                };
                match r {
                    Ok(()) | Err(ControllerError::Contention(_)) => {}
                    Err(e) if is_not_found_error(&e) => return (i, acked),
                    Err(e) => panic!("{e}"),
                }
                // Every request yields once (single-threaded runtime): the first write lands
                // during the migration's first pass; the pause lets a later pass finish.
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
            }
            unreachable!()
        })
    };
    let m = allocator(&fake, FIELD_MANAGER_NODE, &s);
    let moved = loop {
        match m.migrate(&allocs, "network.n3").await {
            Ok(n) => break n,
            Err(ControllerError::Contention(_)) => continue,
            Err(e) => panic!("{e}"),
        }
    };
    let (ops, acked) = old.await.unwrap();
    assert!(
        ops > 0,
        "the old allocator never wrote during the migration"
    );
    assert!(
        fake.stats().conflicts > 0,
        "the migration never had to start over"
    );
    let expected: BTreeMap<IpAddr, String> = acked
        .iter()
        .flat_map(|(o, a)| a.iter().map(move |a| (*a, o.clone())))
        .collect();
    assert_eq!(moved, acked.len());
    assert_eq!(
        stored(&fake),
        expected,
        "the blocks hold exactly what the old allocator acknowledged"
    );
}

fn is_not_found_error(e: &ControllerError) -> bool {
    matches!(e, ControllerError::Kube(k) if is_not_found(k))
}

const FIELD_MANAGER_NODE: &str = super::super::FIELD_MANAGER;

#[tokio::test]
async fn collection_drops_dead_leases_and_the_empty_blocks_of_departed_nodes() {
    let fake = FakeApi::new();
    let s = spec("10.3.0.0/24", None);
    let a = allocator(&fake, "node-a", &s);
    let b = allocator(&fake, "node-b", &s);
    for i in 0..3 {
        a.allocate(&format!("dead-{i}/eth1"), &[]).await.unwrap();
    }
    b.allocate("dead-b/eth1", &[]).await.unwrap();
    b.allocate("live-b/eth1", &[]).await.unwrap();
    let api: Api<NetworkAddressBlock> = Api::all(fake.client());
    let listed = api.list(&Default::default()).await.unwrap().items;
    // node-a and node-b have left; only "live-*" pods exist.
    let nodes = BTreeSet::new();
    let (dropped, deleted) = collect(&api, listed, |o| o.starts_with("dead-"), &nodes)
        .await
        .unwrap();
    assert_eq!(
        (dropped, deleted),
        (4, 1),
        "node-a's block deleted; node-b's keeps a lease"
    );
    let left: Vec<NetworkAddressBlock> = fake
        .objects(BLOCKS)
        .into_iter()
        .map(|b| serde_json::from_value(b).unwrap())
        .collect();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].spec.node.as_deref(), Some("node-b"));
    assert_eq!(
        stored(&fake).into_values().collect::<Vec<_>>(),
        ["live-b/eth1"]
    );
    // A block written between the listing and the delete is kept (precondition).
    b.release("live-b/eth1").await.unwrap();
    let listed = api.list(&Default::default()).await.unwrap().items;
    b.allocate("late/eth1", &[]).await.unwrap();
    let (_, deleted) = collect(&api, listed, |_| false, &nodes).await.unwrap();
    assert_eq!(deleted, 0);
    assert_eq!(stored(&fake).len(), 1);
    let _ = PostParams::default();
}

#[tokio::test]
async fn collection_clears_stale_borrowed_labels_and_unclaims_the_block_of_a_departed_node() {
    let fake = FakeApi::new();
    let s = spec("10.3.0.0/24", None);
    let a = allocator(&fake, "node-a", &s);
    let b = allocator(&fake, "node-b", &s);
    let c = allocator(&fake, "node-c", &s);
    let api: Api<NetworkAddressBlock> = Api::all(fake.client());
    let all_nodes: BTreeSet<String> = ["node-a", "node-b", "node-c"].map(String::from).into();
    // node-a claims a block of 16; node-b borrows two addresses in it (static requests).
    let own = a.allocate("a-pod/eth1", &[]).await.unwrap();
    let IpAddr::V4(first) = own[0] else {
        panic!("{own:?}")
    };
    let in_a = |i: u32| IpAddr::V4((u32::from(first) & !15 | i).into());
    b.allocate("b-dead/eth1", &[in_a(8)]).await.unwrap();
    b.allocate("b-live/eth1", &[in_a(9)]).await.unwrap();
    let blk = blocks_of(&fake).pop().unwrap();
    assert_eq!(blk.labels()[&node_label("node-b")], BORROWED);

    // b-dead's pod is gone: its lease, its borrowed entry go; node-b still borrows b-live.
    let listed = api.list(&Default::default()).await.unwrap().items;
    let (dropped, _) = collect(&api, listed, |o| o == "b-dead/eth1", &all_nodes)
        .await
        .unwrap();
    assert_eq!(dropped, 1);
    stored(&fake); // checks the membership labels
    assert_eq!(
        blocks_of(&fake)[0].labels()[&node_label("node-b")],
        BORROWED
    );

    // b-live's pod is gone too: node-b borrows nothing here any more, and its label goes
    // (it used to stay, so node-b kept listing node-a's block as one of its own).
    let listed = api.list(&Default::default()).await.unwrap().items;
    collect(&api, listed, |o| o == "b-live/eth1", &all_nodes)
        .await
        .unwrap();
    let blk = blocks_of(&fake).pop().unwrap();
    assert!(
        !blk.labels().contains_key(&node_label("node-b")),
        "stale borrowed label: {:?}",
        blk.labels()
    );
    assert!(blk.spec.borrowed.is_empty());
    assert!(b.my_blocks().await.unwrap().is_empty());
    stored(&fake);

    // node-b borrows again; then node-a leaves and its own pod is gone. The block still
    // holds node-b's lease, so it stays, but without node-a's affinity: unclaimed.
    b.allocate("b-2/eth1", &[in_a(10)]).await.unwrap();
    let listed = api.list(&Default::default()).await.unwrap().items;
    let without_a: BTreeSet<String> = ["node-b", "node-c"].map(String::from).into();
    let (dropped, deleted) = collect(&api, listed, |o| o == "a-pod/eth1", &without_a)
        .await
        .unwrap();
    assert_eq!((dropped, deleted), (1, 0));
    let blk = blocks_of(&fake).pop().unwrap();
    assert_eq!(
        blk.spec.node, None,
        "the departed node's affinity is released"
    );
    assert!(!blk.labels().contains_key(&node_label("node-a")));
    assert_eq!(
        stored(&fake).into_values().collect::<Vec<_>>(),
        ["b-2/eth1"]
    );
    // A collection with nothing to do writes nothing.
    let writes = fake.stats().writes;
    let listed = api.list(&Default::default()).await.unwrap().items;
    assert_eq!(
        collect(&api, listed, |_| false, &without_a).await.unwrap(),
        (0, 0)
    );
    assert_eq!(fake.stats().writes, writes);

    // Any node may claim the block again: node-c's first allocation takes it over.
    let got = c.allocate("c-pod/eth1", &[]).await.unwrap();
    let blk = blocks_of(&fake).pop().unwrap();
    assert_eq!(blk.spec.node.as_deref(), Some("node-c"));
    assert!(blk.spec.cidr.parse::<IpNet>().unwrap().contains(&got[0]));
    // node-b's release still finds its borrowed lease, and drops its label.
    assert_eq!(b.release("b-2/eth1").await.unwrap(), vec![in_a(10)]);
    let blk = blocks_of(&fake).pop().unwrap();
    assert!(!blk.labels().contains_key(&node_label("node-b")));
    stored(&fake);
}

#[tokio::test]
async fn claiming_a_block_turns_the_claimers_own_borrowed_entries_into_leases_of_its_own() {
    let fake = FakeApi::new();
    let s = spec("10.3.0.0/28", None); // 14 addresses in 4-address blocks
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let a = allocator(&fake, "node-a", &s);
    // A static address in a block nobody claims: borrowed (from nobody) by node-a.
    a.allocate("st/eth1", &[ip("10.3.0.13")]).await.unwrap();
    let blk = blocks_of(&fake).pop().unwrap();
    assert_eq!(blk.spec.node, None);
    assert_eq!(blk.labels()[&node_label("node-a")], BORROWED);
    // node-a fills the other blocks, then claims that one.
    for i in 0..12 {
        a.allocate(&format!("p{i}/eth1"), &[]).await.unwrap();
    }
    let blk = blocks_of(&fake)
        .into_iter()
        .find(|b| b.spec.cidr == "10.3.0.12/30")
        .unwrap();
    assert_eq!(blk.spec.node.as_deref(), Some("node-a"));
    assert!(blk.spec.borrowed.is_empty(), "{:?}", blk.spec.borrowed);
    assert_eq!(blk.labels()[&node_label("node-a")], AFFINITY);
    stored(&fake);
}

/// Two node names whose searches start at the same block of a 16-block network.
fn colliding_nodes() -> (String, String) {
    let names: Vec<String> = (0..100).map(|i| format!("node-{i}")).collect();
    for a in &names {
        for b in &names {
            if a < b && fnv(a) % 16 == fnv(b) % 16 {
                return (a.clone(), b.clone());
            }
        }
    }
    unreachable!("100 names over 16 start blocks always collide")
}

#[tokio::test]
async fn two_nodes_racing_for_one_new_block_one_wins_and_the_other_claims_another() {
    // The fake server yields before each request, so both nodes read (nothing) before
    // either writes, then both create the same block.
    let fake = FakeApi::interleaving();
    let s = spec("10.3.0.0/24", None);
    let (n1, n2) = colliding_nodes();
    let (a, b) = (allocator(&fake, &n1, &s), allocator(&fake, &n2, &s));
    let (ra, rb) = tokio::join!(a.allocate("pa/eth1", &[]), b.allocate("pb/eth1", &[]));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_ne!(ra, rb);
    assert_eq!(
        fake.stats().conflicts,
        1,
        "the loser's create got 409 AlreadyExists"
    );
    let blocks = blocks_of(&fake);
    assert_eq!(blocks.len(), 2, "the loser claimed another block");
    for (node, addr) in [(&n1, ra[0]), (&n2, rb[0])] {
        let mine: Vec<_> = blocks
            .iter()
            .filter(|b| b.spec.node.as_deref() == Some(node.as_str()))
            .collect();
        assert_eq!(mine.len(), 1, "{node}");
        assert!(mine[0].spec.cidr.parse::<IpNet>().unwrap().contains(&addr));
        assert!(mine[0].spec.borrowed.is_empty(), "nobody borrowed");
    }
    stored(&fake);
}

#[tokio::test]
async fn two_nodes_racing_for_one_unclaimed_block_one_claims_it() {
    let fake = FakeApi::interleaving();
    let s = spec("10.3.0.0/24", None);
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    // A static address makes the unclaimed block 10.3.0.16/28.
    allocator(&fake, "node-x", &s)
        .allocate("st/eth1", &[ip("10.3.0.20")])
        .await
        .unwrap();
    let (a, b) = (
        allocator(&fake, "node-a", &s),
        allocator(&fake, "node-b", &s),
    );
    let (ra, rb) = tokio::join!(a.allocate("pa/eth1", &[]), b.allocate("pb/eth1", &[]));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(fake.stats().conflicts >= 1, "the second claim was refused");
    let blocks = blocks_of(&fake);
    let unclaimed = blocks
        .iter()
        .find(|b| b.spec.cidr == "10.3.0.16/28")
        .unwrap();
    let winner = unclaimed.spec.node.clone().expect("claimed");
    let (won, lost) = if winner == "node-a" {
        (ra[0], rb[0])
    } else {
        (rb[0], ra[0])
    };
    let cidr: IpNet = "10.3.0.16/28".parse().unwrap();
    assert!(
        cidr.contains(&won),
        "the winner allocated in the block it claimed"
    );
    assert!(
        !cidr.contains(&lost),
        "the loser went elsewhere, it did not borrow"
    );
    assert_eq!(blocks.len(), 2);
    stored(&fake);
}

#[tokio::test]
async fn nodes_borrow_only_when_every_block_is_claimed_and_retry_a_borrow_on_409() {
    let fake = FakeApi::interleaving();
    // 14 addresses in 4 blocks of 4 (.1-.3, .4-.7, .8-.11, .12-.14).
    let s = spec("10.3.0.0/28", None);
    let a = allocator(&fake, "node-a", &s);
    for i in 0..12 {
        a.allocate(&format!("a{i}/eth1"), &[]).await.unwrap();
    }
    let blocks = blocks_of(&fake);
    assert_eq!(blocks.len(), 4);
    assert!(blocks
        .iter()
        .all(|b| b.spec.node.as_deref() == Some("node-a")));
    let before = fake.stats().conflicts;
    // Every block is claimed: node-b and node-c borrow the last two addresses, at once, in
    // the same block of node-a's: one write wins, the other is refused, re-read, retried.
    let (b, c) = (
        allocator(&fake, "node-b", &s),
        allocator(&fake, "node-c", &s),
    );
    let (rb, rc) = tokio::join!(b.allocate("b/eth1", &[]), c.allocate("c/eth1", &[]));
    let (rb, rc) = (rb.unwrap(), rc.unwrap());
    assert_ne!(rb, rc);
    assert!(fake.stats().conflicts > before, "no borrow conflicted");
    let blocks = blocks_of(&fake);
    assert_eq!(blocks.len(), 4, "nobody created or claimed a block");
    let borrowed: BTreeMap<String, String> = blocks
        .iter()
        .flat_map(|b| b.spec.borrowed.clone())
        .collect();
    assert_eq!(
        borrowed,
        BTreeMap::from([
            ("b/eth1".to_string(), "node-b".to_string()),
            ("c/eth1".to_string(), "node-c".to_string())
        ])
    );
    assert_eq!(stored(&fake).len(), 14);
    // The network is full now.
    let e = b.allocate("b2/eth1", &[]).await.unwrap_err();
    assert!(
        matches!(
            e,
            ControllerError::Ipam {
                source: IpamError::Exhausted { .. },
                ..
            }
        ),
        "{e}"
    );
}

#[derive(Clone, Debug)]
enum Op {
    Alloc { node: usize, owner: usize },
    Static { node: usize, owner: usize, host: u8 },
    Release { node: usize, owner: usize },
    RemoveNode { node: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, 0..40usize).prop_map(|(node, owner)| Op::Alloc { node, owner }),
        1 => (0..4usize, 0..40usize, 1..31u8).prop_map(|(node, owner, host)| Op::Static { node, owner, host }),
        3 => (0..4usize, 0..40usize).prop_map(|(node, owner)| Op::Release { node, owner }),
        1 => (0..4usize).prop_map(|node| Op::RemoveNode { node }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Rounds of concurrent claims, borrows, static requests, releases and node removals on a
    /// 30-address network in 8 blocks of 4 (40 owners, so nodes run out of blocks and borrow): after every round each address is owned at most
    /// once, and the blocks hold exactly the leases acknowledged and not released.
    #[test]
    fn any_interleaving_keeps_every_address_owned_at_most_once(
        rounds in prop::collection::vec(prop::collection::vec(op(), 1..8), 1..10)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let fake = FakeApi::interleaving();
            let s = spec("10.9.0.0/27", None);
            let nodes: Vec<BlockAllocator> = (0..4).map(|n| allocator(&fake, &format!("node-{n}"), &s)).collect();
            // owner -> (node, addresses), the acknowledged state.
            let mut model: BTreeMap<String, (usize, Vec<IpAddr>)> = BTreeMap::new();
            for round in rounds {
                // One op per owner per round (their order within a round is undefined).
                let mut seen = BTreeSet::new();
                let round: Vec<Op> = round.into_iter().filter(|o| match o {
                    Op::Alloc { owner, .. } | Op::Static { owner, .. } | Op::Release { owner, .. } => seen.insert(*owner),
                    Op::RemoveNode { .. } => true,
                }).collect();
                let removals: Vec<usize> = round.iter().filter_map(|o| match o { Op::RemoveNode { node } => Some(*node), _ => None }).collect();
                let calls = round.iter().filter(|o| !matches!(o, Op::RemoveNode { .. })).map(|o| {
                    let nodes = &nodes;
                    let model = &model;
                    let o = o.clone();
                    async move {
                        match o {
                            Op::Alloc { node, owner } | Op::Static { node, owner, .. } => {
                                // An owner stays on the node that first allocated it (a pod lives on one node).
                                let node = model.get(&format!("o{owner}/eth1")).map_or(node, |(n, _)| *n);
                                let req: Vec<IpAddr> = match o { Op::Static { host, .. } => vec![format!("10.9.0.{host}").parse().unwrap()], _ => vec![] };
                                let name = format!("o{owner}/eth1");
                                (name.clone(), node, Some(nodes[node].allocate(&name, &req).await))
                            }
                            Op::Release { node, owner } => {
                                let name = format!("o{owner}/eth1");
                                let node = model.get(&name).map_or(node, |(n, _)| *n);
                                let r = nodes[node].release(&name).await.map(|_| Vec::<IpAddr>::new());
                                (name, node, r.err().map(Err))
                            }
                            Op::RemoveNode { .. } => unreachable!(),
                        }
                    }
                });
                let results = futures::future::join_all(calls).await;
                for (op, (name, node, r)) in round.iter().filter(|o| !matches!(o, Op::RemoveNode { .. })).zip(results) {
                    match (op, r) {
                        (Op::Release { .. }, None) => { model.remove(&name); }
                        (_, Some(Ok(addrs))) => {
                            if let Some((_, held)) = model.get(&name) {
                                assert!(addrs.iter().all(|a| held.contains(a)) || held.is_empty(), "{name}: {addrs:?} vs {held:?}");
                            }
                            model.insert(name, (node, addrs));
                        }
                        (_, Some(Err(ControllerError::Ipam { .. }))) => {} // exhausted, in use, held
                        (_, Some(Err(ControllerError::Contention(_)))) => {}
                        (_, Some(Err(e))) => panic!("{e}"),
                        (_, None) => unreachable!(),
                    }
                }
                for node in removals {
                    // The node leaves: its pods are gone (the collector drops their leases)
                    // and its empty blocks go with it.
                    let gone: BTreeSet<String> = model.iter().filter(|(_, (n, _))| *n == node).map(|(o, _)| o.clone()).collect();
                    let live_nodes: BTreeSet<String> = (0..4).filter(|n| *n != node).map(|n| format!("node-{n}")).collect();
                    let api: Api<NetworkAddressBlock> = Api::all(fake.client());
                    let listed = api.list(&Default::default()).await.unwrap().items;
                    collect(&api, listed, |o| gone.contains(o), &live_nodes).await.unwrap();
                    model.retain(|o, _| !gone.contains(o));
                    let left: Vec<NetworkAddressBlock> = fake.objects(BLOCKS).into_iter().map(|b| serde_json::from_value(b).unwrap()).collect();
                    // Its pods' leases are gone, so none of its blocks keeps its affinity:
                    // each was deleted (empty) or left unclaimed (other nodes borrow in it).
                    assert!(left.iter().all(|b| b.spec.node.as_deref() != Some(&format!("node-{node}"))), "a block kept the departed node's affinity");
                }
                let st = stored(&fake); // panics on an address held twice
                let mut expected = BTreeMap::new();
                for (o, (_, addrs)) in &model {
                    for a in addrs {
                        assert!(expected.insert(*a, o.clone()).is_none(), "{a} acknowledged twice");
                    }
                }
                assert_eq!(st, expected);
            }
        });
    }
}
