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

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::{
    guest_memory, negotiate, quiesce, send_mem_table, set_up_tx_ring, start_port, wait, Worker,
    BUFS, DESC, HDR, SIZE,
};
use heddle_dataplane::switch::config::MAX_FRAME;
use heddle_dataplane::vhost::port::VhostPort;
use heddle_dataplane::vhost::virtq::feature;
use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vmm_sys_util::eventfd::EventFd;

const AVAIL: usize = 0x1000;
const USED: usize = 0x2000;

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
        let (file, base) = guest_memory(c"hostile-guest");
        let (frontend, _) = negotiate(port, feature::VERSION_1);
        let mut g = Guest {
            file,
            base,
            frontend,
            avail: 0,
            _kick: EventFd::new(0).unwrap(),
        };
        g.send_mem_table();
        set_up_tx_ring(&mut g.frontend, g.base, AVAIL, USED, 0, &g._kick);
        g
    }

    fn send_mem_table(&mut self) {
        send_mem_table(&mut self.frontend, &self.file, self.base);
    }

    fn write<T: Copy>(&self, off: usize, v: T) {
        common::write(self.base, off, v);
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

    /// A frame of `len` bytes (header not counted) in three chained descriptors at
    /// `JUMBO`: how a guest with a 9000-byte MTU sends.
    fn send_long(&mut self, len: usize) {
        let i = self.avail % SIZE;
        let total = HDR + len;
        for k in 0..total {
            let b = if k < HDR {
                0
            } else if k < HDR + 6 {
                0xff
            } else {
                k as u8
            };
            self.write::<u8>(JUMBO + k, b);
        }
        let third = total / 3;
        let (a, b) = ((i + 1) % SIZE, (i + 2) % SIZE);
        self.desc(i, JUMBO as u64, third as u32, 1, a);
        self.desc(a, (JUMBO + third) as u64, third as u32, 1, b);
        self.desc(
            b,
            (JUMBO + 2 * third) as u64,
            (total - 2 * third) as u32,
            0,
            0,
        );
        self.publish(i);
    }

    fn used_idx(&self) -> u16 {
        self.read_u16(USED + 2)
    }
}

/// Where `send_long` builds its frames (past the 2 KiB buffers `send_good` uses).
const JUMBO: usize = 0x100000;

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

