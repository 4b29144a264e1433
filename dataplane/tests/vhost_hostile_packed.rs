//! A malicious vhost-user frontend on *packed* rings (virtio 1.1) against native ports while
//! a worker thread forwards: the frontend negotiates `VIRTIO_F_RING_PACKED` through the
//! protocol, sets up a real descriptor ring in shared memory, then posts buffers outside
//! its memory, absurd lengths, device-writable TX buffers and indirect tables it did not
//! negotiate (each returned with length 0 and counted, the ring going on), swaps the memory
//! table under traffic (the ring resumes at its slot and wrap counter), and finally lies
//! about the ring: a chain that never ends, a buffer id past the ring, a chain continuing
//! into a slot of the wrong lap. Each lie breaks that ring and is counted in
//! `broken_rings`; a well-behaved packed port served by the same worker keeps moving frames
//! the whole time. No EAL: the worker is this test's own thread, as in `vhost_hostile.rs`.

mod common;

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use common::{
    guest_memory, negotiate, quiesce, send_mem_table, set_up_tx_ring, start_port, wait, Worker,
    BUFS, DESC, HDR, SIZE,
};
use heddle_dataplane::switch::config::MAX_FRAME;
use heddle_dataplane::vhost::packed::{DESC_F_AVAIL, DESC_F_USED};
use heddle_dataplane::vhost::port::VhostPort;
use heddle_dataplane::vhost::virtq::feature;
use vhost::vhost_user::Frontend;
use vmm_sys_util::eventfd::EventFd;

const DRIVER_EVENT: usize = 0x1000;
const DEVICE_EVENT: usize = 0x2000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// The frontend's side of one port: shared memory with the packed TX ring (vring 1).
struct Guest {
    file: std::fs::File,
    base: *mut u8,
    frontend: Frontend,
    /// Next slot to post, and its wrap counter.
    next: u16,
    wrap: bool,
    /// Next slot a used descriptor is expected in, and its wrap counter.
    used: u16,
    used_wrap: bool,
    /// Descriptors of the chain that starts at each slot.
    ndesc: Vec<u16>,
    /// Descriptors posted and not yet seen used.
    outstanding: usize,
    _kick: EventFd,
}

impl Guest {
    fn connect(port: &VhostPort) -> Guest {
        let (file, base) = guest_memory(c"hostile-packed");
        let (frontend, offered) = negotiate(port, feature::VERSION_1 | feature::RING_PACKED);
        assert_ne!(
            offered & feature::RING_PACKED,
            0,
            "packed rings are offered"
        );
        let mut g = Guest {
            file,
            base,
            frontend,
            next: 0,
            wrap: true,
            used: 0,
            used_wrap: true,
            ndesc: vec![0; usize::from(SIZE)],
            outstanding: 0,
            _kick: EventFd::new(0).unwrap(),
        };
        // A fresh mapping is zeroed: every descriptor reads "not available" for wrap 1.
        g.send_mem_table();
        // Slot 0, wrap counter 1.
        set_up_tx_ring(
            &mut g.frontend,
            g.base,
            DRIVER_EVENT,
            DEVICE_EVENT,
            0x8000,
            &g._kick,
        );
        g
    }

    fn send_mem_table(&mut self) {
        send_mem_table(&mut self.frontend, &self.file, self.base);
    }

    fn write<T: Copy>(&self, off: usize, v: T) {
        common::write(self.base, off, v);
    }

    fn flags(&self, slot: u16) -> &AtomicU16 {
        // SAFETY: the flags of descriptor `slot < SIZE`, 2-aligned, inside the mapping;
        // shared with the switch, which is what an atomic is for.
        unsafe { AtomicU16::from_ptr(self.base.add(DESC + 16 * usize::from(slot) + 14).cast()) }
    }

    fn avail_bits(wrap: bool) -> u16 {
        if wrap {
            DESC_F_AVAIL
        } else {
            DESC_F_USED
        }
    }

    /// Posts a chain of (addr, len, flags) with buffer `id`: every descriptor gets its
    /// slot's avail bits, except one at `lie_at`, which gets the other lap's; the first
    /// descriptor's flags are stored last (release).
    fn post(&mut self, descs: &[(u64, u32, u16)], id: u16, lie_at: Option<usize>) {
        let start = self.next;
        let mut first = 0;
        for (k, &(addr, len, flags)) in descs.iter().enumerate() {
            let off = DESC + 16 * usize::from(self.next);
            let wrap = if lie_at == Some(k) {
                !self.wrap
            } else {
                self.wrap
            };
            let f = flags | Self::avail_bits(wrap);
            self.write(off, addr);
            self.write(off + 8, len);
            self.write(off + 12, id);
            if k == 0 {
                first = f;
            } else {
                self.flags(self.next).store(f, Ordering::Relaxed);
            }
            self.next += 1;
            if self.next == SIZE {
                self.next = 0;
                self.wrap = !self.wrap;
            }
        }
        self.ndesc[usize::from(start)] = descs.len() as u16;
        self.outstanding += descs.len();
        self.flags(start).store(first, Ordering::Release);
    }

