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

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use heddle_dataplane::switch::io::{Burst, BURST};
use heddle_dataplane::switch::testing::{frame, mac, TestPacket};
use heddle_dataplane::vhost::packed_testing::PackedDriver;
use heddle_dataplane::vhost::testing::{Driver, TxLayout, VecPacket, VecPool};
use heddle_dataplane::vhost::virtq::{feature, QueueStats};

const QUEUE: u16 = 256;

fn features(mrg: bool) -> u64 {
    feature::VERSION_1 | if mrg { feature::MRG_RXBUF } else { 0 }
}

fn dequeue(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtq_dequeue");
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
                    let mut d = Driver::with(QUEUE, features(mrg), 0, 2048);
                    let mut q = d.queue();
                    q.suppress_notifications();
                    let f = frame(mac(1), mac(2), None, len);
                    for _ in 0..4 * BURST {
                        d.post_tx(&f, layout).expect("post");
                    }
                    let mut pool = VecPool::new(2048, 4 * BURST);
                    let mut burst: Burst<VecPacket> = Burst::new();
                    let mut stats = QueueStats::default();
                    b.iter_custom(|iters| {
                        let mut t = Duration::ZERO;
                        for _ in 0..iters {
                            let s = Instant::now();
                            let n = q.dequeue(&d.mem, &mut pool, &mut burst, &mut stats);
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

fn enqueue(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtq_enqueue");
    g.throughput(Throughput::Elements(BURST as u64));
    for len in [64usize, 1518] {
        for mrg in [false, true] {
            let name = format!("{len}B/{}", if mrg { "mrg" } else { "nomrg" });
            g.bench_function(name, |b| {
                let mut d = Driver::with(QUEUE, features(mrg), 0, 2048);
                let mut q = d.queue();
                q.suppress_notifications();
                for _ in 0..4 * BURST {
                    d.post_rx(2048, 1).expect("post");
                }
                let pkts: Vec<TestPacket> = (0..BURST)
                    .map(|i| TestPacket::new(&frame(mac(1), mac(2 + i as u32), None, len)))
                    .collect();
                let mut stats = QueueStats::default();
                b.iter_custom(|iters| {
                    let mut t = Duration::ZERO;
                    for _ in 0..iters {
                        let s = Instant::now();
                        let n = q.enqueue(&d.mem, &pkts, &mut stats);
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

fn packed_dequeue(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtq_packed_dequeue");
    g.throughput(Throughput::Elements(BURST as u64));
    for len in [64usize, 1518] {
        for mrg in [false, true] {
            for (layout, lname) in [
                (TxLayout::Joined, "joined"),
                (TxLayout::SplitHeader, "split"),
            ] {
                if mrg && layout == TxLayout::SplitHeader {
                    continue;
                }
                let name = format!("{len}B/{}/{lname}", if mrg { "mrg" } else { "nomrg" });
                g.bench_function(name, |b| {
                    let mut d = PackedDriver::with(QUEUE, features(mrg), 0x8000, 2048);
                    let mut q = d.queue();
                    q.suppress_notifications();
                    let f = frame(mac(1), mac(2), None, len);
                    for _ in 0..4 * BURST {
                        d.post_tx(&f, layout).expect("post");
                    }
                    let mut pool = VecPool::new(2048, 4 * BURST);
                    let mut burst: Burst<VecPacket> = Burst::new();
                    let mut stats = QueueStats::default();
                    b.iter_custom(|iters| {
                        let mut t = Duration::ZERO;
                        for _ in 0..iters {
                            let s = Instant::now();
                            let n = q.dequeue(&d.mem, &mut pool, &mut burst, &mut stats);
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

fn packed_enqueue(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtq_packed_enqueue");
    g.throughput(Throughput::Elements(BURST as u64));
    for len in [64usize, 1518] {
        for mrg in [false, true] {
            let name = format!("{len}B/{}", if mrg { "mrg" } else { "nomrg" });
            g.bench_function(name, |b| {
                let mut d = PackedDriver::with(QUEUE, features(mrg), 0x8000, 2048);
                let mut q = d.queue();
                q.suppress_notifications();
                for _ in 0..4 * BURST {
                    d.post_rx(2048, 1).expect("post");
                }
                let pkts: Vec<TestPacket> = (0..BURST)
                    .map(|i| TestPacket::new(&frame(mac(1), mac(2 + i as u32), None, len)))
                    .collect();
                let mut stats = QueueStats::default();
                b.iter_custom(|iters| {
                    let mut t = Duration::ZERO;
                    for _ in 0..iters {
                        let s = Instant::now();
                        let n = q.enqueue(&d.mem, &pkts, &mut stats);
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

criterion_group!(benches, dequeue, enqueue, packed_dequeue, packed_enqueue);
criterion_main!(benches);
