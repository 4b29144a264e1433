//! `heddle-manager-cluster-bench`: cluster IPAM against the in-memory API server
//! ([`heddle_manager::fake_api`], which enforces `resourceVersion` preconditions and etcd's
//! 1.5 MiB object limit). Run with `--release`.
//!
//! ```text
//! heddle-manager-cluster-bench rate [--nodes 100] [--per-node 30] [--latency-us 1000] [--rounds 3]
//! heddle-manager-cluster-bench fill [--leases 1000000] [--per-node 250] [--parallel 64]
//!                                   [--report-every 1000000] [--min-available-gib 6]
//! ```
//!
//! * `rate`: `nodes` concurrent nodes on one /16 network; each allocates `per-node` owners
//!   and releases every third right after taking it; every request is answered after
//!   `latency-us` (a round trip to a real API server). Each round runs today's single
//!   `NetworkAllocation` object and address blocks back to back (alternating which goes
//!   first) and prints the ratio of their cluster-wide allocation rates; the load average is
//!   printed with each round. After each run every acknowledged live lease is checked against
//!   every stored lease (equal sets: none lost, none handed out twice) and no write may have
//!   been refused for size.
//! * `fill`: a 2^23-address network (10.0.0.0/9) filled to `leases` live leases by
//!   `leases / per-node` nodes, `parallel` at a time, no latency: objects written, the
//!   largest object, allocations per second, a progress line every `report-every` leases.
//!   The fill stops early (and says how far it got) when the machine's available memory
//!   falls under `min-available-gib`. At the end every stored lease is checked (no address
//!   twice, exactly the leases acknowledged).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use heddle_manager::controller::blocks::BlockAllocator;
use heddle_manager::controller::{ipam, ControllerError};
use heddle_manager::crd::{
    AllocationMode, NetworkAddressBlock, NetworkAllocation, NetworkAllocationSpec, NetworkKind,
    NetworkSpec, Subnet,
};
use heddle_manager::fake_api::{FakeApi, Stats, OBJECT_LIMIT};
use kube::Api;

const BLOCKS: &str = "heddle.dev/v1alpha1/networkaddressblocks";

#[derive(Parser)]
#[command(about = "Cluster IPAM against the in-memory API server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Concurrent nodes allocating and releasing: single object vs address blocks, paired.
    Rate {
        #[arg(long, default_value_t = 100)]
        nodes: u64,
        #[arg(long, default_value_t = 30)]
        per_node: u64,
        #[arg(long, default_value_t = 1000)]
        latency_us: u64,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// Fill a 2^23-address network with address blocks.
    Fill {
        #[arg(long, default_value_t = 1_000_000)]
        leases: u64,
        #[arg(long, default_value_t = 250)]
        per_node: u64,
        #[arg(long, default_value_t = 64)]
        parallel: u64,
        #[arg(long, default_value_t = 1_000_000)]
        report_every: u64,
        #[arg(long, default_value_t = 6.0)]
        min_available_gib: f64,
    },
}

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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn meminfo_gib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1048576.0)
}

fn rss_gib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1048576.0)
}

/// Every lease stored in the blocks (address -> owner); panics on an address held twice.
fn stored_in_blocks(fake: &FakeApi) -> HashMap<IpAddr, String> {
    let mut seen: HashMap<IpAddr, String> = HashMap::new();
    fake.visit(BLOCKS, |b| {
        let b: NetworkAddressBlock = serde_json::from_value(b.clone()).expect("a block");
        for (o, addrs) in b.spec.leases {
            for a in addrs {
                let a: IpAddr = a.parse().expect("an address");
                if let Some(other) = seen.insert(a, o.clone()) {
                    panic!("{a} held by {other} and {o}");
                }
            }
        }
    });
    seen
}

/// The acknowledged live leases as address -> owner; panics on an address acknowledged twice.
fn acked_map(live: Vec<Vec<(String, Vec<IpAddr>)>>) -> HashMap<IpAddr, String> {
    let mut acked = HashMap::new();
    for (owner, addrs) in live.into_iter().flatten() {
        for a in addrs {
            if let Some(other) = acked.insert(a, owner.clone()) {
                panic!("{a} handed out to {other} and {owner}");
            }
        }
    }
    acked
}

/// One allocation for `owner`, retried while other nodes win the race for the same object.
async fn allocate_retrying(alloc: &BlockAllocator, owner: &str) -> Vec<IpAddr> {
    loop {
        match alloc.allocate(owner, &[]).await {
            Ok(a) => return a,
            Err(ControllerError::Contention(_)) => continue,
            Err(e) => panic!("{e}"),
        }
    }
}

/// What one run of `rate` measured.
struct Run {
    allocations: u64,
    releases: u64,
    secs: f64,
    stats: Stats,
    objects: usize,
}

impl Run {
    fn per_sec(&self) -> f64 {
        self.allocations as f64 / self.secs
    }