    /// A good frame: one descriptor with the virtio-net header and 60 bytes.
    fn send_good(&mut self) {
        let slot = self.next;
        let buf = BUFS + 2048 * usize::from(slot);
        for k in 0..HDR {
            self.write::<u8>(buf + k, 0);
        }
        for k in 0..60 {
            self.write::<u8>(buf + HDR + k, if k < 6 { 0xff } else { k as u8 });
        }
        self.post(&[(buf as u64, (HDR + 60) as u32, 0)], slot, None);
    }

    /// Takes the used descriptors the switch wrote; true when every chain came back.
    fn reap(&mut self) -> bool {
        loop {
            let f = self.flags(self.used).load(Ordering::Acquire);
            let used = (f & DESC_F_AVAIL != 0) == self.used_wrap
                && (f & DESC_F_USED != 0) == self.used_wrap;
            if !used || self.outstanding == 0 {
                return self.outstanding == 0;
            }
            let n = self.ndesc[usize::from(self.used)].max(1);
            self.outstanding -= usize::from(n);
            for _ in 0..n {
                self.used += 1;
                if self.used == SIZE {
                    self.used = 0;
                    self.used_wrap = !self.used_wrap;
                }
            }
        }
    }
}

/// Writes a (hostile) chain.
type WriteChain = Box<dyn Fn(&mut Guest)>;

