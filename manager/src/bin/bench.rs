//! `heddle-manager-bench`: timed allocator figures (run with `--release`).
//!
//! * an 8M-address IPv4 network (10.0.0.0/9): allocate every address, memory of the pool;
//! * the same network fragmented (every other address of the first million freed), refilled;
//! * leases by owner (the idempotent per-owner layer) for 1M owners;
//! * 100 threads allocating concurrently over one shared allocator (no duplicate checked);
//! * 100 threads over the embedded store, each allocation fsynced.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use heddle_manager::crd::{AllocationMode, NetworkSpec, Subnet};
use heddle_manager::embedded::{EmbeddedConfig, EmbeddedStore};
use heddle_manager::ipam::{AddressPool, NetworkIpam, PoolConfig};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn subnet(cidr: &str) -> Subnet {
    Subnet {
        cidr: cidr.into(),
        ranges: vec![],
        gateway: None,
        exclude: vec![],
    }
}

fn rate(n: u64, secs: f64) -> String {
    format!("{:.1} M/s", n as f64 / secs / 1e6)
}

fn main() {
    let big = PoolConfig::parse("spec.ipv4", &subnet("10.0.0.0/9"), true).expect("valid subnet");

    // 1. Fill an 8M network.
    let rss0 = rss_kib();
    let mut pool = AddressPool::new(big.clone());
    let total = pool.total();
    let t = Instant::now();
    for _ in 0..total {
        pool.allocate().expect("free address");
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "8M network: {total} addresses allocated in {secs:.3} s = {}; pool heap {:.2} MiB; RSS +{:.2} MiB",
        rate(total, secs),
        pool.heap_bytes() as f64 / 1048576.0,
        (rss_kib().saturating_sub(rss0)) as f64 / 1024.0
    );

    // 2. Fragmented refill: free every other address of the first 1M, allocate them again.
    let freed: Vec<_> = pool
        .allocated_addresses()
        .take(1 << 20)
        .step_by(2)
        .collect();
    for a in &freed {
        pool.release(*a).expect("allocated");
    }
    let t = Instant::now();
    for _ in 0..freed.len() {
        pool.allocate().expect("free address");
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "8M network, fragmented: {} releases refilled in {secs:.3} s = {}",
        freed.len(),
        rate(freed.len() as u64, secs)
    );
    drop(pool);

    // 3. With leases by owner.
    let owners = 1_000_000u64;
    let rss0 = rss_kib();
    let mut ipam = NetworkIpam::new(AllocationMode::Dynamic, Some(big.clone()), None);
    let t = Instant::now();
    for i in 0..owners {
        ipam.allocate(&format!("c{i:012}/eth1"), &[])
            .expect("free address");
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "8M network with leases: {owners} owners in {secs:.3} s = {}; RSS +{:.1} MiB (pool {:.2} MiB, rest is the owner index)",
        rate(owners, secs),
        (rss_kib().saturating_sub(rss0)) as f64 / 1024.0,
        ipam.pool_heap_bytes() as f64 / 1048576.0
    );
    drop(ipam);

    // 4. 100 concurrent allocators over one shared allocator.
    let threads = 100u64;
    let per_thread = 10_000u64;
    let shared = Arc::new(Mutex::new(NetworkIpam::new(
        AllocationMode::Dynamic,
        Some(big),
        None,
    )));
    let t = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|th| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let owner = format!("t{th}-c{i}/eth1");
                    shared
                        .lock()
                        .expect("not poisoned")
                        .allocate(&owner, &[])
                        .expect("free address");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let secs = t.elapsed().as_secs_f64();
    let ipam = shared.lock().expect("not poisoned");
    ipam.check_invariants().expect("no duplicate, no leak");
    println!(
        "100 concurrent allocators (shared, in memory): {} allocations in {secs:.3} s = {}; no duplicates",
        threads * per_thread,
        rate(threads * per_thread, secs)
    );
    drop(ipam);

    // 5. 100 concurrent allocators over the embedded store (each allocation fsynced).
    let dir = std::env::temp_dir().join(format!("heddle-bench-{}", std::process::id()));
    let mut cfg = EmbeddedConfig::default();
    cfg.providers.insert(
        "uplink0".into(),
        heddle_manager::crd::ProviderNetworkSpec {
            interface: Some("eth1".into()),
            vf_pool: None,
            node_selector: Default::default(),
            vlan_pool: vec![heddle_manager::crd::VlanRange {
                start: 100,
                end: 199,
            }],
            mtu: None,
        },
    );
    cfg.networks.insert(
        "big".into(),
        NetworkSpec {
            kind: heddle_manager::crd::NetworkKind::Memif,
            provider: "uplink0".into(),
            vlan: None,
            ipv4: Some(subnet("10.0.0.0/9")),
            ipv6: None,
            allocation: AllocationMode::Dynamic,
            vhost_user: None,
            memif: None,
            resource_name: None,
        },
    );
    let store = Arc::new(Mutex::new(
        EmbeddedStore::open(&dir, cfg).expect("store opens"),
    ));
    let per_thread = 20u64;
    let t = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|th| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    store
                        .lock()
                        .expect("not poisoned")
                        .allocate("big", &format!("t{th}-c{i}/eth1"), &[])
                        .expect("allocates");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "100 concurrent allocators (embedded store, fsync each): {} allocations in {secs:.3} s = {:.0}/s",
        threads * per_thread,
        (threads * per_thread) as f64 / secs
    );
    let _ = std::fs::remove_dir_all(&dir);
}
