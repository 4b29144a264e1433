//! `heddle-manager-cluster-bench`: cluster IPAM against the in-memory API server (run with
//! `--release`). Every allocation is checked against every stored lease afterwards (no
//! address twice) and against etcd's object limit.
//!
//! ```text
//! heddle-manager-cluster-bench rate [--nodes 100] [--per-node 50] [--latency-us 1000]
//! heddle-manager-cluster-bench fill [--leases 1000000] [--per-node 250] [--parallel 64]
//! ```
//!
//! * `rate`: `nodes` concurrent nodes allocate `per-node` addresses each on one /16
//!   network, every request answered after `latency-us` (a round trip to a real API server);
//!   once with today's single `NetworkAllocation` object, once with address blocks.
//! * `fill`: a 2^23-address network (10.0.0.0/9) filled to `leases` live leases by
//!   `leases / per-node` nodes, `parallel` at a time, no latency: objects written, the
//!   largest object, allocations per second.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use heddle_manager::controller::blocks::BlockAllocator;
use heddle_manager::controller::{ipam, ControllerError};
use heddle_manager::crd::{
    AllocationMode, NetworkAddressBlock, NetworkAllocation, NetworkAllocationSpec, NetworkKind,
    NetworkSpec, Subnet,
};
use heddle_manager::fake_api::{FakeApi, OBJECT_LIMIT};
use kube::Api;

fn spec(cidr: &str) -> NetworkSpec {
    NetworkSpec {
        kind: NetworkKind::VhostUser,
        provider: "uplink0".into(),
        vlan: None,
        ipv4: Some(Subnet {
            cidr: cidr.into(),
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

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, got {v:?}"))
        })
        .unwrap_or(default)
}

/// Every stored lease; panics on an address held twice.
fn check_blocks(fake: &FakeApi) -> usize {
    let mut seen: HashMap<IpAddr, String> = HashMap::new();
    for b in fake.objects("heddle.dev/v1alpha1/networkaddressblocks") {
        let b: NetworkAddressBlock = serde_json::from_value(b).expect("a block");
        for (o, addrs) in b.spec.leases {
            for a in addrs {
                let a: IpAddr = a.parse().expect("an address");
                if let Some(other) = seen.insert(a, o.clone()) {
                    panic!("{a} held by {other} and {o}");
                }
            }
        }
    }
    seen.len()
}

/// One address for `owner`, retried while other nodes win the race for the same object.
async fn allocate_retrying(alloc: &BlockAllocator, owner: &str) {
    loop {
        match alloc.allocate(owner, &[]).await {
            Ok(_) => return,
            Err(ControllerError::Contention(_)) => continue,
            Err(e) => panic!("{e}"),
        }
    }
}

async fn rate(nodes: u64, per_node: u64, latency: Duration) {
    let s = spec("10.0.0.0/16");
    // Today's design: one NetworkAllocation object per network.
    let fake = FakeApi::with_latency(latency);
    let api: Api<NetworkAllocation> = Api::namespaced(fake.client(), "ns1");
    let mut a = NetworkAllocation::new(
        "network.n3",
        NetworkAllocationSpec {
            network: "ns1/n3".into(),
            leases: Default::default(),
        },
    );
    a.metadata.namespace = Some("ns1".into());
    api.create(&Default::default(), &a).await.expect("create");
    let t = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..nodes {
        let api = api.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_node {
                let owner = format!("node{n}-pod{i}/eth1");
                loop {
                    match ipam::allocate(&api, "network.n3", &s, &owner, &[]).await {
                        Ok(_) => break,
                        Err(ControllerError::Contention(_)) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("node");
    }
    let secs = t.elapsed().as_secs_f64();
    let st = fake.stats();
    let stored = api.get("network.n3").await.expect("get").spec.leases.len();
    assert_eq!(stored as u64, nodes * per_node);
    println!(
        "single object: {} allocations by {nodes} nodes in {secs:.2} s = {:.0}/s; {} requests, {} conflicts, object {} bytes",
        nodes * per_node,
        (nodes * per_node) as f64 / secs,
        st.requests,
        st.conflicts,
        st.largest_object
    );

    // Address blocks with node affinity.
    let fake = FakeApi::with_latency(latency);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..nodes {
        let alloc = BlockAllocator::new(
            Api::namespaced(fake.client(), "ns1"),
            "network.n3",
            "ns1/n3",
            &s,
            &format!("node-{n}"),
            None,
        )
        .expect("allocator");
        tasks.push(tokio::spawn(async move {
            for i in 0..per_node {
                let owner = format!("node{n}-pod{i}/eth1");
                allocate_retrying(&alloc, &owner).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("node");
    }
    let secs = t.elapsed().as_secs_f64();
    let st = fake.stats();
    assert_eq!(check_blocks(&fake) as u64, nodes * per_node);
    println!(
        "address blocks: {} allocations by {nodes} nodes in {secs:.2} s = {:.0}/s; {} requests, {} conflicts, {} blocks, largest {} bytes",
        nodes * per_node,
        (nodes * per_node) as f64 / secs,
        st.requests,
        st.conflicts,
        fake.objects("heddle.dev/v1alpha1/networkaddressblocks").len(),
        st.largest_object
    );
}

async fn fill(leases: u64, per_node: u64, parallel: u64) {
    let s = spec("10.0.0.0/9");
    let fake = FakeApi::new();
    let nodes = leases.div_ceil(per_node);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..parallel {
        let (fake, s, next) = (fake.clone(), s.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= nodes {
                    break;
                }
                let alloc = BlockAllocator::new(
                    Api::namespaced(fake.client(), "ns1"),
                    "network.n3",
                    "ns1/n3",
                    &s,
                    &format!("node-{n}"),
                    None,
                )
                .expect("allocator");
                let count = per_node.min(leases - n * per_node);
                for i in 0..count {
                    let owner = format!("{n:08x}-0000-4000-8000-{i:012x}/eth1");
                    allocate_retrying(&alloc, &owner).await;
                }
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    let secs = t.elapsed().as_secs_f64();
    let st = fake.stats();
    let held = check_blocks(&fake);
    assert_eq!(held as u64, leases);
    assert!(st.largest_object < OBJECT_LIMIT && st.too_large == 0);
    println!(
        "fill 10.0.0.0/9 (2^23 addresses) to {leases} leases by {nodes} nodes: {secs:.1} s = {:.0} allocations/s; {} blocks, {} writes, {} conflicts, largest object {} bytes ({:.1}% of etcd's limit)",
        leases as f64 / secs,
        fake.objects("heddle.dev/v1alpha1/networkaddressblocks").len(),
        st.writes,
        st.conflicts,
        st.largest_object,
        st.largest_object as f64 * 100.0 / OBJECT_LIMIT as f64
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("rate") => {
            rate(
                arg(&args, "--nodes", 100),
                arg(&args, "--per-node", 50),
                Duration::from_micros(arg(&args, "--latency-us", 1000)),
            )
            .await
        }
        Some("fill") => {
            fill(
                arg(&args, "--leases", 1_000_000),
                arg(&args, "--per-node", 250),
                arg(&args, "--parallel", 64),
            )
            .await
        }
        _ => {
            eprintln!("usage: heddle-manager-cluster-bench rate [--nodes N] [--per-node N] [--latency-us N] | fill [--leases N] [--per-node N] [--parallel N]");
            std::process::exit(2);
        }
    }
}
