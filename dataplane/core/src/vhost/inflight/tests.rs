//! A kill at every store: each test runs a queue with tracking, "kills the switch" right
//! before or after every store into the in-flight region in turn (the ring's own stores lie
//! between two of them), builds a new queue from the region as a restarted switch would,
//! and checks each descriptor came back on the used ring exactly once and each frame reached
//! the switch at most once (exactly once unless its descriptor was completed by the call the
//! kill cut short, whose packets died with the process).

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use super::*;
use crate::switch::io::{Burst, Packet};
use crate::vhost::packed_testing::PackedDriver;
use crate::vhost::queue::Virtqueue;
use crate::vhost::testing::{Driver, TxLayout, UsedElem, VecPool};
use crate::vhost::virtq::{feature, QueueStats, RingAddrs};

thread_local! {
    static STORES: Cell<u64> = const { Cell::new(0) };
    static KILL_AT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The simulated `kill -9` (unwinds without running the panic hook).
struct Killed;

pub(super) fn kill_point() {
    let n = STORES.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    if KILL_AT.with(|k| k.get()) == Some(n) {
        KILL_AT.with(|k| k.set(None));
        resume_unwind(Box::new(Killed));
    }
}

fn arm(at: Option<u64>) {
    STORES.with(|c| c.set(0));
    KILL_AT.with(|k| k.set(at));
}

fn stores() -> u64 {
    STORES.with(|c| c.get())
}

/// What a test driver offers the harness, split or packed.
trait TestDriver {
    fn mem(&self) -> &crate::vhost::memory::GuestMemory;
    fn addrs(&self) -> RingAddrs;
    fn post(&mut self, frame: &[u8]) -> Option<u16>;
    fn reap(&mut self) -> Vec<UsedElem>;
}

impl TestDriver for Driver {
    fn mem(&self) -> &crate::vhost::memory::GuestMemory {
        &self.mem
    }
    fn addrs(&self) -> RingAddrs {
        Driver::addrs(self)
    }
    fn post(&mut self, frame: &[u8]) -> Option<u16> {
        self.post_tx(frame, TxLayout::Pieces(2))
    }
    fn reap(&mut self) -> Vec<UsedElem> {
        Driver::reap(self)
    }
}

impl TestDriver for PackedDriver {
    fn mem(&self) -> &crate::vhost::memory::GuestMemory {
        &self.mem
    }
    fn addrs(&self) -> RingAddrs {
        PackedDriver::addrs(self)
    }
    fn post(&mut self, frame: &[u8]) -> Option<u16> {
        self.post_tx(frame, TxLayout::Pieces(2))
    }
    fn reap(&mut self) -> Vec<UsedElem> {
        PackedDriver::reap(self)
    }
}

const SIZE: u16 = 8;
const FRAMES: u32 = 40;
const VRING: usize = 1;

fn frame(i: u32) -> Vec<u8> {
    let mut f = vec![0xab; 64];
    f[..4].copy_from_slice(&i.to_le_bytes());
    f
}

fn start<D: TestDriver>(
    d: &D,
    region: &Arc<InflightRegion>,
    features: u64,
    frontend_base: u16,
) -> Virtqueue {
    let view = GuestRing {
        mem: d.mem(),
        addrs: d.addrs(),
    };
    let (t, base) = attach(region, VRING, SIZE, features, frontend_base, &view)
        .expect("region accepted")
        .expect("vring covered");
    let mut q = Virtqueue::new(d.mem(), &d.addrs(), base, features).expect("ring");
    q.set_inflight(t);
    q
}

/// Guest TX through a queue killed at store `kill_at`; returns the stores of the run.
fn tx_run<D: TestDriver>(mut d: D, features: u64, fresh_base: u16, kill_at: Option<u64>) -> u64 {
    let (region, file) = InflightRegion::allocate(2, SIZE, 2).expect("region");
    let region = Arc::new(region);
    let len = region.mapped_len() as u64;
    arm(None);
    let mut q = start(&d, &region, features, fresh_base);
    arm(kill_at);
    // A pool of 3 packets: bursts stop on an empty pool (chains taken back) as well.
    let mut pool = VecPool::new(2048, 3);
    let mut head_frame: HashMap<u16, u32> = HashMap::new();
    let mut used = vec![0u32; FRAMES as usize];
    let mut got = vec![0u32; FRAMES as usize];
    let mut lost_ok = vec![false; FRAMES as usize];
    let mut next = 0u32;
    let mut killed = false;
    let mut rounds = 0;
    while used.contains(&0) {
        rounds += 1;
        assert!(
            rounds < 10_000,
            "no progress (kill at {kill_at:?}, broken {}, {q:?})",
            q.is_broken()
        );
        while next < FRAMES {
            let Some(h) = d.post(&frame(next)) else { break };
            head_frame.insert(h, next);
            next += 1;
        }
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut burst = Burst::new();
            let mut st = QueueStats::default();
            q.dequeue(d.mem(), &mut pool, &mut burst, &mut st);
            burst.drain().collect::<Vec<_>>()
        }));
        let reaped = d.reap();
        match r {
            Ok(pkts) => {
                for p in &pkts {
                    let i = u32::from_le_bytes(p.data()[..4].try_into().unwrap());
                    got[i as usize] += 1;
                }
                pool.give_back(pkts);
            }
            Err(e) => {
                assert!(e.is::<Killed>(), "a real panic");
                killed = true;
                // Whatever this call completed died with it, undelivered.
                for e in &reaped {
                    lost_ok[head_frame[&(e.id as u16)] as usize] = true;
                }
                // The restarted switch: a new mapping of the frontend's region, the frontend's
                // own idea of the base (a fresh one, as DPDK virtio-user sends), a new pool.
                let region = Arc::new(InflightRegion::open(&file, len, 0, 2, SIZE, 2).unwrap());
                q = start(&d, &region, features, fresh_base);
                pool = VecPool::new(2048, 3);
            }
        }
        for e in reaped {
            used[head_frame[&(e.id as u16)] as usize] += 1;
        }
    }
    let total = stores();
    arm(None);
    assert!(
        kill_at.is_none() || killed || kill_at > Some(total),
        "kill point {kill_at:?} not reached"
    );
    for i in 0..FRAMES as usize {
        assert_eq!(
            used[i], 1,
            "frame {i}: descriptor used {} times (kill at {kill_at:?})",
            used[i]
        );
        let ok = got[i] == 1 || (got[i] == 0 && lost_ok[i]);
        assert!(
            ok,
            "frame {i}: delivered {} times (kill at {kill_at:?})",
            got[i]
        );
    }
    total
}

