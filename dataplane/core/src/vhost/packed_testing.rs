//! Test doubles for the packed ring: an in-process virtio 1.1 *driver* ([`PackedDriver`])
//! over a memfd mapped through [`GuestMemory::map`](super::memory::GuestMemory::map), and
//! the packed-ring fuzz entry point [`fuzz_packed`]. Used by unit tests, the fuzz target
//! and the criterion benches; never by the switch itself. The packet pool and frame types
//! are [`super::testing`]'s.
//!
//! The driver lays out one region: descriptor ring, driver and device event areas, one
//! indirect table per buffer id and one data slot per buffer id. Buffer ids come from a free
//! list; descriptors are used in ring order, with the wrap counter's flags, and the first
//! descriptor of a chain is published last (release store of its flags), as the spec asks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, Ordering};

use super::packed::{PackedQueue, DESC_F_AVAIL, DESC_F_USED};
use super::testing::{
    cut, desc_bytes, fuzz_features, next_frame, round_up, tx_chain, FuzzMemory, RxFrame, TxLayout,
    UsedElem, VecPacket, VecPool, F_INDIRECT, F_NEXT, F_WRITE, MEM, UVA,
};
pub use super::testing::{DriverMemory, GPA_BASE, INDIRECT_MAX, UVA_BASE};
use super::virtq::{feature, QueueStats, RingAddrs, RxPool};
use crate::switch::io::{Burst, Packet};

/// A packed descriptor as a (hostile) test writes it; the driver adds the wrap flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackedDesc {
    /// Guest-physical buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// Buffer id.
    pub id: u16,
    /// `F_NEXT | F_WRITE | F_INDIRECT` (the driver sets `AVAIL`/`USED`).
    pub flags: u16,
}

#[derive(Clone, Default)]
struct Chain {
    ndesc: u16,
    write: bool,
    indirect: bool,
    bufs: Vec<(u64, u32)>,
}

/// An in-process packed-ring virtio driver for one queue.
pub struct PackedDriver {
    /// The memory (`mem`, its file, the slots), reached through `Deref`.
    space: DriverMemory,
    features: u64,
    base: u16,
    drv_off: u64,
    dev_off: u64,
    /// Next slot the driver fills, and its wrap counter.
    next: u16,
    wrap: bool,
    /// Next slot the driver expects a used descriptor in, and its wrap counter.
    used: u16,
    used_wrap: bool,
    free_ids: VecDeque<u16>,
    free_descs: usize,
    chains: Vec<Chain>,
    /// Ids reaped by `recycle`.
    spare: Vec<u16>,
}

impl std::ops::Deref for PackedDriver {
    type Target = DriverMemory;

    fn deref(&self) -> &DriverMemory {
        &self.space
    }
}

impl PackedDriver {
    /// A driver for a packed queue of `size`, starting at slot 0 with wrap counter 1, with
    /// 16 KiB data slots.
    pub fn new(size: u16, features: u64) -> PackedDriver {
        PackedDriver::with(size, features, 0x8000, 16384)
    }

    /// A driver whose ring starts at `base` (slot in bits 0-14, wrap counter in bit 15, as
    /// `SET_VRING_BASE` sends it), with `slot`-byte data slots per buffer id.
    pub fn with(size: u16, features: u64, base: u16, slot: u32) -> PackedDriver {
        let n = u64::from(size);
        let drv_off = round_up(16 * n, 64);
        let dev_off = drv_off + 64;
        let space = DriverMemory::new(size, features, dev_off + 64, slot);
        let wrap = base & 0x8000 != 0;
        let start = base & 0x7fff;
        let d = PackedDriver {
            space,
            features: features | feature::RING_PACKED,
            base,
            drv_off,
            dev_off,
            next: start,
            wrap,
            used: start,
            used_wrap: wrap,
            free_ids: (0..size).collect(),
            free_descs: usize::from(size),
            chains: vec![Chain::default(); usize::from(size)],
            spare: Vec::with_capacity(usize::from(size)),
        };
        // As a ring that ran up to `base`: slots before it were used in this lap, the rest
        // in the previous one; nothing is available, or used, until the driver posts it.
        let used_in = |w: bool| if w { DESC_F_AVAIL | DESC_F_USED } else { 0 };
        for i in 0..size {
            let lap = if i < start { wrap } else { !wrap };
            d.write_u16(d.desc_gpa(i) + 14, used_in(lap));
        }
        d
    }