#[test]
fn a_hostile_packed_guest_is_contained_while_a_good_one_keeps_forwarding() {
    let dir = tempfile::tempdir().unwrap();
    let iterations = Arc::new(AtomicU64::new(0));
    let quiesce = quiesce(&iterations);
    let start = |name: &str| start_port(dir.path(), name, ",packed=1", quiesce.clone());
    let (good_port, bad_port) = (start("good"), start("bad"));
    let worker = Worker::start(
        vec![good_port.rings().clone(), bad_port.rings().clone()],
        iterations.clone(),
    );
    let mut good = Guest::connect(&good_port);
    let mut bad = Guest::connect(&bad_port);
    let good_rx = worker.received[0].clone();
    let bad_rx = worker.received[1].clone();

    // Keeps the good guest sending, one frame whenever the ring has room.
    let pump = |good: &mut Guest, n: usize| {
        for _ in 0..n {
            wait("room in the good ring", || {
                good.reap();
                good.outstanding < usize::from(SIZE)
            });
            good.send_good();
        }
    };
    pump(&mut good, 1000);
    wait("the good guest's frames", || {
        good_rx.load(Ordering::Relaxed) >= 1000
    });
    assert!(good_port.rings().packed.load(Ordering::Relaxed));
    bad.send_good();
    wait("the bad guest's first good frame", || {
        bad_rx.load(Ordering::Relaxed) == 1
    });

    let counters = &bad_port.rings().counters;
    let bad_chains =
        || counters.bad_chains.load(Ordering::Relaxed) + counters.oversize.load(Ordering::Relaxed);
    let buf = BUFS as u64;
    let hostile: Vec<(&str, WriteChain)> = vec![
        (
            "address outside memory",
            Box::new(|g| g.post(&[(1 << 40, 100, 0)], 1, None)),
        ),
        (
            "absurd length",
            Box::new(move |g| g.post(&[(buf, u32::MAX, 0)], 2, None)),
        ),
        (
            "address + length overflows",
            Box::new(|g| g.post(&[(u64::MAX - 10, 100, 0)], 3, None)),
        ),
        (
            "write-only TX buffer",
            Box::new(move |g| g.post(&[(buf, 100, F_WRITE)], 4, None)),
        ),
        (
            "indirect table not negotiated",
            Box::new(move |g| g.post(&[(buf, 64, F_INDIRECT)], 5, None)),
        ),
        (
            "shorter than the header",
            Box::new(move |g| g.post(&[(buf, 4, 0)], 6, None)),
        ),
        (
            "second buffer outside memory",
            Box::new(move |g| g.post(&[(buf, 12, F_NEXT), (1 << 40, 60, 0)], 7, None)),
        ),
        (
            "one byte longer than the largest frame (9234 bytes)",
            Box::new(move |g| {
                let last = (HDR + MAX_FRAME + 1 - 8000) as u32;
                g.post(
                    &[
                        (buf, 4000, F_NEXT),
                        (buf + 4000, 4000, F_NEXT),
                        (buf + 8000, last, 0),
                    ],
                    8,
                    None,
                )
            }),
        ),
    ];
    // The largest frame the switch carries, in three descriptors: taken whole.
    {
        let b0 = bad_rx.load(Ordering::Relaxed);
        let last = (HDR + MAX_FRAME - 8000) as u32;
        bad.post(
            &[
                (buf, 4000, F_NEXT),
                (buf + 4000, 4000, F_NEXT),
                (buf + 8000, last, 0),
            ],
            9,
            None,
        );
        wait("a jumbo frame", || bad_rx.load(Ordering::Relaxed) == b0 + 1);
        wait("the jumbo frame's chain", || bad.reap());
    }
    for (what, make) in &hostile {
        let before = bad_chains();
        make(&mut bad);
        wait(what, || bad_chains() > before);
        // The chain came back, and the good guest never stopped.
        wait(what, || bad.reap());
        let g0 = good_rx.load(Ordering::Relaxed);
        pump(&mut good, 100);
        wait(what, || good_rx.load(Ordering::Relaxed) >= g0 + 100);
        // A good frame right after the bad chain is still served.
        let b0 = bad_rx.load(Ordering::Relaxed);
        bad.send_good();
        wait(what, || bad_rx.load(Ordering::Relaxed) == b0 + 1);
    }
    assert_eq!(bad_chains(), hostile.len() as u64);

    // Memory table swapped under traffic (past a few ring wraps): the rings stop, remap and
    // resume at their slot and wrap counter.
    for _ in 0..20 {
        pump(&mut good, 50);
        bad.send_good();
        bad.send_mem_table();
        good.send_mem_table();
    }
    let g0 = good_rx.load(Ordering::Relaxed);
    pump(&mut good, 500);
    wait("traffic after memory table swaps", || {
        good_rx.load(Ordering::Relaxed) >= g0 + 500
    });
    wait("the bad guest's frames across swaps", || bad.reap());
    assert_eq!(counters.broken_rings.load(Ordering::Relaxed), 0);

    // Ring lies: each breaks the ring (counted), the good port forwards on, and the broken
    // ring serves nothing until the frontend sets it up again.
    let lies: Vec<(&str, WriteChain)> = vec![
        (
            "a chain that never ends",
            Box::new(move |g| {
                let descs = vec![(buf, 100, F_NEXT); usize::from(SIZE)];
                g.post(&descs, 0, None)
            }),
        ),
        (
            "a buffer id past the ring",
            Box::new(move |g| g.post(&[(buf, 72, 0)], SIZE, None)),
        ),
        (
            "a chain continuing into a slot of the wrong lap",
            Box::new(move |g| g.post(&[(buf, 12, F_NEXT), (buf + 12, 60, 0)], 0, Some(1))),
        ),
    ];
    for (k, (what, lie)) in lies.iter().enumerate() {
        if k > 0 {
            // The frontend sets the ring up again (as after a reset): it runs again.
            // The port serves one connection at a time: close the old one first.
            drop(bad);
            bad = Guest::connect(&bad_port);
            let b0 = bad_rx.load(Ordering::Relaxed);
            bad.send_good();
            wait("the reconnected guest's frame", || {
                bad_rx.load(Ordering::Relaxed) == b0 + 1
            });
        }
        let broken = counters.broken_rings.load(Ordering::Relaxed);
        lie(&mut bad);
        wait(what, || {
            counters.broken_rings.load(Ordering::Relaxed) == broken + 1
        });
        let b0 = bad_rx.load(Ordering::Relaxed);
        let g0 = good_rx.load(Ordering::Relaxed);
        pump(&mut good, 300);
        bad.send_good();
        wait(what, || good_rx.load(Ordering::Relaxed) >= g0 + 300);
        assert_eq!(
            bad_rx.load(Ordering::Relaxed),
            b0,
            "{what}: a broken ring is not served"
        );
        assert_eq!(
            counters.broken_rings.load(Ordering::Relaxed),
            broken + 1,
            "{what}: counted once"
        );
    }
    eprintln!(
        "good guest frames {}, bad guest frames {}, bad chains {}, broken rings {}",
        good_rx.load(Ordering::Relaxed),
        bad_rx.load(Ordering::Relaxed),
        bad_chains(),
        counters.broken_rings.load(Ordering::Relaxed)
    );
    assert_eq!(
        good_port
            .rings()
            .counters
            .bad_chains
            .load(Ordering::Relaxed),
        0
    );
    assert_eq!(
        good_port
            .rings()
            .counters
            .broken_rings
            .load(Ordering::Relaxed),
        0
    );
    drop(worker);
}