fn sweep<D: TestDriver>(mk: impl Fn() -> D, features: u64, fresh_base: u16) {
    let total = tx_run(mk(), features, fresh_base, None);
    assert!(total > 100, "tracking wrote {total} times");
    for k in 1..=total {
        tx_run(mk(), features, fresh_base, Some(k));
    }
}

#[test]
fn split_tx_kill_at_every_store_completes_each_descriptor_once() {
    let f = feature::VERSION_1;
    sweep(|| Driver::new(SIZE, f), f, 0);
}

#[test]
fn packed_tx_kill_at_every_store_completes_each_descriptor_once() {
    let f = feature::VERSION_1 | feature::RING_PACKED;
    sweep(|| PackedDriver::new(SIZE, f), f, 0x8000);
}

/// A split ring with two chains taken and not returned, as a crash leaves it; the region,
/// the driver and the features to resume with.
fn split_in_flight() -> (Driver, Arc<InflightRegion>, u64) {
    let f = feature::VERSION_1;
    let mut d = Driver::new(SIZE, f);
    let (region, _file) = InflightRegion::allocate(2, SIZE, 2).unwrap();
    let region = Arc::new(region);
    arm(None);
    let mut q = start(&d, &region, f, 0);
    for i in 0..2 {
        d.post(&frame(i)).unwrap();
    }
    // Kill right after the second take (take: 2 stores, used: 2 stores, two kill points per
    // store): both in flight, the first on the used ring but not published.
    arm(Some(3 * 2 * 2));
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut burst = Burst::new();
        let mut pool = VecPool::new(2048, 8);
        q.dequeue(&d.mem, &mut pool, &mut burst, &mut QueueStats::default());
    }));
    assert!(r.is_err(), "killed");
    arm(None);
    (d, region, f)
}

fn resume_split(d: &Driver, region: &Arc<InflightRegion>, f: u64) -> Result<u16, InflightError> {
    let view = GuestRing {
        mem: &d.mem,
        addrs: Driver::addrs(d),
    };
    attach(region, VRING, SIZE, f, 0, &view).map(|r| r.unwrap().1)
}

#[test]
fn a_consistent_split_region_resumes_at_the_used_index() {
    let (d, region, f) = split_in_flight();
    assert_eq!(resume_split(&d, &region, f), Ok(0));
}

