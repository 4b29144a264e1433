//! criterion benches of the native vhost-user rings (no EAL), split and packed side by side:
//! bursts of 32 frames of 64 and 1518 bytes, with and without mergeable RX buffers, dequeued
//! from guest TX chains into heap packets and enqueued from packets into guest RX buffers.
//! The packed groups (`virtq_packed_*`) run the same cases under the same names as the split
//! ones (`virtq_*`), so each packed figure has its split twin.
//!
//! The in-process drivers (`vhost::testing::Driver`, `vhost::packed_testing::PackedDriver`)
//! play the guest. Between bursts it
//! recycles the used chains (re-posts them unchanged) and dequeued packets go back to the
//! heap pool; only the `dequeue`/`enqueue` call itself is timed (`iter_custom`), so the
//! figures are the device side's copy and ring cost per packet (one `Instant` pair per
//! burst of 32 is included: under 1 ns per packet).
//!
//! `HEDDLE_BENCH_INFLIGHT=1` runs every case with in-flight tracking on (a region attached to
//! the queue as after `SET_INFLIGHT_FD`), under the same names: alternate runs with it unset
//! and set to compare (see `docs/vhost-user.md`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use heddle_dataplane::switch::io::{Burst, BURST};
use heddle_dataplane::switch::testing::{frame, mac, TestPacket};
use heddle_dataplane::vhost::inflight::{attach, GuestRing, InflightRegion, Tracker};
use heddle_dataplane::vhost::memory::GuestMemory;
use heddle_dataplane::vhost::packed::PackedQueue;
use heddle_dataplane::vhost::packed_testing::PackedDriver;
use heddle_dataplane::vhost::testing::{Driver, TxLayout, VecPacket, VecPool};
use heddle_dataplane::vhost::virtq::{feature, QueueStats, SplitQueue};

const QUEUE: u16 = 256;

fn features(mrg: bool) -> u64 {
    feature::VERSION_1 | if mrg { feature::MRG_RXBUF } else { 0 }
}

/// A ring layout as the benches drive it: its in-process driver (`Self`) and device-side
/// queue (`Queue`). Every method forwards to the layout's own, inlined, so one bench body
/// measures both layouts with nothing added to the timed call.
trait Layout: Sized {
    type Queue;
    /// The criterion group prefix (`virtq` for split, `virtq_packed` for packed).
    const GROUP: &'static str;
    /// A driver with 2 KiB slots at the layout's initial ring position.
    fn driver(features: u64) -> Self;
    /// The device side, with in-flight tracking when `HEDDLE_BENCH_INFLIGHT=1`.
    fn device(&self, features: u64) -> Self::Queue;
    fn mem(&self) -> &GuestMemory;
    fn post_tx(&mut self, frame: &[u8], layout: TxLayout);
    fn post_rx(&mut self, len: u32);
    fn recycle(&mut self);
    fn dequeue(
        q: &mut Self::Queue,
        mem: &GuestMemory,
        pool: &mut VecPool,
        out: &mut Burst<VecPacket>,
        stats: &mut QueueStats,
    ) -> usize;
    fn enqueue(
        q: &mut Self::Queue,
        mem: &GuestMemory,
        pkts: &[TestPacket],
        stats: &mut QueueStats,
    ) -> usize;
}