#[test]
fn a_hostile_guest_is_contained_while_a_good_one_keeps_forwarding() {
    let dir = tempfile::tempdir().unwrap();
    let iterations = Arc::new(AtomicU64::new(0));
    let quiesce = quiesce(&iterations);
    let start = |name: &str| start_port(dir.path(), name, "", quiesce.clone());
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
        (
            "one byte longer than the largest frame (9234 bytes)",
            Box::new(|g, i| {
                let (a, b) = ((i + 1) % SIZE, (i + 2) % SIZE);
                g.desc(i, JUMBO as u64, 4000, 1, a);
                g.desc(a, JUMBO as u64 + 4000, 4000, 1, b);
                g.desc(
                    b,
                    JUMBO as u64 + 8000,
                    (HDR + MAX_FRAME + 1 - 8000) as u32,
                    0,
                    0,
                );
            }),
        ),
        (
            "every descriptor of the ring chained (longer than any frame)",
            Box::new(|g, i| {
                for k in 0..SIZE {
                    let d = (i + k) % SIZE;
                    let last = k == SIZE - 1;
                    g.desc(
                        d,
                        JUMBO as u64,
                        64,
                        if last { 0 } else { 1 },
                        (d + 1) % SIZE,
                    );
                }
            }),
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

    // The largest frame the switch carries, and a 9000-byte-MTU guest's frame, in three
    // descriptors each: taken whole.
    for len in [MAX_FRAME, 9014] {
        let b0 = bad_rx.load(Ordering::Relaxed);
        bad.send_long(len);
        wait("a jumbo frame", || bad_rx.load(Ordering::Relaxed) == b0 + 1);
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

/// A frontend that negotiated in-flight tracking (`INFLIGHT_SHMFD`) on `port`: its memory,
/// and the region `GET_INFLIGHT_FD` gave it, mapped (2 queues of `SIZE`).
struct TrackedGuest {
    frontend: Frontend,
    file: std::fs::File,
    base: *mut u8,
    region: std::fs::File,
    info: VhostUserInflight,
    map: *mut u8,
    _kick: EventFd,
}

impl TrackedGuest {
    fn connect(port: &VhostPort) -> TrackedGuest {
        let (file, base) = guest_memory(c"inflight-guest");
        let (mut frontend, _) = negotiate(port, feature::VERSION_1);
        frontend
            .set_protocol_features(
                VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::INFLIGHT_SHMFD,
            )
            .unwrap();
        let (info, region) = frontend
            .get_inflight_fd(&VhostUserInflight::new(0, 0, 2, SIZE))
            .expect("GET_INFLIGHT_FD");
        // SAFETY: a shared mapping of the region the switch sized (`mmap_size` bytes of its
        // memfd), kept until the process ends.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                info.mmap_size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&region),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        TrackedGuest {
            frontend,
            file,
            base,
            region,
            info,
            map: map.cast(),
            _kick: EventFd::new(0).unwrap(),
        }
    }

    /// Writes `v` at `off` of vring 1's queue region.
    fn poke<T: Copy>(&self, off: usize, v: T) {
        let q = (self.info.mmap_size / u64::from(self.info.num_queues)) as usize;
        assert!(q + off + std::mem::size_of::<T>() <= self.info.mmap_size as usize);
        // SAFETY: inside the mapping (checked above); the switch reads it only with volatile
        // reads.
        unsafe { std::ptr::write_volatile(self.map.add(q + off).cast::<T>(), v) }
    }

    /// Sends the region back and sets the TX ring up on it.
    fn start(&mut self) {
        self.frontend
            .set_inflight_fd(&self.info, std::os::fd::AsRawFd::as_raw_fd(&self.region))
            .expect("SET_INFLIGHT_FD");
        send_mem_table(&mut self.frontend, &self.file, self.base);
        set_up_tx_ring(&mut self.frontend, self.base, AVAIL, USED, 0, &self._kick);
    }
}

#[test]
fn hostile_inflight_regions_are_refused_or_break_only_their_ring() {
    let dir = tempfile::tempdir().unwrap();
    let iterations = Arc::new(AtomicU64::new(0));
    let quiesce = quiesce(&iterations);
    let start = |name: &str| start_port(dir.path(), name, "", quiesce.clone());
    let (good_port, bad_port) = (start("good"), start("bad"));
    let worker = Worker::start(
        vec![good_port.rings().clone(), bad_port.rings().clone()],
        iterations.clone(),
    );
    let pump = Pump::start(Guest::connect(&good_port));
    let sent = pump.sent.clone();
    let good_rx = worker.received[0].clone();
    let good_caught_up = |what: &str| {
        let s = sent.load(Ordering::Relaxed);
        wait(what, || good_rx.load(Ordering::Relaxed) >= s);
    };
    let broken = || {
        bad_port
            .rings()
            .counters
            .broken_rings
            .load(Ordering::Relaxed)
    };

    // Regions that do not fit their claim: the message is refused, nothing changes.
    let mut g = TrackedGuest::connect(&bad_port);
    let mut small = g.info;
    small.mmap_size -= 1;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&g.region);
    assert!(
        g.frontend.set_inflight_fd(&small, fd).is_err(),
        "short region"
    );
    let mut many = g.info;
    many.num_queues = 64;
    many.mmap_size *= 32;
    assert!(
        g.frontend.set_inflight_fd(&many, fd).is_err(),
        "past the file"
    );
    let mut odd = g.info;
    odd.mmap_offset = 1;
    assert!(
        g.frontend.set_inflight_fd(&odd, fd).is_err(),
        "unaligned offset"
    );
    drop(g);
    good_caught_up("after refused regions");

    // Region states no switch writes (offsets: split queue region, 16-byte header, 16-byte
    // entries with `inflight` at 0, `next` at 6, `counter` at 8): the ring is refused and
    // counted, the good port forwards on.
    type Corruption<'a> = (&'a str, Box<dyn Fn(&TrackedGuest)>);
    let corrupt: Vec<Corruption> = vec![
        ("an inflight flag of 7", Box::new(|g| g.poke(16, 7u8))),
        (
            "two descriptors in flight with one counter",
            Box::new(|g| {
                for i in [3usize, 9] {
                    g.poke(16 + 16 * i, 1u8);
                    g.poke(16 + 16 * i + 8, 42u64);
                }
            }),
        ),
        (
            "a descriptor in flight the ring never offered",
            Box::new(|g| g.poke(16 + 16 * 5, 1u8)),
        ),
        (
            "a last batch whose next links loop",
            Box::new(|g| {
                g.poke(14, 0xfff0u16);
                g.poke(12, 2u16);
                g.poke(16 + 16 * 2 + 6, 2u16);
            }),
        ),
        (
            "a next link out of range",
            Box::new(|g| {
                g.poke(14, 0xfff0u16);
                g.poke(12, 2u16);
                g.poke(16 + 16 * 2 + 6, 60000u16);
            }),
        ),
        ("garbage desc_num", Box::new(|g| g.poke(10, 3u16))),
        ("an unknown version", Box::new(|g| g.poke(8, 9u16))),
    ];
    for (what, make) in &corrupt {
        let before = broken();
        let mut g = TrackedGuest::connect(&bad_port);
        // As a switch that ran the ring left it: version 1, desc_num = SIZE.
        g.poke(8, 1u16);
        g.poke(10, SIZE);
        make(&g);
        g.start();
        wait(what, || broken() > before);
        good_caught_up(what);
        drop(g);
    }

    // A clean region: the ring runs on it, tracked.
    let mut g = TrackedGuest::connect(&bad_port);
    g.start();
    wait("the tracked ring to run", || {
        bad_port.rings().up.load(Ordering::Relaxed)
    });
    let s0 = sent.load(Ordering::Relaxed);
    wait("more good traffic", || {
        good_rx.load(Ordering::Relaxed) >= s0 + 500
    });
    assert_eq!(broken(), corrupt.len() as u64);
    drop(g);
    drop(pump.finish());
    drop(worker);
}
