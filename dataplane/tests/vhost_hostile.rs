//! A malicious vhost-user frontend against native ports while a worker thread forwards: the
//! frontend sets up real rings in shared memory through the protocol, then writes descriptor
//! loops, addresses outside its memory, absurd lengths, swaps the memory table under traffic
//! and jumps its avail index. The hostile port's bad chains are returned and counted, its
//! ring is dropped when broken, and a well-behaved port served by the same worker forwards
//! throughout: its guest sends from a thread of its own without pause while every hostile
//! event happens (its memory table is swapped too), and after each event every frame it had
//! sent so far has been forwarded; at the end none is lost. No EAL: the worker is this
//! test's own thread, polling the ports' rings as a PMD worker does, with the same
//! quiescent-state handshake; a worker that stops passing quiescent states aborts the test
//! with a message instead of hanging it.

use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use heddle_dataplane::switch::io::Burst;
use heddle_dataplane::vhost::device::VIRTIO_FEATURES;
use heddle_dataplane::vhost::port::{VhostConfig, VhostPort};
use heddle_dataplane::vhost::ring::PortRings;
use heddle_dataplane::vhost::testing::{VecPacket, VecPool};
use heddle_dataplane::vhost::virtq::feature;
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

const SIZE: u16 = 256;
const MEM: usize = 4 << 20;
const DESC: usize = 0;
const AVAIL: usize = 0x1000;
const USED: usize = 0x2000;
const BUFS: usize = 0x10000;
const HDR: usize = 12;

/// The frontend's side of one port: shared memory with the TX ring (vring 1) in it.
struct Guest {
    file: std::fs::File,
    base: *mut u8,
    frontend: Frontend,
    avail: u16,
    _kick: EventFd,
}