/// Implements [`Layout`] for a driver type and its queue type.
macro_rules! layout {
    ($driver:ty, $queue:ty, $group:literal, $base:expr, $tracker:ident, $layout_bit:expr) => {
        impl Layout for $driver {
            type Queue = $queue;
            const GROUP: &'static str = $group;
            fn driver(features: u64) -> Self {
                <$driver>::with(QUEUE, features, $base, 2048)
            }
            fn device(&self, features: u64) -> $queue {
                let mut q = self.queue();
                q.suppress_notifications();
                if std::env::var("HEDDLE_BENCH_INFLIGHT").is_ok_and(|v| v == "1") {
                    let (region, _file) = InflightRegion::allocate(1, QUEUE, 1).expect("region");
                    let view = GuestRing {
                        mem: &self.mem,
                        addrs: self.addrs(),
                    };
                    let f = features | $layout_bit;
                    match attach(&Arc::new(region), 0, QUEUE, f, $base, &view) {
                        Ok(Some((Tracker::$tracker(t), _))) => q.set_inflight(t),
                        _ => panic!("in-flight region not attached"),
                    }
                }
                q
            }
            fn mem(&self) -> &GuestMemory {
                &self.mem
            }
            fn post_tx(&mut self, frame: &[u8], layout: TxLayout) {
                <$driver>::post_tx(self, frame, layout).expect("post");
            }
            fn post_rx(&mut self, len: u32) {
                <$driver>::post_rx(self, len, 1).expect("post");
            }
            #[inline(always)]
            fn recycle(&mut self) {
                <$driver>::recycle(self)
            }
            #[inline(always)]
            fn dequeue(
                q: &mut $queue,
                mem: &GuestMemory,
                pool: &mut VecPool,
                out: &mut Burst<VecPacket>,
                stats: &mut QueueStats,
            ) -> usize {
                q.dequeue(mem, pool, out, stats)
            }
            #[inline(always)]
            fn enqueue(
                q: &mut $queue,
                mem: &GuestMemory,
                pkts: &[TestPacket],
                stats: &mut QueueStats,
            ) -> usize {
                q.enqueue(mem, pkts, stats)
            }
        }
    };
}

layout!(Driver, SplitQueue, "virtq", 0, Split, 0);
layout!(
    PackedDriver,
    PackedQueue,
    "virtq_packed",
    0x8000,
    Packed,
    feature::RING_PACKED
);

fn dequeue<L: Layout>(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("{}_dequeue", L::GROUP));
    g.throughput(Throughput::Elements(BURST as u64));
    for len in [64usize, 1518] {
        for mrg in [false, true] {
            for (layout, lname) in [
                (TxLayout::Joined, "joined"),
                (TxLayout::SplitHeader, "split"),
            ] {
                if mrg && layout == TxLayout::SplitHeader {
                    continue; // header handling is the same as without MRG_RXBUF
                }
                let name = format!("{len}B/{}/{lname}", if mrg { "mrg" } else { "nomrg" });
                g.bench_function(name, |b| {
                    let mut d = L::driver(features(mrg));
                    let mut q = d.device(features(mrg));
                    let f = frame(mac(1), mac(2), None, len);
                    for _ in 0..4 * BURST {
                        d.post_tx(&f, layout);
                    }
                    let mut pool = VecPool::new(2048, 4 * BURST);
                    let mut burst: Burst<VecPacket> = Burst::new();
                    let mut stats = QueueStats::default();
                    b.iter_custom(|iters| {
                        let mut t = Duration::ZERO;
                        for _ in 0..iters {
                            let s = Instant::now();
                            let n = L::dequeue(&mut q, d.mem(), &mut pool, &mut burst, &mut stats);
                            t += s.elapsed();
                            assert_eq!(n, BURST);
                            pool.give_back(burst.drain());
                            d.recycle();
                        }
                        t
                    });
                });
            }
        }
    }
    g.finish();
}

fn enqueue<L: Layout>(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("{}_enqueue", L::GROUP));
    g.throughput(Throughput::Elements(BURST as u64));
    for len in [64usize, 1518] {
        for mrg in [false, true] {
            let name = format!("{len}B/{}", if mrg { "mrg" } else { "nomrg" });
            g.bench_function(name, |b| {
                let mut d = L::driver(features(mrg));
                let mut q = d.device(features(mrg));
                for _ in 0..4 * BURST {
                    d.post_rx(2048);
                }
                let pkts: Vec<TestPacket> = (0..BURST)
                    .map(|i| TestPacket::new(&frame(mac(1), mac(2 + i as u32), None, len)))
                    .collect();
                let mut stats = QueueStats::default();
                b.iter_custom(|iters| {
                    let mut t = Duration::ZERO;
                    for _ in 0..iters {
                        let s = Instant::now();
                        let n = L::enqueue(&mut q, d.mem(), &pkts, &mut stats);
                        t += s.elapsed();
                        assert_eq!(n, BURST);
                        d.recycle();
                    }
                    t
                });
            });
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    dequeue::<Driver>,
    enqueue::<Driver>,
    dequeue::<PackedDriver>,
    enqueue::<PackedDriver>
);
criterion_main!(benches);
