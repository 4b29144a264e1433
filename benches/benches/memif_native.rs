//! criterion benches of the native memif rings (no EAL), beside the `virtqueue` benches:
//! bursts of 32 frames of 64 and 1518 bytes, received from a slave's S2M ring into heap
//! packets (`dequeue`) and transmitted from packets into its M2S buffers (`enqueue`).
//!
//! The in-process slave (`memif::testing::SlaveMemory`, the pod's side) shares a sealed
//! memfd with the switch side's mapping, as over the real socket. Between bursts it posts
//! frames or takes them and re-posts its buffers; only the `dequeue`/`enqueue` call itself is
//! timed (`iter_custom`), so the figures are the switch side's copy and ring cost per packet,
//! comparable with `virtq_*` (one `Instant` pair per burst of 32: under 1 ns per packet).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use heddle_dataplane::memif::queue::{BurstStats, Direction, MemifQueue, RegionsBuilder};
use heddle_dataplane::memif::testing::SlaveMemory;
use heddle_dataplane::switch::io::{Burst, BURST};
use heddle_dataplane::switch::testing::{frame, mac, TestPacket};
use heddle_dataplane::vhost::testing::VecPool;

/// 256 descriptors of 2 KiB, as a DPDK `net_memif` client's defaults are close to.
fn rig() -> (SlaveMemory, MemifQueue, MemifQueue) {
    let m = SlaveMemory::new(1, 8, 2048);
    let mut b = RegionsBuilder::default();
    b.add(0, m.size, m.file.try_clone().expect("dup"))
        .expect("region");
    let mem = Arc::new(b.build());
    let rx = MemifQueue::new(
        mem.clone(),
        Direction::S2m,
        0,
        m.ring_offset(Direction::S2m, 0),
        m.log2,
    )
    .expect("rx ring");
    let tx = MemifQueue::new(
        mem,
        Direction::M2s,
        0,
        m.ring_offset(Direction::M2s, 0),
        m.log2,
    )
    .expect("tx ring");
    (m, rx, tx)
}

fn benches(c: &mut Criterion) {
    for len in [64usize, 1518] {
        let f = frame(mac(1), mac(2), None, len);
        let mut g = c.benchmark_group("memif_native");
        g.throughput(Throughput::Elements(BURST as u64));
        g.bench_function(format!("dequeue/{len}"), |b| {
            let (mut slave, mut rx, _) = rig();
            let mut pool = VecPool::new(2048, 4 * BURST);
            let mut out = Burst::new();
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    for _ in 0..BURST {
                        assert!(slave.send(0, &f));
                    }
                    let mut st = BurstStats::default();
                    let t = Instant::now();
                    let n = rx.dequeue(&mut pool, &mut out, &mut st);
                    total += t.elapsed();
                    assert_eq!(n, BURST);
                    pool.give_back(out.drain());
                }
                total
            });
        });
        g.bench_function(format!("enqueue/{len}"), |b| {
            let (mut slave, _, mut tx) = rig();
            let pkts: Vec<TestPacket> = (0..BURST).map(|_| TestPacket::new(&f)).collect();
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut st = BurstStats::default();
                    let t = Instant::now();
                    let n = tx.enqueue(&pkts, &mut st);
                    total += t.elapsed();
                    assert_eq!(n, BURST);
                    assert_eq!(slave.recv(0).len(), BURST);
                }
                total
            });
        });
        g.finish();
    }
}

criterion_group!(memif_native, benches);
criterion_main!(memif_native);