    /// The ring addresses (driver area as "avail", device area as "used").
    pub fn addrs(&self) -> RingAddrs {
        RingAddrs {
            size: self.size,
            desc_uva: UVA_BASE,
            avail_uva: UVA_BASE + self.drv_off,
            used_uva: UVA_BASE + self.dev_off,
        }
    }

    /// The device side of this queue.
    pub fn queue(&self) -> PackedQueue {
        PackedQueue::new(&self.mem, &self.addrs(), self.base, self.features).expect("test rings")
    }

    /// The features the queue is built with (`RING_PACKED` included).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Guest-physical address of ring descriptor `i`.
    pub fn desc_gpa(&self, i: u16) -> u64 {
        GPA_BASE + 16 * u64::from(i)
    }

    /// The driver's next slot and wrap counter, encoded as `GET_VRING_BASE` does.
    pub fn avail_position(&self) -> u16 {
        self.next | (u16::from(self.wrap) << 15)
    }

    /// Free descriptors (ring slots not posted or not yet reaped).
    pub fn free_descs(&self) -> usize {
        self.free_descs
    }

    /// Free buffer ids.
    pub fn free_ids(&self) -> usize {
        self.free_ids.len()
    }

    /// Stores a descriptor's flags with release (publishing it).
    fn store_flags(&self, i: u16, flags: u16) {
        let p = self.ptr(self.desc_gpa(i) + 14, 2);
        // SAFETY: 2 mapped bytes, 2-aligned (descriptors are 16-byte aligned).
        unsafe { AtomicU16::from_ptr(p.cast::<u16>()) }.store(flags.to_le(), Ordering::Release);
    }

    fn load_flags(&self, i: u16) -> u16 {
        let p = self.ptr(self.desc_gpa(i) + 14, 2);
        // SAFETY: as in `store_flags`.
        u16::from_le(unsafe { AtomicU16::from_ptr(p.cast::<u16>()) }.load(Ordering::Acquire))
    }

    /// Writes a descriptor (all fields, flags exactly as given) anywhere: a ring slot
    /// (hostile tests) or an indirect table entry.
    pub fn write_desc_at(&self, gpa: u64, d: PackedDesc) {
        let b = desc_bytes(d.addr, d.len, d.id, d.flags);
        self.write_bytes(gpa, &b);
    }

    /// The avail/used flag bits of a descriptor made available under wrap counter `wrap`.
    pub fn avail_bits(wrap: bool) -> u16 {
        if wrap {
            DESC_F_AVAIL
        } else {
            DESC_F_USED
        }
    }

    /// Posts `descs` as one chain at the driver's position: each gets the avail bits of its
    /// slot's wrap counter (unless `lie_at` names it: that one gets the other lap's bits),
    /// the first is published last. No checks (hostile tests); the chain's length is
    /// recorded for its last descriptor's id when that id is in range, so `reap` can follow.
    pub fn post_descs(&mut self, descs: &[PackedDesc], lie_at: Option<usize>) {
        self.write_chain(descs, lie_at);
        if let Some(last) = descs.last() {
            if let Some(c) = self.chains.get_mut(usize::from(last.id)) {
                *c = Chain {
                    ndesc: descs.len() as u16,
                    ..Chain::default()
                };
            }
            if let Some(p) = self.free_ids.iter().position(|&f| f == last.id) {
                self.free_ids.remove(p);
            }
        }
    }

    /// Writes `descs` at the driver's position with their slots' avail bits, the first
    /// descriptor's flags last (release), and moves the position on.
    fn write_chain(&mut self, descs: &[PackedDesc], lie_at: Option<usize>) {
        let start = self.next;
        let mut first_flags = 0;
        for (k, d) in descs.iter().enumerate() {
            let wrap = if lie_at == Some(k) {
                !self.wrap
            } else {
                self.wrap
            };
            let mut dd = *d;
            dd.flags = (d.flags & !(DESC_F_AVAIL | DESC_F_USED)) | Self::avail_bits(wrap);
            if k == 0 {
                first_flags = dd.flags;
                dd.flags = self.load_flags(self.next);
            }
            self.write_desc_at(self.desc_gpa(self.next), dd);
            self.step();
        }
        if !descs.is_empty() {
            self.store_flags(start, first_flags);
        }
        self.free_descs = self.free_descs.saturating_sub(descs.len());
    }

    fn step(&mut self) {
        self.next += 1;
        if self.next == self.size {
            self.next = 0;
            self.wrap = !self.wrap;
        }
    }

