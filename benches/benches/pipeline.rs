//! criterion benches of the switch pipeline over the in-memory I/O (no EAL): learned
//! unicast, VLAN push/pop, flooding, and FDB lookups at 1k and 100k entries.
//!
//! Frames are recycled between iterations (sent frames are fed back as received ones), so
//! the figures are the pipeline's own cost per packet, without buffer allocation, except
//! `flood`, whose copies are heap clones here (mempool copies in the switch).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use heddle_dataplane::switch::config::{PortMode, Snapshot, SwitchPort};
use heddle_dataplane::switch::counters::WorkerCounters;
use heddle_dataplane::switch::fdb::Fdb;
use heddle_dataplane::switch::io::{Burst, Packet, PacketIo, BURST};
use heddle_dataplane::switch::pipeline::WorkerState;
use heddle_dataplane::switch::testing::{frame, mac, TestIo, TestPacket};
use heddle_dataplane::switch::vlan::{Vlan, VlanSet};

fn vlan(n: u16) -> Vlan {
    Vlan::new(n).expect("valid VLAN")
}

fn access(index: u16, v: u16) -> SwitchPort {
    SwitchPort {
        mtu: 1500,
        index,
        name: String::new(),
        mode: PortMode::Access { vlan: vlan(v) },
    }
}

fn trunk(index: u16, v: u16) -> SwitchPort {
    let mut allowed = VlanSet::new();
    allowed.insert(vlan(v));
    SwitchPort {
        mtu: 1500,
        index,
        name: String::new(),
        mode: PortMode::Trunk {
            allowed,
            native: None,
        },
    }
}

struct Rig {
    snap: Snapshot,
    fdb: Fdb,
    io: TestIo,
    state: WorkerState<TestPacket>,
    burst: Burst<TestPacket>,
}

impl Rig {
    fn new(ports: Vec<SwitchPort>) -> Rig {
        Rig {
            snap: Snapshot::build(ports),
            fdb: Fdb::new(65536),
            io: TestIo::new(),
            state: WorkerState::new(Arc::new(WorkerCounters::new())),
            burst: Burst::new(),
        }
    }

    /// One burst in on `port`, everything flushed.
    #[inline]
    fn step(&mut self, port: u16) {
        self.io.rx_burst(port, 0, &mut self.burst);
        self.state.forward(
            &self.snap,
            &self.fdb,
            1,
            &mut self.io,
            port,
            &mut self.burst,
        );
        self.state.flush(&mut self.io);
    }

    /// Moves what was sent on `from` back into the RX queue of `to`.
    fn recycle(&mut self, from: u16, to: u16, swap_macs: bool) {
        let sent = std::mem::take(&mut self.io.tx[from as usize]);
        for mut p in sent {
            if swap_macs {
                let d = p.data_mut();
                for i in 0..6 {
                    d.swap(i, i + 6);
                }
            }
            self.io.rx[to as usize].push_back(p);
        }
    }
}

fn learned_unicast(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(BURST as u64));
    let mut r = Rig::new(vec![access(0, 100), access(1, 100)]);
    r.fdb.learn(vlan(100), &mac(1), 0, 1);
    r.fdb.learn(vlan(100), &mac(2), 1, 1);
    for _ in 0..BURST {
        r.io.inject(0, &frame(mac(2), mac(1), None, 64));
    }
    g.bench_function("learned_unicast_access_to_access_64B", |b| {
        b.iter(|| {
            r.step(0);
            r.recycle(1, 0, false);
        })
    });

    let mut r = Rig::new(vec![access(0, 100), trunk(1, 100)]);
    r.fdb.learn(vlan(100), &mac(1), 0, 1);
    r.fdb.learn(vlan(100), &mac(2), 1, 1);
    for _ in 0..BURST {
        r.io.inject(0, &frame(mac(2), mac(1), None, 64));
    }
    // Each iteration: a burst access -> trunk (tag pushed), then trunk -> access (popped).
    g.throughput(Throughput::Elements(2 * BURST as u64));
    g.bench_function("vlan_push_then_pop_64B", |b| {
        b.iter(|| {
            r.step(0);
            r.recycle(1, 1, true);
            r.step(1);
            r.recycle(0, 0, true);
        })
    });

    let mut r = Rig::new(vec![
        access(0, 100),
        access(1, 100),
        access(2, 100),
        access(3, 100),
    ]);
    r.io.discard_tx = true;
    g.throughput(Throughput::Elements(BURST as u64));
    g.bench_function("flood_broadcast_to_3_ports_64B", |b| {
        b.iter_batched(
            || {
                (0..BURST)
                    .map(|_| TestPacket::new(&frame([0xff; 6], mac(1), None, 64)))
                    .collect::<Vec<_>>()
            },
            |pkts| {
                for p in pkts {
                    r.io.rx[0].push_back(p);
                }
                r.step(0);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn fdb_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("fdb");
    for entries in [1_000u32, 100_000] {
        let fdb = Fdb::new(entries as usize);
        for n in 0..entries {
            fdb.learn(vlan(1 + (n % 4000) as u16), &mac(n), (n % 200) as u16, 1);
        }
        // A pseudo-random walk over the keys, so lookups miss the cache as in real traffic.
        let keys: Vec<(Vlan, [u8; 6])> = (0..1024u32)
            .map(|i| {
                let n = i.wrapping_mul(2_654_435_761) % entries;
                (vlan(1 + (n % 4000) as u16), mac(n))
            })
            .collect();
        g.throughput(Throughput::Elements(keys.len() as u64));
        g.bench_function(format!("lookup_hit_{entries}"), |b| {
            b.iter(|| {
                let mut found = 0u32;
                for (v, m) in &keys {
                    found += u32::from(fdb.lookup(*v, m).is_some());
                }
                assert_eq!(found as usize, keys.len());
                found
            })
        });
        g.bench_function(format!("learn_known_{entries}"), |b| {
            b.iter(|| {
                for (i, (v, m)) in keys.iter().enumerate() {
                    let n = (i as u32).wrapping_mul(2_654_435_761) % entries;
                    std::hint::black_box(fdb.learn(*v, m, (n % 200) as u16, 1));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, learned_unicast, fdb_lookup);
criterion_main!(benches);