#[test]
fn hostile_split_regions_refuse_the_ring() {
    fn corrupt(what: &'static str) -> impl Fn(Result<u16, InflightError>) {
        move |e| {
            assert!(
                matches!(&e, Err(InflightError::Corrupt { what: w, .. }) if w.contains(what)),
                "{e:?} should say {what}"
            );
        }
    }
    // An inflight flag that is neither 0 nor 1.
    let (d, region, f) = split_in_flight();
    region.queue(VRING).unwrap().set_u8(sd(5), 7);
    corrupt("neither 0 nor 1")(resume_split(&d, &region, f));
    // Two descriptors in flight with the same counter.
    let (d, region, f) = split_in_flight();
    let q = region.queue(VRING).unwrap();
    let c = q.u64_at(sd(0) + SD_COUNTER);
    for i in 0..SIZE {
        if q.u8_at(sd(i)) == 1 {
            q.set_u64(sd(i) + SD_COUNTER, c);
        }
    }
    corrupt("same counter")(resume_split(&d, &region, f));
    // A descriptor in flight that is not among the ring's next chains.
    let (d, region, f) = split_in_flight();
    let q = region.queue(VRING).unwrap();
    let spare = (0..SIZE).find(|&i| q.u8_at(sd(i)) == 0).unwrap();
    q.set_u8(sd(spare), 1);
    q.set_u64(sd(spare) + SD_COUNTER, 1 << 40);
    corrupt("next chains")(resume_split(&d, &region, f));
    // A last batch (used_idx behind used.idx) whose next links loop.
    let (d, region, f) = split_in_flight();
    let q = region.queue(VRING).unwrap();
    q.set_u16(S_USED_IDX, 0u16.wrapping_sub(3));
    q.set_u16(S_LAST_BATCH_HEAD, 0);
    q.set_u16(sd(0) + SD_NEXT, 0);
    corrupt("loop")(resume_split(&d, &region, f));
    // A next link out of range.
    let (d, region, f) = split_in_flight();
    let q = region.queue(VRING).unwrap();
    q.set_u16(S_USED_IDX, 0u16.wrapping_sub(2));
    q.set_u16(sd(0) + SD_NEXT, 999);
    corrupt("out of range")(resume_split(&d, &region, f));
    // last_batch_head out of range.
    let (d, region, f) = split_in_flight();
    region
        .queue(VRING)
        .unwrap()
        .set_u16(S_LAST_BATCH_HEAD, SIZE);
    corrupt("last_batch_head")(resume_split(&d, &region, f));
    // desc_num that is not the region's queue size.
    let (d, region, f) = split_in_flight();
    region.queue(VRING).unwrap().set_u16(S_DESC_NUM, 4);
    corrupt("desc_num")(resume_split(&d, &region, f));
}

#[test]
fn regions_of_the_wrong_shape_are_refused() {
    let (_, file) = InflightRegion::allocate(2, SIZE, 2).unwrap();
    let need = 2 * queue_stride(SIZE) as u64;
    assert!(matches!(
        InflightRegion::open(&file, need - 1, 0, 2, SIZE, 2),
        Err(InflightError::TooSmall { .. })
    ));
    // Claims more queues than the file holds.
    assert!(matches!(
        InflightRegion::open(&file, 4 * need, 0, 2, 4 * SIZE, 2),
        Err(InflightError::BadFile { .. })
    ));
    assert!(matches!(
        InflightRegion::open(&file, need, 4096, 2, SIZE, 2),
        Err(InflightError::BadFile { .. })
    ));
    assert!(matches!(
        InflightRegion::open(&file, need, 0, 3, SIZE, 2),
        Err(InflightError::BadShape { .. })
    ));
    assert!(matches!(
        InflightRegion::allocate(1, 0, 2),
        Err(InflightError::BadShape { .. })
    ));
    // A vring larger than the region tracks.
    let (region, _) = InflightRegion::allocate(2, 4, 2).unwrap();
    let d = Driver::new(SIZE, feature::VERSION_1);
    let view = GuestRing {
        mem: &d.mem,
        addrs: Driver::addrs(&d),
    };
    assert!(matches!(
        attach(&Arc::new(region), VRING, SIZE, feature::VERSION_1, 0, &view),
        Err(InflightError::RingTooLarge { .. })
    ));
}

#[test]
fn layouts_match_the_spec() {
    // 64-aligned, large enough for either layout's header and entries.
    assert_eq!(queue_stride(256), 32 + 32 * 256 + 32);
    assert_eq!(queue_stride(1), 64);
    assert_eq!(std::mem::size_of::<DescStateSplit>(), 16);
    assert_eq!(PD_ADDR + 8, PACKED_DESC);
}