impl Guest {
    fn connect(port: &VhostPort) -> Guest {
        // SAFETY: a valid NUL-terminated name; the fd is owned by the File below.
        let fd = unsafe { libc::memfd_create(c"hostile-guest".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` is fresh and owned by nothing else.
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.set_len(MEM as u64).unwrap();
        // SAFETY: mapping MEM bytes of a file that long, shared, at an address of the
        // kernel's choosing; the mapping lives until the test process ends.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let mut frontend = Frontend::connect(&port.config().path, 2).expect("connect");
        frontend.set_owner().unwrap();
        frontend.get_features().unwrap();
        frontend
            .set_features(feature::VERSION_1 | (VIRTIO_FEATURES & (1 << 30)))
            .unwrap();
        frontend.get_protocol_features().unwrap();
        frontend
            .set_protocol_features(
                VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK,
            )
            .unwrap();
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        let mut g = Guest {
            file,
            base: base.cast(),
            frontend,
            avail: 0,
            _kick: EventFd::new(0).unwrap(),
        };
        g.send_mem_table();
        let uva = g.base as u64;
        g.frontend.set_vring_num(1, SIZE).unwrap();
        g.frontend
            .set_vring_addr(
                1,
                &VringConfigData {
                    queue_max_size: SIZE,
                    queue_size: SIZE,
                    flags: 0,
                    desc_table_addr: uva + DESC as u64,
                    used_ring_addr: uva + USED as u64,
                    avail_ring_addr: uva + AVAIL as u64,
                    log_addr: None,
                },
            )
            .unwrap();
        g.frontend.set_vring_base(1, 0).unwrap();
        g.frontend.set_vring_kick(1, &g._kick).unwrap();
        g.frontend.set_vring_enable(1, true).unwrap();
        g
    }

    fn send_mem_table(&mut self) {
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM as u64,
            userspace_addr: self.base as u64,
            mmap_offset: 0,
            mmap_handle: self.file.as_raw_fd(),
        };
        self.frontend
            .set_mem_table(&[region])
            .expect("memory table");
    }

    fn write<T: Copy>(&self, off: usize, v: T) {
        assert!(off + std::mem::size_of::<T>() <= MEM);
        // SAFETY: in bounds of the mapping (checked above); the switch reads this memory
        // concurrently, as a real guest's would be, and only through volatile accesses.
        unsafe { std::ptr::write_volatile(self.base.add(off).cast::<T>(), v) }
    }

    fn read_u16(&self, off: usize) -> u16 {
        // SAFETY: in bounds; a 2-aligned field of the used ring.
        unsafe { std::ptr::read_volatile(self.base.add(off).cast::<u16>()) }
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let off = DESC + 16 * usize::from(i);
        self.write(off, addr);
        self.write(off + 8, len);
        self.write(off + 12, flags);
        self.write(off + 14, next);
    }

    fn publish(&mut self, head: u16) {
        self.write(AVAIL + 4 + 2 * usize::from(self.avail % SIZE), head);
        self.avail = self.avail.wrapping_add(1);
        std::sync::atomic::fence(Ordering::Release);
        self.write(AVAIL + 2, self.avail);
    }

    /// A good frame: one descriptor with the virtio-net header and 60 bytes.
    fn send_good(&mut self) {
        let i = self.avail % SIZE;
        let buf = BUFS + 2048 * usize::from(i);
        for k in 0..HDR {
            self.write::<u8>(buf + k, 0);
        }
        for k in 0..60 {
            self.write::<u8>(buf + HDR + k, if k < 6 { 0xff } else { k as u8 });
        }
        self.desc(i, buf as u64, (HDR + 60) as u32, 0, 0);
        self.publish(i);
    }

    fn used_idx(&self) -> u16 {
        self.read_u16(USED + 2)
    }
}

// SAFETY: `base` points into a MAP_SHARED mapping that is never unmapped (it lives until the
// process ends), so the pointer stays valid on any thread; the guest is used by one thread
// at a time (moved into the pump thread and back).
unsafe impl Send for Guest {}

/// The good guest on a thread of its own: sends a frame whenever its ring has room, and
/// swaps its memory table when asked, until stopped.
struct Pump {
    stop: Arc<AtomicBool>,
    /// Frames sent so far.
    sent: Arc<AtomicU64>,
    /// Memory-table swaps asked for, and done.
    swaps_asked: Arc<AtomicU64>,
    swaps_done: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Guest>>,
}

impl Pump {
    fn start(mut g: Guest) -> Pump {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let swaps_asked = Arc::new(AtomicU64::new(0));
        let swaps_done = Arc::new(AtomicU64::new(0));
        let (st, se, sa, sd) = (
            stop.clone(),
            sent.clone(),
            swaps_asked.clone(),
            swaps_done.clone(),
        );
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                if sa.load(Ordering::Relaxed) > sd.load(Ordering::Relaxed) {
                    g.send_mem_table();
                    sd.fetch_add(1, Ordering::Relaxed);
                }
                if g.avail.wrapping_sub(g.used_idx()) < SIZE {
                    g.send_good();
                    se.fetch_add(1, Ordering::Relaxed);
                } else {
                    std::thread::yield_now();
                }
            }
            g
        });
        Pump {
            stop,
            sent,
            swaps_asked,
            swaps_done,
            thread: Some(thread),
        }
    }

    fn swap_mem_table(&self) {
        let n = self.swaps_asked.fetch_add(1, Ordering::Relaxed) + 1;
        wait("the good guest's memory table swap", || {
            self.swaps_done.load(Ordering::Relaxed) >= n
        });
    }

    fn finish(mut self) -> Guest {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("the good guest's thread")
    }
}

/// Writes a (hostile) chain at head `i`.
type WriteChain = Box<dyn Fn(&Guest, u16)>;

/// The PMD worker stand-in: polls every port's queue pair 0 and counts frames.
struct Worker {
    stop: Arc<AtomicBool>,
    iterations: Arc<AtomicU64>,
    received: Vec<Arc<AtomicU64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn start(ports: Vec<Arc<PortRings>>, iterations: Arc<AtomicU64>) -> Worker {
        let stop = Arc::new(AtomicBool::new(false));
        let received: Vec<_> = ports.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
        let (s, r, it) = (stop.clone(), received.clone(), iterations.clone());
        let thread = std::thread::spawn(move || {
            // Marks the worker gone when its loop ends, normally or by a panic: the quiesce
            // handshake then returns at once (nothing can hold a ring any more) and `wait`
            // fails the test.
            struct Gone(Arc<AtomicU64>);
            impl Drop for Gone {
                fn drop(&mut self) {
                    if std::thread::panicking() {
                        WORKER_PANICKED.store(true, Ordering::Relaxed);
                    }
                    self.0.store(u64::MAX, Ordering::Release);
                }
            }
            let _gone = Gone(it.clone());
            let mut pool = VecPool::new(2048, 64);
            let mut burst: Burst<VecPacket> = Burst::new();
            while !s.load(Ordering::Relaxed) {
                for (rings, count) in ports.iter().zip(&r) {
                    rings.rx_burst(0, &mut pool, &mut burst);
                    count.fetch_add(burst.len() as u64, Ordering::Relaxed);
                    pool.give_back(burst.drain());
                }
                it.fetch_add(1, Ordering::Release);
            }
        });
        Worker {
            stop,
            iterations,
            received,
            thread: Some(thread),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let _ = &self.iterations;
    }
}

/// Set when the worker thread panicked.
static WORKER_PANICKED: AtomicBool = AtomicBool::new(false);

/// How long the worker may take to pass a quiescent state before the test gives up on it.
const QUIESCE_LIMIT: Duration = Duration::from_secs(10);

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            !WORKER_PANICKED.load(Ordering::Relaxed),
            "the worker thread panicked (its message is above) while waiting for: {what}"
        );
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_hostile_guest_is_contained_while_a_good_one_keeps_forwarding() {
    let dir = tempfile::tempdir().unwrap();
    let iterations = Arc::new(AtomicU64::new(0));
    // Quiescence as the switch does it: wait until the worker started two new iterations,
    // or ended (then it holds no ring). It runs on a port's vhost-user thread, which is about
    // to free a ring: if the worker is alive but passes no quiescent state within
    // QUIESCE_LIMIT, freeing the ring could pull it from under the worker and returning
    // without freeing would leave the thread stuck, so the test process is aborted with a
    // message (a failure, not a hang).
    let quiesce = {
        let it = iterations.clone();
        Arc::new(move || {
            let start = it.load(Ordering::Acquire);
            let t = Instant::now();
            loop {
                let now = it.load(Ordering::Acquire);
                if now == u64::MAX || now >= start.saturating_add(2) {
                    return;
                }
                if t.elapsed() > QUIESCE_LIMIT {
                    eprintln!(
                        "vhost_hostile: the worker passed no quiescent state in {} s (stuck in one poll iteration); aborting the test",
                        QUIESCE_LIMIT.as_secs()
                    );
                    std::process::abort();
                }
                std::hint::spin_loop();
            }
        })
    };
    let start = |name: &str| {
        let cfg = VhostConfig::parse(
            &format!(
                "vhost-user-{name},iface={}/{name}.sock",
                dir.path().display()
            ),
            None,
        )
        .unwrap();
        VhostPort::start(name, cfg, 1, quiesce.clone()).unwrap()
    };
    let (good_port, bad_port) = (start("good"), start("bad"));
    let worker = Worker::start(
        vec![good_port.rings().clone(), bad_port.rings().clone()],
        iterations.clone(),
    );
    let good = Guest::connect(&good_port);
    let mut bad = Guest::connect(&bad_port);
    let good_rx = worker.received[0].clone();
    let bad_rx = worker.received[1].clone();

    // The good guest sends without pause from here to the end of the hostile events.
    let pump = Pump::start(good);
    let sent = pump.sent.clone();
    // Every frame the good guest has sent until now is forwarded (later ones may be in
    // flight): called after each event, while it keeps sending.
    let good_caught_up = |what: &str| {
        let s = sent.load(Ordering::Relaxed);
        wait(what, || good_rx.load(Ordering::Relaxed) >= s);
    };
    wait("the good guest's frames", || {
        good_rx.load(Ordering::Relaxed) >= 1000
    });
    bad.send_good();
    wait("the bad guest's first good frame", || {
        bad_rx.load(Ordering::Relaxed) == 1
    });

    let counters = &bad_port.rings().counters;
    // Malformed chains, and chains that add up to more than a switch buffer (a loop does).
    let bad_chains =
        || counters.bad_chains.load(Ordering::Relaxed) + counters.oversize.load(Ordering::Relaxed);
    let hostile: Vec<(&str, WriteChain)> = vec![
        (
            "descriptor loop",
            Box::new(|g, i| g.desc(i, BUFS as u64, 100, 1, i)),
        ),
        (
            "next out of range",
            Box::new(|g, i| g.desc(i, BUFS as u64, 100, 1, 999)),
        ),
        (
            "address outside memory",
            Box::new(|g, i| g.desc(i, 1 << 40, 100, 0, 0)),
        ),
        (
            "absurd length",
            Box::new(|g, i| g.desc(i, BUFS as u64, u32::MAX, 0, 0)),
        ),
        (
            "address + length overflows",
            Box::new(|g, i| g.desc(i, u64::MAX - 10, 100, 0, 0)),
        ),
        (
            "write-only TX buffer",
            Box::new(|g, i| g.desc(i, BUFS as u64, 100, 2, 0)),
        ),
        (
            "indirect table outside memory",
            Box::new(|g, i| g.desc(i, 1 << 41, 64, 4, 0)),
        ),
        (
            "shorter than the header",
            Box::new(|g, i| g.desc(i, BUFS as u64, 4, 0, 0)),
        ),
    ];
    for (what, make) in &hostile {
        let before = bad_chains();
        let i = bad.avail % SIZE;
        make(&bad, i);
        bad.publish(i);
        wait(what, || bad_chains() > before);
        // The chain came back (used index moved), and the good guest's frames, sent all
        // along, were all forwarded.
        wait(what, || bad.used_idx() == bad.avail);
        good_caught_up(what);
        // A good frame right after the bad chain is still served.
        let b0 = bad_rx.load(Ordering::Relaxed);
        bad.send_good();
        wait(what, || bad_rx.load(Ordering::Relaxed) == b0 + 1);
    }

    // Memory table swapped under traffic: the rings stop, remap and resume where they were.
    for _ in 0..20 {
        bad.send_good();
        bad.send_mem_table();
        pump.swap_mem_table();
        good_caught_up("traffic across memory table swaps");
    }
    wait("the bad guest's frames across swaps", || {
        bad.used_idx() == bad.avail
    });

    // An avail index far ahead of the ring: the ring is broken and dropped; the good one
    // forwards on.
    bad.avail = bad.avail.wrapping_add(SIZE + 7);
    bad.write(AVAIL + 2, bad.avail);
    wait("the broken ring to be counted", || {
        counters.broken_rings.load(Ordering::Relaxed) >= 1
    });
    let b0 = bad_rx.load(Ordering::Relaxed);
    good_caught_up("traffic after the broken ring");
    let s0 = sent.load(Ordering::Relaxed);
    wait("more traffic after the broken ring", || {
        good_rx.load(Ordering::Relaxed) >= s0 + 500
    });
    // The good guest stops; every frame it sent was forwarded, none lost.
    let good = pump.finish();
    let total = sent.load(Ordering::Relaxed);
    wait("the good guest's last frames", || {
        good.used_idx() == good.avail
    });
    assert_eq!(
        good_rx.load(Ordering::Relaxed),
        total,
        "every frame the good guest sent is forwarded"
    );
    assert_eq!(
        bad_rx.load(Ordering::Relaxed),
        b0,
        "a broken ring is not served"
    );
    eprintln!(
        "good guest frames {}, bad guest frames {}, bad chains {}, broken rings {}",
        good_rx.load(Ordering::Relaxed),
        bad_rx.load(Ordering::Relaxed),
        bad_chains(),
        counters.broken_rings.load(Ordering::Relaxed)
    );
    assert_eq!(bad_chains(), hostile.len() as u64);
    assert_eq!(
        good_port
            .rings()
            .counters
            .bad_chains
            .load(Ordering::Relaxed),
        0
    );

    // The frontend sets the ring up again (as after a reset): it runs again.
    drop(bad);
    let mut again = Guest::connect(&bad_port);
    let b0 = bad_rx.load(Ordering::Relaxed);
    again.send_good();
    wait("the reconnected guest's frame", || {
        bad_rx.load(Ordering::Relaxed) == b0 + 1
    });
    drop(worker);
}