    /// Builds a chain of buffers of these lengths inside its id's slot (device-writable when
    /// `write`), directly or through the id's indirect table; fills it with `bytes` (when
    /// given) and makes it available. None when ids, descriptors or slot space run out.
    fn post(
        &mut self,
        lens: &[u32],
        write: bool,
        indirect: bool,
        bytes: Option<&[u8]>,
    ) -> Option<u16> {
        let total: u64 = lens.iter().map(|&l| u64::from(l)).sum();
        let ndesc = if indirect { 1 } else { lens.len() };
        if total > self.slot || self.free_descs < ndesc || lens.is_empty() {
            return None;
        }
        if indirect && lens.len() > INDIRECT_MAX {
            return None;
        }
        let id = self.free_ids.pop_front()?;
        let mut gpa = self.slot_gpa(id);
        if let Some(b) = bytes {
            self.write_bytes(gpa, b);
        }
        let mut bufs = Vec::with_capacity(lens.len());
        for &len in lens {
            bufs.push((gpa, len));
            gpa += u64::from(len);
        }
        self.chains[usize::from(id)] = Chain {
            ndesc: ndesc as u16,
            write,
            indirect,
            bufs,
        };
        self.publish(id);
        Some(id)
    }

    /// Writes chain `id`'s descriptors at the driver's position and publishes them.
    fn publish(&mut self, id: u16) {
        let c = &self.chains[usize::from(id)];
        let wflag = if c.write { F_WRITE } else { 0 };
        let descs: Vec<PackedDesc> = if c.indirect {
            let table = self.indirect_gpa(id);
            for (i, &(addr, len)) in c.bufs.iter().enumerate() {
                self.write_desc_at(
                    table + 16 * i as u64,
                    PackedDesc {
                        addr,
                        len,
                        id: 0,
                        flags: wflag,
                    },
                );
            }
            vec![PackedDesc {
                addr: table,
                len: 16 * c.bufs.len() as u32,
                id,
                flags: F_INDIRECT,
            }]
        } else {
            let n = c.bufs.len();
            c.bufs
                .iter()
                .enumerate()
                .map(|(i, &(addr, len))| PackedDesc {
                    addr,
                    len,
                    id,
                    flags: wflag | if i + 1 < n { F_NEXT } else { 0 },
                })
                .collect()
        };
        self.write_chain(&descs, None);
    }

    /// Posts `frame` for the device to take (guest TX), behind a zeroed header.
    pub fn post_tx(&mut self, frame: &[u8], layout: TxLayout) -> Option<u16> {
        let (bytes, lens, indirect) = tx_chain(self.hdr_len, frame, layout);
        self.post(&lens, false, indirect, Some(&bytes))
    }

    /// Posts a device-writable buffer of `len` bytes cut into `pieces` descriptors (guest RX).
    pub fn post_rx(&mut self, len: u32, pieces: usize) -> Option<u16> {
        self.post(&cut(len as usize, pieces), true, false, None)
    }

    /// As `post_rx`, through an indirect table.
    pub fn post_rx_indirect(&mut self, len: u32, pieces: usize) -> Option<u16> {
        self.post(&cut(len as usize, pieces), true, true, None)
    }

    /// True when the descriptor at the driver's used cursor is used.
    fn used_ready(&self) -> bool {
        let f = self.load_flags(self.used);
        (f & DESC_F_AVAIL != 0) == self.used_wrap && (f & DESC_F_USED != 0) == self.used_wrap
    }

    /// Moves the used cursor past the chain of `id` (as many descriptors as the driver
    /// recorded for it) and counts those descriptors free again.
    fn pass_used(&mut self, id: u16) {
        let ndesc = self
            .chains
            .get(usize::from(id))
            .map_or(1, |c| c.ndesc.max(1));
        for _ in 0..ndesc {
            self.used += 1;
            if self.used == self.size {
                self.used = 0;
                self.used_wrap = !self.used_wrap;
            }
        }
        self.free_descs += usize::from(ndesc);
    }

    /// Takes every new used descriptor (moving the cursor by the chain length the driver
    /// recorded for its id) and frees its id and descriptors; the buffers stay readable with
    /// `chain_bytes` until the id is posted again.
    pub fn reap(&mut self) -> Vec<UsedElem> {
        let mut out = Vec::new();
        while out.len() < usize::from(self.size) && self.used_ready() {
            let b = self.read_bytes(self.desc_gpa(self.used), 16);
            let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
            let id = u16::from_le_bytes([b[12], b[13]]);
            self.pass_used(id);
            if id < self.size && !self.free_ids.contains(&id) {
                self.free_ids.push_back(id);
            }
            out.push(UsedElem {
                id: u32::from(id),
                len,
            });
        }
        out
    }

