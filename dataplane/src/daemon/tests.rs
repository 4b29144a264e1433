//! A PMD worker stalled in a burst: nothing it may hold is freed until it comes back.
//!
//! The worker here runs the real worker protocol (acknowledge the generation in `seen`, then
//! poll) against a real vhost-user device and its rings; its packet pool is the test hook: it
//! parks the worker inside `dequeue`, with the guest ring and memory in its hands, until the
//! test releases it.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserMemoryRegion, VhostUserVringAddrFlags};
use vhost::vhost_user::VhostUserBackendReqHandlerMut;

use super::switch::SwitchCtl;
use super::worker::Shared;
use heddle_core::switch::io::Burst;
use heddle_core::vhost::device::VhostDevice;
use heddle_core::vhost::ring::PortRings;
use heddle_core::vhost::testing::{
    memfd, Driver, TxLayout, VecPacket, VecPool, GPA_BASE, UVA_BASE,
};
use heddle_core::vhost::virtq::{feature, RxPool};

/// A packet pool whose first allocation parks the calling worker until released.
struct ParkingPool {
    inner: VecPool,
    parked: Option<(Sender<()>, Receiver<()>)>,
}

impl RxPool for ParkingPool {
    type Pkt = VecPacket;

    fn alloc(&mut self, len: usize) -> Option<VecPacket> {
        if let Some((parked, release)) = self.parked.take() {
            parked.send(()).expect("test waits for the park");
            release.recv().expect("test releases the worker");
        }
        self.inner.alloc(len)
    }

    fn max_len(&self) -> usize {
        self.inner.max_len()
    }
}

/// Mappings of the file with inode `ino` in this process.
fn mappings_of(ino: u64) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(4)
                .and_then(|i| i.parse::<u64>().ok())
                == Some(ino)
                && l.contains("memfd:")
        })
        .count()
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn region(spec: heddle_core::vhost::memory::RegionSpec) -> VhostUserMemoryRegion {
    VhostUserMemoryRegion::new(
        spec.guest_phys_addr,
        spec.size,
        spec.user_addr,
        spec.mmap_offset,
    )
}

#[test]
fn a_new_memory_table_waits_for_a_worker_parked_in_a_burst_and_reports_the_stall() {
    let mut shared = Shared::new(1, SwitchCtl::empty_dataplane(1), 64);
    shared.stall_report = Duration::from_millis(50);
    let shared = Arc::new(shared);
    let rings = Arc::new(PortRings::new(1, 1));
    let quiesce = {
        let shared = shared.clone();
        Arc::new(move || shared.synchronize()) as heddle_core::vhost::device::Quiesce
    };
    let device = Arc::new(Mutex::new(VhostDevice::new(
        "p".into(),
        rings.clone(),
        quiesce,
    )));

    // The frontend sets up guest TX ring 1 in one memfd and posts a frame.
    let mut driver = Driver::new(256, feature::VERSION_1);
    let (spec, file) = driver.region();
    let old_ino = file.metadata().unwrap().ino();
    {
        let mut d = device.lock().unwrap();
        d.set_features(feature::VERSION_1).unwrap();
        d.set_mem_table(&[region(spec)], vec![file], None).unwrap();
        let a = driver.addrs();
        d.set_vring_num(1, 256).unwrap();
        d.set_vring_addr(
            1,
            VhostUserVringAddrFlags::empty(),
            a.desc_uva,
            a.used_uva,
            a.avail_uva,
            0,
        )
        .unwrap();
        d.set_vring_base(1, 0).unwrap();
        d.set_vring_kick(1, None).unwrap();
        assert_eq!(d.running_pairs(), 0, "only the TX ring runs");
    }
    assert!(rings.slot(1).unwrap().is_active());
    assert_eq!(
        mappings_of(old_ino),
        2,
        "the driver's and the switch's mapping"
    );
    driver.post_tx(&[0xab; 60], TxLayout::Joined).unwrap();

    // A worker, as `worker::run` does it: acknowledge the generation, then poll.
    let (parked_tx, parked_rx) = channel();
    let (release_tx, release_rx) = channel();
    let stop = Arc::new(AtomicBool::new(false));
    let frames = Arc::new(AtomicU64::new(0));
    let worker = {
        let (shared, rings, stop, frames) =
            (shared.clone(), rings.clone(), stop.clone(), frames.clone());
        std::thread::spawn(move || {
            let mut pool = ParkingPool {
                inner: VecPool::new(2048, 64),
                parked: Some((parked_tx, release_rx)),
            };
            let mut burst: Burst<VecPacket> = Burst::new();
            let mut seen = u64::MAX;
            while !stop.load(Ordering::Relaxed) {
                let g = shared.generation.load(Ordering::Acquire);
                if g != seen {
                    seen = g;
                    shared.seen[0].0.store(g, Ordering::Release);
                }
                rings.rx_burst(0, &mut pool, &mut burst);
                frames.fetch_add(burst.len() as u64, Ordering::Relaxed);
                let got: Vec<VecPacket> = burst.drain().collect();
                pool.inner.give_back(got);
                std::thread::yield_now();
            }
            shared.seen[0].0.store(u64::MAX, Ordering::Release);
        })
    };
    parked_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the worker takes the frame and parks in the burst");

    // The frontend sends a new memory table: the old ring must stop and its memory go.
    let new_file = memfd(driver.end_gpa() - GPA_BASE);
    let new_spec = heddle_core::vhost::memory::RegionSpec {
        guest_phys_addr: GPA_BASE,
        size: driver.end_gpa() - GPA_BASE,
        user_addr: UVA_BASE,
        mmap_offset: 0,
    };
    let log = Captured::default();
    let done = Arc::new(AtomicBool::new(false));
    let control = {
        let (device, log, done) = (device.clone(), log.clone(), done.clone());
        std::thread::spawn(move || {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || log.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                let started = Instant::now();
                device
                    .lock()
                    .unwrap()
                    .set_mem_table(&[region(new_spec)], vec![new_file], None)
                    .unwrap();
                done.store(true, Ordering::Release);
                started.elapsed()
            })
        })
    };

    // While the worker is parked: the swap waits, the old memory stays mapped, the stall is
    // counted and logged (several report intervals pass).
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared.stalls[0].0.load(Ordering::Relaxed) == 0 || !log.text().contains("[0]") {
        assert!(
            Instant::now() < deadline,
            "stall never reported: {}",
            log.text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !done.load(Ordering::Acquire),
        "the swap returned under a parked worker"
    );
    assert_eq!(
        mappings_of(old_ino),
        2,
        "the old memory table was unmapped under a parked worker"
    );
    assert_eq!(
        shared.stalls[0].0.load(Ordering::Relaxed),
        1,
        "one stall, counted once"
    );
    let text = log.text();
    assert!(
        text.contains("WARN") && text.contains("PMD worker(s) [0] have not finished their burst"),
        "{text}"
    );
    assert!(
        text.matches("have not finished their burst").count() >= 3,
        "reported periodically: {text}"
    );

    // Released: the burst finishes with the frame, the swap completes and unmaps at once.
    let released = Instant::now();
    release_tx.send(()).unwrap();
    let waited = control.join().unwrap();
    let after_release = released.elapsed();
    assert!(done.load(Ordering::Acquire));
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
    assert!(after_release < Duration::from_secs(2), "{after_release:?}");
    assert_eq!(mappings_of(old_ino), 1, "only the driver's mapping is left");
    assert_eq!(
        frames.load(Ordering::Relaxed),
        1,
        "the parked burst delivered its frame"
    );
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    drop(device);
}