    fn line(&self, what: &str, nodes: u64) -> String {
        format!(
            "{what}: {} allocations + {} releases by {nodes} nodes in {:.2} s = {:.0} allocations/s; {} requests, {} conflicts, {} objects, largest {} bytes, {} refused for size",
            self.allocations,
            self.releases,
            self.secs,
            self.per_sec(),
            self.stats.requests,
            self.stats.conflicts,
            self.objects,
            self.stats.largest_object,
            self.stats.too_large
        )
    }
}

/// Each node allocates `per_node` owners and releases every third right after; returns the
/// live leases each node was acknowledged.
async fn churn<F, Fut, R, RFut>(
    nodes: u64,
    per_node: u64,
    alloc: F,
    release: R,
) -> Vec<Vec<(String, Vec<IpAddr>)>>
where
    F: Fn(u64, String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Vec<IpAddr>> + Send,
    R: Fn(u64, String) -> RFut + Clone + Send + 'static,
    RFut: std::future::Future<Output = Vec<IpAddr>> + Send,
{
    let mut tasks = Vec::new();
    for n in 0..nodes {
        let (alloc, release) = (alloc.clone(), release.clone());
        tasks.push(tokio::spawn(async move {
            let mut live = Vec::new();
            for i in 0..per_node {
                let owner = format!("node{n}-pod{i}/eth1");
                let got = alloc(n, owner.clone()).await;
                if i % 3 == 2 {
                    let freed = release(n, owner.clone()).await;
                    assert_eq!(freed, got, "{owner}: released what it was given");
                } else {
                    live.push((owner, got));
                }
            }
            live
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("node"));
    }
    out
}

async fn rate_single(nodes: u64, per_node: u64, latency: Duration) -> Run {
    let s = Arc::new(spec("10.0.0.0/16"));
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
    let before = fake.stats();
    let t = Instant::now();
    let (api1, api2, s2) = (api.clone(), api.clone(), s.clone());
    let live = churn(
        nodes,
        per_node,
        move |_, owner| {
            let (api, s) = (api1.clone(), s.clone());
            async move {
                loop {
                    match ipam::allocate(&api, "network.n3", &s, &owner, &[]).await {
                        Ok(a) => return a,
                        Err(ControllerError::Contention(_)) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        },
        move |_, owner| {
            let (api, s) = (api2.clone(), s2.clone());
            async move {
                loop {
                    match ipam::release(&api, "network.n3", &s, &owner).await {
                        Ok(a) => return a,
                        Err(ControllerError::Contention(_)) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        },
    )
    .await;
    let secs = t.elapsed().as_secs_f64();
    let mut stats = fake.stats();
    stats.requests -= before.requests;
    let acked = acked_map(live);
    let mut stored = HashMap::new();
    for (o, addrs) in api.get("network.n3").await.expect("get").spec.leases {
        for a in addrs {
            assert!(
                stored
                    .insert(a.parse::<IpAddr>().expect("address"), o.clone())
                    .is_none(),
                "{a} stored twice"
            );
        }
    }
    assert_eq!(stored, acked, "stored leases == acknowledged live leases");
    assert_eq!(stats.too_large, 0, "a write was refused for size");
    Run {
        allocations: nodes * per_node,
        releases: nodes * (per_node / 3),
        secs,
        stats,
        objects: 1,
    }
}

async fn rate_blocks(nodes: u64, per_node: u64, latency: Duration) -> Run {
    let s = spec("10.0.0.0/16");
    let fake = FakeApi::with_latency(latency);
    let allocators: Arc<Vec<BlockAllocator>> = Arc::new(
        (0..nodes)
            .map(|n| {
                BlockAllocator::new(
                    Api::namespaced(fake.client(), "ns1"),
                    "network.n3",
                    "ns1/n3",
                    &s,
                    &format!("node-{n}"),
                    None,
                )
                .expect("allocator")
            })
            .collect(),
    );
    let t = Instant::now();
    let a2 = allocators.clone();
    let live = churn(
        nodes,
        per_node,
        move |n, owner| {
            let a = allocators.clone();
            async move { allocate_retrying(&a[n as usize], &owner).await }
        },
        move |n, owner| {
            let a = a2.clone();
            async move {
                loop {
                    match a[n as usize].release(&owner).await {
                        Ok(f) => return f,
                        Err(ControllerError::Contention(_)) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        },
    )
    .await;
    let secs = t.elapsed().as_secs_f64();
    let stats = fake.stats();
    let acked = acked_map(live);
    assert_eq!(
        stored_in_blocks(&fake),
        acked,
        "stored leases == acknowledged live leases"
    );
    assert_eq!(stats.too_large, 0, "a write was refused for size");
    Run {
        allocations: nodes * per_node,
        releases: nodes * (per_node / 3),
        secs,
        stats,
        objects: fake.objects(BLOCKS).len(),
    }
}

async fn rate(nodes: u64, per_node: u64, latency: Duration, rounds: u32) {
    println!(
        "rate: {nodes} nodes x {per_node} allocations (every third released at once), one /16 network, every request answered after {} us",
        latency.as_micros()
    );
    let mut ratios = Vec::new();
    for r in 0..rounds {
        let load = loadavg();
        let (single, blocks) = if r % 2 == 0 {
            let s = rate_single(nodes, per_node, latency).await;
            (s, rate_blocks(nodes, per_node, latency).await)
        } else {
            let b = rate_blocks(nodes, per_node, latency).await;
            (rate_single(nodes, per_node, latency).await, b)
        };
        let ratio = blocks.per_sec() / single.per_sec();
        println!(
            "round {r} (load average {load} before, {} after):",
            loadavg()
        );
        println!("  {}", single.line("single object", nodes));
        println!("  {}", blocks.line("address blocks", nodes));
        println!("  blocks / single object: {ratio:.1}x");
        ratios.push(ratio);
    }
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(0.0, f64::max);
    let geo = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
    println!(
        "blocks / single object over {rounds} paired rounds: geometric mean {geo:.1}x, range {min:.1}x-{max:.1}x"
    );
}

async fn fill(
    leases: u64,
    per_node: u64,
    parallel: u64,
    report_every: u64,
    min_available_gib: f64,
) {
    let s = spec("10.0.0.0/9");
    let fake = FakeApi::new();
    let nodes = leases.div_ceil(per_node);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    println!(
        "fill 10.0.0.0/9 (2^23 addresses) to {leases} leases by {nodes} nodes ({per_node} each, {parallel} at a time); load average {}; available memory {:.1} GiB",
        loadavg(),
        meminfo_gib("MemAvailable:")
    );
    let t = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..parallel {
        let (fake, s, next, done, stop) = (
            fake.clone(),
            s.clone(),
            next.clone(),
            done.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut acked: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
            'nodes: loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
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
                    if stop.load(Ordering::Relaxed) {
                        break 'nodes;
                    }
                    let owner = format!("{n:08x}-0000-4000-8000-{i:012x}/eth1");
                    let got = allocate_retrying(&alloc, &owner).await;
                    acked.insert(owner, got);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            acked
        }));
    }
    // Progress and the memory guard.
    let mut next_report = report_every;
    let mut last = (Instant::now(), 0u64);
    let mut stopped = None;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let d = done.load(Ordering::Relaxed);
        let avail = meminfo_gib("MemAvailable:");
        if d >= next_report || d >= leases {
            let st = fake.stats();
            let secs = t.elapsed().as_secs_f64();
            println!(
                "  {d} leases at {secs:.0} s: {:.0} allocations/s overall, {:.0}/s since the last line; {} blocks, {} writes, {} conflicts, largest object {} bytes; RSS {:.2} GiB, available {avail:.1} GiB, load average {}",
                d as f64 / secs,
                (d - last.1) as f64 / last.0.elapsed().as_secs_f64(),
                fake.count(BLOCKS),
                st.writes,
                st.conflicts,
                st.largest_object,
                rss_gib(),
                loadavg()
            );
            last = (Instant::now(), d);
            while next_report <= d {
                next_report += report_every;
            }
        }
        if d >= leases {
            break;
        }
        if avail < min_available_gib {
            stop.store(true, Ordering::Relaxed);
            stopped = Some(avail);
            break;
        }
    }
    let mut acked = Vec::new();
    for w in workers {
        acked.push(w.await.expect("worker").into_iter().collect::<Vec<_>>());
    }
    let secs = t.elapsed().as_secs_f64();
    let st = fake.stats();
    let got = done.load(Ordering::Relaxed);
    if let Some(avail) = stopped {
        println!(
            "STOPPED at {got} leases after {secs:.0} s: available memory {avail:.1} GiB fell under {min_available_gib} GiB"
        );
    }
    let check = Instant::now();
    let stored = stored_in_blocks(&fake);
    let acked = acked_map(acked);
    assert_eq!(stored.len() as u64, got);
    assert_eq!(stored, acked, "stored leases == acknowledged leases");
    assert!(st.largest_object < OBJECT_LIMIT && st.too_large == 0);
    println!(
        "fill 10.0.0.0/9 (2^23 addresses) to {got} leases: {secs:.1} s = {:.0} allocations/s; {} blocks, {} writes, {} conflicts, largest object {} bytes ({:.2}% of etcd's limit), none refused; every stored lease checked ({:.0} s); RSS {:.2} GiB; load average {}",
        got as f64 / secs,
        fake.count(BLOCKS),
        st.writes,
        st.conflicts,
        st.largest_object,
        st.largest_object as f64 * 100.0 / OBJECT_LIMIT as f64,
        check.elapsed().as_secs_f64(),
        rss_gib(),
        loadavg()
    );
}

#[tokio::main]
async fn main() {
    match Cli::parse().cmd {
        Cmd::Rate {
            nodes,
            per_node,
            latency_us,
            rounds,
        } => rate(nodes, per_node, Duration::from_micros(latency_us), rounds).await,
        Cmd::Fill {
            leases,
            per_node,
            parallel,
            report_every,
            min_available_gib,
        } => fill(leases, per_node, parallel, report_every, min_available_gib).await,
    }
}