    /// The bytes the device wrote into the chain of `e`.
    pub fn chain_bytes(&self, e: UsedElem) -> Vec<u8> {
        let bufs = self
            .chains
            .get(e.id as usize)
            .map_or(&[][..], |c| &c.bufs[..]);
        self.read_bufs(bufs, e.len as usize)
    }

    /// Reaps used descriptors and reassembles the frames the device delivered (following
    /// `num_buffers` with `MRG_RXBUF`).
    pub fn recv(&mut self) -> Vec<RxFrame> {
        let elems = self.reap();
        let mrg = self.features & feature::MRG_RXBUF != 0;
        let mut frames = Vec::new();
        let mut i = 0;
        while i < elems.len() {
            let (frame, take) = next_frame(&elems[i..], mrg, self.hdr_len, |e| self.chain_bytes(e));
            i += take;
            frames.push(frame);
        }
        frames
    }

    /// Bench helper: takes every used descriptor and posts the same chains again.
    pub fn recycle(&mut self) {
        self.spare.clear();
        while self.used_ready() {
            let b = self.read_bytes(self.desc_gpa(self.used) + 12, 2);
            let id = u16::from_le_bytes([b[0], b[1]]);
            self.pass_used(id);
            self.spare.push(id);
        }
        let spare = std::mem::take(&mut self.spare);
        for &id in &spare {
            self.publish(id);
        }
        self.spare = spare;
    }

    /// Driver area: `flags` (enable 0, disable 1, desc 2) and `off_wrap`.
    pub fn set_driver_event(&self, flags: u16, off_wrap: u16) {
        self.write_u16(GPA_BASE + self.drv_off, off_wrap);
        self.write_u16(GPA_BASE + self.drv_off + 2, flags);
    }

    /// Device area `flags` (what the device asks of kicks).
    pub fn device_event_flags(&self) -> u16 {
        self.read_u16(GPA_BASE + self.dev_off + 2)
    }
}

/// Runs a packed queue's dequeue side until it takes nothing more; returns the frames.
pub fn drain_tx_packed(
    q: &mut PackedQueue,
    driver: &PackedDriver,
    pool: &mut VecPool,
    stats: &mut QueueStats,
) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut burst = Burst::new();
    while !q.is_broken() {
        let before = q.last_avail_idx();
        q.dequeue(&driver.mem, pool, &mut burst, stats);
        let got: Vec<VecPacket> = burst.drain().collect();
        frames.extend(got.iter().map(|p| p.data().to_vec()));
        pool.give_back(got);
        if q.last_avail_idx() == before {
            break;
        }
    }
    frames
}

/// Builds a small guest memory and packed queue from `data` (a configuration byte: queue
/// size, features, "tame" mode; then the base, the driver area, descriptors and buffer
/// bytes) and runs dequeue, enqueue and the notification calls on it, checking what a
/// hostile ring must not break: no panic; per call, used descriptors are written only in
/// slots the device took (the used position moves at most one ring's worth, and never past
/// the avail position); a broken queue stays broken and does nothing. Panics (a fuzz
/// finding) when an invariant fails.
pub fn fuzz_packed(data: &[u8]) {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let size = 1u16 << (cfg & 7);
    let n = usize::from(size);
    let features = fuzz_features(cfg, feature::RING_PACKED);
    // Tame: buffers in the data area, ids and flags near legal, so chains are often valid.
    let tame = cfg & 128 != 0;
    let (drv_off, dev_off, data_off) = (2048usize, 2112usize, 4096usize);
    let mem_buf = FuzzMemory::new();
    let wr = |off: usize, bytes: &[u8]| mem_buf.write(off, bytes);
    let mut at = 0usize;
    let mut byte = || {
        let b = rest.get(at).copied().unwrap_or(0);
        at += 1;
        b
    };
    let start = u16::from_le_bytes([byte(), byte()]);
    let start = if tame {
        (start & 0x8000) | ((start & 0x7fff) % size)
    } else {
        start
    };
    let off_wrap = u16::from_le_bytes([byte(), byte()]);
    let ev_flags = u16::from(byte() % 4);
    wr(drv_off, &off_wrap.to_le_bytes());
    wr(drv_off + 2, &ev_flags.to_le_bytes());
    for i in 0..n {
        let addr = u64::from(u16::from_le_bytes([byte(), byte()]));
        let len = u32::from(u16::from_le_bytes([byte(), byte()]));
        let id = u16::from(byte());
        let f = byte();
        let fhi = byte();
        let (addr, len, id) = if tame {
            (
                data_off as u64 + addr % (MEM - data_off) as u64,
                len % 4096,
                id % (size + 1),
            )
        } else {
            let addr = if fhi & 0x40 != 0 {
                u64::MAX - addr
            } else {
                addr
            };
            let len = if fhi & 0x20 != 0 { u32::MAX - len } else { len };
            (addr, len, id)
        };
        // Low bits: NEXT, WRITE, INDIRECT; bits 3 and 4 pick AVAIL and USED.
        let flags = u16::from(f & 7)
            | if f & 8 != 0 { DESC_F_AVAIL } else { 0 }
            | if f & 16 != 0 { DESC_F_USED } else { 0 };
        let d = desc_bytes(addr, len, id, flags);
        wr(16 * i, &d);
    }
    let left = rest.get(at..).unwrap_or(&[]);
    wr(data_off, &left[..left.len().min(MEM - data_off)]);
    // SAFETY: `mem_buf` outlives `mem` and the queue (all dropped at the end of this
    // function) and is only touched through raw pointers meanwhile.
    let mem = unsafe { mem_buf.guest() };
    let addrs = RingAddrs {
        size,
        desc_uva: UVA,
        avail_uva: UVA + drv_off as u64,
        used_uva: UVA + dev_off as u64,
    };
    let Ok(mut q) = PackedQueue::new(&mem, &addrs, start, features) else {
        assert!(
            (start & 0x7fff) >= size,
            "only a base past the ring is refused"
        );
        return;
    };
    if cfg & 1 != 0 {
        q.suppress_notifications();
    }
    let m = 2 * u32::from(size);
    let check = |q: &PackedQueue, used_before: u32, avail_before: u16| {
        let moved = (q.used_position() + m - used_before) % m;
        let avail = q.last_avail_idx();
        let took = (linear_base(size, avail) + m - linear_base(size, avail_before)) % m;
        assert!(
            moved <= took,
            "used moved {moved} past the {took} slots taken"
        );
        if q.is_broken() {
            return;
        }
        assert_eq!(
            q.used_position(),
            linear_base(size, avail),
            "used position caught up with avail after the call"
        );
    };
    let mut stats = QueueStats::default();
    let mut pool = VecPool::new(2048, 8 + usize::from(cfg >> 4));
    let mut burst: Burst<VecPacket> = Burst::new();
    let (ub, ab) = (q.used_position(), q.last_avail_idx());
    q.dequeue(&mem, &mut pool, &mut burst, &mut stats);
    check(&q, ub, ab);
    for p in burst.as_slice() {
        assert!(p.len() <= pool.max_len());
    }
    let _ = q.needs_interrupt();
    let sizes = [60usize, 1514, 9000, 1, 0];
    let pick = usize::from(cfg) % sizes.len();
    let pkts: Vec<VecPacket> = (0..4)
        .map(|i| {
            let l = sizes[(pick + i) % sizes.len()];
            let mut p = VecPool::new(l.max(1), 1).alloc(l).expect("one packet");
            p.data_mut().fill(0xa5);
            p
        })
        .collect();
    let (ub, ab) = (q.used_position(), q.last_avail_idx());
    let was_broken = q.is_broken();
    let done = q.enqueue(&mem, &pkts, &mut stats);
    assert!(done <= pkts.len());
    if was_broken {
        assert_eq!(done, 0, "a broken queue does nothing");
    }
    check(&q, ub, ab);
    let _ = q.needs_interrupt();
    let (ub, ab) = (q.used_position(), q.last_avail_idx());
    burst.drain().for_each(drop);
    q.dequeue(&mem, &mut pool, &mut burst, &mut stats);
    check(&q, ub, ab);
    drop(q);
    drop(mem);
    drop(mem_buf);
}

/// `GET_VRING_BASE`'s encoding as a position modulo `2 * size` (as
/// [`PackedQueue::used_position`]).
fn linear_base(size: u16, base: u16) -> u32 {
    u32::from(base & 0x7fff)
        + if base & 0x8000 != 0 {
            0
        } else {
            u32::from(size)
        }
}
