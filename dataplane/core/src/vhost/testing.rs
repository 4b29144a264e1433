//! Test doubles for the vhost data path: an in-process virtio-net *driver* ([`Driver`])
//! over a memfd mapped through [`GuestMemory::map`], a heap packet pool ([`VecPool`]) and
//! the fuzz entry point [`fuzz_rings`]. Used by unit tests, the fuzz target and the
//! criterion benches; never by the switch itself.
//!
//! The driver lays out one region: descriptor table, available ring, used ring, one
//! indirect table per descriptor and one data slot per descriptor. A chain's buffers are
//! carved from the slot of its head, so chains never share memory.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use super::memory::{GuestMemory, RegionSpec};
use super::virtq::{feature, QueueStats, RingAddrs, RxPool, SplitQueue};
use crate::switch::io::{Burst, Packet};

/// Descriptor continues in `next`.
pub const F_NEXT: u16 = 1;
/// Device-writable buffer.
pub const F_WRITE: u16 = 2;
/// Buffer is a table of descriptors.
pub const F_INDIRECT: u16 = 4;
/// Driver's `avail.flags`: no interrupts please.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Guest-physical address of the driver's memory (not 0, not the frontend address, so
/// a mix-up of address spaces shows).
pub const GPA_BASE: u64 = 0x4000_0000;
/// Frontend-virtual address of the same memory.
pub const UVA_BASE: u64 = 0x7f12_3400_0000;
/// Entries of each per-head indirect table.
pub const INDIRECT_MAX: usize = 16;

/// A descriptor as the driver writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest-physical buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `F_NEXT | F_WRITE | F_INDIRECT`.
    pub flags: u16,
    /// Next descriptor when `F_NEXT`.
    pub next: u16,
}

/// One used ring element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Head of the chain returned.
    pub id: u32,
    /// Bytes the device wrote.
    pub len: u32,
}

/// How a TX chain spreads the virtio-net header and the frame over descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxLayout {
    /// Header and frame in one descriptor.
    Joined,
    /// Header in its own descriptor, the frame in a second.
    SplitHeader,
    /// Header in its own descriptor, the frame cut into this many descriptors.
    Pieces(usize),
    /// An indirect table: header, then the frame cut into this many entries.
    Indirect(usize),
}

/// A frame the driver received, with its header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxFrame {
    /// The virtio-net header as the device wrote it.
    pub header: Vec<u8>,
    /// `num_buffers` from the header (1 when the header has none).
    pub num_buffers: u16,
    /// The frame.
    pub frame: Vec<u8>,
}

#[derive(Clone, Default)]
struct Chain {
    descs: Vec<u16>,
    bufs: Vec<(u64, u32)>,
}

/// An in-process virtio driver for one queue.
pub struct Driver {
    /// The memory (`mem`, its file, the slots), reached through `Deref`.
    space: DriverMemory,
    features: u64,
    base: u16,
    avail_off: u64,
    used_off: u64,
    free: VecDeque<u16>,
    chains: Vec<Chain>,
    avail_idx: u16,
    last_used: u16,
    /// Heads whose used entry the driver reaped but did not free (`recycle`).
    spare: Vec<u16>,
}

/// The part of a test driver's memory both ring layouts share: one memfd region at
/// [`GPA_BASE`] (frontend address [`UVA_BASE`]) mapped through [`GuestMemory::map`]; the
/// rings at its start, then one indirect table and one data slot per descriptor (split) or
/// buffer id (packed). [`Driver`] and the packed driver reach it through `Deref`.
pub struct DriverMemory {
    /// The memory, as the device (the switch) sees it; shared so a device thread can run
    /// against the driver concurrently.
    pub mem: Arc<GuestMemory>,
    /// The memfd behind `mem` (what a frontend sends in `SET_MEM_TABLE`).
    file: File,
    pub(super) size: u16,
    pub(super) hdr_len: usize,
    pub(super) slot: u64,
    ind_off: u64,
    data_off: u64,
    end: u64,
}

pub(super) fn round_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Virtio-net header length for `features`.
pub(super) fn header_len(features: u64) -> usize {
    if features & (feature::VERSION_1 | feature::MRG_RXBUF) != 0 {
        12
    } else {
        10
    }
}

impl DriverMemory {
    /// Maps a region for a queue of `size` with `features`, whose rings take its first
    /// `rings` bytes, with an indirect table and a `slot`-byte data slot (rounded up to 64)
    /// for each of the `size` descriptors or ids.
    pub(super) fn new(size: u16, features: u64, rings: u64, slot: u32) -> DriverMemory {
        let n = u64::from(size);
        let slot = round_up(u64::from(slot), 64);
        let ind_off = round_up(rings, 4096);
        let data_off = round_up(ind_off + n * 16 * INDIRECT_MAX as u64, 4096);
        let end = data_off + n * slot;
        let spec = RegionSpec {
            guest_phys_addr: GPA_BASE,
            size: end,
            user_addr: UVA_BASE,
            mmap_offset: 0,
        };
        let file = memfd(end);
        let dup = file.try_clone().expect("dup the test memfd");
        let mem = Arc::new(GuestMemory::map(vec![(spec, dup)]).expect("map test memory"));
        DriverMemory {
            mem,
            file,
            size,
            hdr_len: header_len(features),
            slot,
            ind_off,
            data_off,
            end,
        }
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Virtio-net header length for the features.
    pub fn header_len(&self) -> usize {
        self.hdr_len
    }

    /// The memory region as a frontend describes it in `SET_MEM_TABLE`, with its file.
    pub fn region(&self) -> (RegionSpec, File) {
        let spec = RegionSpec {
            guest_phys_addr: GPA_BASE,
            size: self.end,
            user_addr: UVA_BASE,
            mmap_offset: 0,
        };
        (spec, self.file.try_clone().expect("dup the test memfd"))
    }

    /// First guest-physical address past the memory.
    pub fn end_gpa(&self) -> u64 {
        GPA_BASE + self.end
    }

    /// Guest-physical address of descriptor (split) or buffer id (packed) `i`'s data slot.
    pub fn slot_gpa(&self, i: u16) -> u64 {
        GPA_BASE + self.data_off + u64::from(i) * self.slot
    }

    /// Guest-physical address of descriptor or buffer id `i`'s indirect table.
    pub fn indirect_gpa(&self, i: u16) -> u64 {
        GPA_BASE + self.ind_off + u64::from(i) * 16 * INDIRECT_MAX as u64
    }

    pub(super) fn ptr(&self, gpa: u64, len: usize) -> *mut u8 {
        self.mem
            .translate_gpa(gpa, len as u64)
            .expect("driver address inside its memory")
            .as_ptr()
    }

    /// Writes `bytes` at `gpa`.
    pub fn write_bytes(&self, gpa: u64, bytes: &[u8]) {
        let p = self.ptr(gpa, bytes.len());
        // SAFETY: `p` covers `bytes.len()` mapped bytes (translate_gpa checked the range).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
    }

    /// Reads `len` bytes at `gpa`.
    pub fn read_bytes(&self, gpa: u64, len: usize) -> Vec<u8> {
        let p = self.ptr(gpa, len);
        let mut v = vec![0u8; len];
        // SAFETY: `p` covers `len` mapped bytes; `v` is a separate heap buffer.
        unsafe { std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), len) };
        v
    }

    /// The first `len` bytes of the buffers `bufs` (guest address, length), in order.
    pub(super) fn read_bufs(&self, bufs: &[(u64, u32)], len: usize) -> Vec<u8> {
        let mut left = len;
        let mut v = Vec::with_capacity(left);
        for &(gpa, blen) in bufs {
            let n = left.min(blen as usize);
            v.extend(self.read_bytes(gpa, n));
            left -= n;
        }
        v
    }

    pub(super) fn write_u16(&self, gpa: u64, v: u16) {
        self.write_bytes(gpa, &v.to_le_bytes());
    }

    pub(super) fn read_u16(&self, gpa: u64) -> u16 {
        let b = self.read_bytes(gpa, 2);
        u16::from_le_bytes([b[0], b[1]])
    }
}

impl std::ops::Deref for Driver {
    type Target = DriverMemory;

    fn deref(&self) -> &DriverMemory {
        &self.space
    }
}

/// Lengths of `pieces` near-equal buffers (at least one, none empty unless `total` is 0)
/// adding up to `total`.
pub(super) fn cut(total: usize, pieces: usize) -> Vec<u32> {
    let pieces = pieces.clamp(1, total.max(1));
    let each = total / pieces;
    (0..pieces)
        .map(|i| {
            if i + 1 == pieces {
                (total - each * (pieces - 1)) as u32
            } else {
                each as u32
            }
        })
        .collect()
}

/// A guest TX chain for `frame` in `layout`: the bytes (a zeroed `hdr_len`-byte header,
/// then the frame), the buffer lengths, and whether they go through an indirect table.
pub(super) fn tx_chain(
    hdr_len: usize,
    frame: &[u8],
    layout: TxLayout,
) -> (Vec<u8>, Vec<u32>, bool) {
    let h = hdr_len as u32;
    let mut bytes = vec![0u8; hdr_len];
    bytes.extend_from_slice(frame);
    let f = frame.len();
    let (lens, indirect) = match layout {
        TxLayout::Joined => (vec![h + f as u32], false),
        TxLayout::SplitHeader => (vec![h, f as u32], false),
        TxLayout::Pieces(n) => ([vec![h], cut(f, n)].concat(), false),
        TxLayout::Indirect(n) => ([vec![h], cut(f, n)].concat(), true),
    };
    (bytes, lens, indirect)
}

/// Reassembles the first frame the device delivered in the used `elems` (following
/// `num_buffers` with `mrg`), reading each chain with `chain_bytes`; returns it and how many
/// elements it took.
pub(super) fn next_frame(
    elems: &[UsedElem],
    mrg: bool,
    hdr_len: usize,
    chain_bytes: impl Fn(UsedElem) -> Vec<u8>,
) -> (RxFrame, usize) {
    let mut bytes = chain_bytes(elems[0]);
    let mut take = 1;
    let mut nb = 1u16;
    if mrg {
        // The header (with num_buffers) may itself span buffers.
        while bytes.len() < 12 && take < elems.len() {
            bytes.extend(chain_bytes(elems[take]));
            take += 1;
        }
        if bytes.len() >= 12 {
            nb = u16::from_le_bytes([bytes[10], bytes[11]]);
        }
        while take < usize::from(nb) && take < elems.len() {
            bytes.extend(chain_bytes(elems[take]));
            take += 1;
        }
    } else if hdr_len == 12 && bytes.len() >= 12 {
        nb = u16::from_le_bytes([bytes[10], bytes[11]]);
    }
    let h = hdr_len.min(bytes.len());
    let frame = RxFrame {
        header: bytes[..h].to_vec(),
        num_buffers: nb,
        frame: bytes[h..].to_vec(),
    };
    (frame, take)
}

/// A 16-byte descriptor as the guest writes it, little-endian: `addr`, `len`, then two
/// 16-bit fields (split ring: flags, next; packed ring: id, flags).
pub(super) fn desc_bytes(addr: u64, len: u32, a: u16, b: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&a.to_le_bytes());
    d[14..16].copy_from_slice(&b.to_le_bytes());
    d
}

/// A memfd of `len` bytes.
pub fn memfd(len: u64) -> File {
    // SAFETY: the name is a valid C string; memfd_create has no other precondition.
    let fd = unsafe { libc::memfd_create(c"heddle-virtq-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).expect("memfd set_len");
    f
}

impl Driver {
    /// A driver for a queue of `size` with these features, indexes starting at 0 and 16 KiB
    /// data slots.
    pub fn new(size: u16, features: u64) -> Driver {
        Driver::with(size, features, 0, 16384)
    }

    /// A driver whose indexes start at `base` (as after `SET_VRING_BASE`), with
    /// `slot`-byte data slots per descriptor.
    pub fn with(size: u16, features: u64, base: u16, slot: u32) -> Driver {
        let n = u64::from(size);
        let avail_off = 16 * n;
        let used_off = round_up(avail_off + 6 + 2 * n, 4096);
        let space = DriverMemory::new(size, features, used_off + 6 + 8 * n, slot);
        let mut d = Driver {
            space,
            features,
            base,
            avail_off,
            used_off,
            free: (0..size).collect(),
            chains: vec![Chain::default(); usize::from(size)],
            avail_idx: base,
            last_used: base,
            spare: Vec::with_capacity(usize::from(size)),
        };
        d.set_avail_idx(base);
        d.write_u16(GPA_BASE + d.used_off + 2, base);
        d
    }

    /// The ring addresses for `SplitQueue::new`.
    pub fn addrs(&self) -> RingAddrs {
        RingAddrs {
            size: self.size,
            desc_uva: UVA_BASE,
            avail_uva: UVA_BASE + self.avail_off,
            used_uva: UVA_BASE + self.used_off,
        }
    }

    /// The device side of this queue.
    pub fn queue(&self) -> SplitQueue {
        SplitQueue::new(&self.mem, &self.addrs(), self.base, self.features).expect("test rings")
    }

    /// Guest-physical address of the descriptor table.
    pub fn desc_gpa(&self) -> u64 {
        GPA_BASE
    }

    /// Writes a descriptor at any guest address (a table entry or anywhere).
    pub fn write_desc_at(&self, gpa: u64, d: RawDesc) {
        let b = desc_bytes(d.addr, d.len, d.flags, d.next);
        self.write_bytes(gpa, &b);
    }

    /// Writes descriptor `i` of the ring's table, bypassing the driver's bookkeeping
    /// (hostile tests). Descriptor `i` must not be part of a posted chain.
    pub fn set_desc(&mut self, i: u16, d: RawDesc) {
        self.write_desc_at(GPA_BASE + 16 * u64::from(i), d);
    }

    /// Takes descriptor `i` out of the free list, for chains built by hand with `set_desc`.
    /// Returns false when it is not free.
    pub fn claim(&mut self, i: u16) -> bool {
        match self.free.iter().position(|&f| f == i) {
            Some(p) => {
                self.free.remove(p);
                self.chains[usize::from(i)] = Chain {
                    descs: vec![i],
                    bufs: Vec::new(),
                };
                true
            }
            None => false,
        }
    }

    /// Makes `head` available (any value, even out of range) and publishes `avail.idx`.
    pub fn push_avail(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx & (self.size - 1));
        self.write_u16(GPA_BASE + self.avail_off + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Stores `avail.idx` (release), without touching the ring (hostile tests).
    pub fn set_avail_idx(&mut self, idx: u16) {
        let p = self.ptr(GPA_BASE + self.avail_off + 2, 2);
        // SAFETY: 2 mapped bytes, 2-aligned (the avail ring is at a 16-byte multiple).
        unsafe { AtomicU16::from_ptr(p.cast::<u16>()) }.store(idx.to_le(), Ordering::Release);
    }

    /// `avail.flags`.
    pub fn set_avail_flags(&self, flags: u16) {
        self.write_u16(GPA_BASE + self.avail_off, flags);
    }

    /// `used_event` (at the end of the avail ring).
    pub fn set_used_event(&self, v: u16) {
        self.write_u16(GPA_BASE + self.avail_off + 4 + 2 * u64::from(self.size), v);
    }

    /// `used.flags`.
    pub fn used_flags(&self) -> u16 {
        self.read_u16(GPA_BASE + self.used_off)
    }

    /// `avail_event` (at the end of the used ring).
    pub fn avail_event(&self) -> u16 {
        self.read_u16(GPA_BASE + self.used_off + 4 + 8 * u64::from(self.size))
    }

    /// `used.idx` as published.
    pub fn used_idx(&self) -> u16 {
        let p = self.ptr(GPA_BASE + self.used_off + 2, 2);
        // SAFETY: 2 mapped bytes, 2-aligned.
        u16::from_le(unsafe { AtomicU16::from_ptr(p.cast::<u16>()) }.load(Ordering::Acquire))
    }

    /// Used ring element in slot `idx & (size-1)`.
    pub fn used_elem(&self, idx: u16) -> UsedElem {
        let b = self.read_bytes(
            GPA_BASE + self.used_off + 4 + 8 * u64::from(idx & (self.size - 1)),
            8,
        );
        UsedElem {
            id: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            len: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    /// The driver's `avail.idx` (next slot it fills).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Free descriptors.
    pub fn free_descs(&self) -> usize {
        self.free.len()
    }

    /// Builds a chain of buffers of these lengths inside `head`'s slot (device-writable when
    /// `write`), directly or through `head`'s indirect table; fills it with `bytes` (when
    /// given) and makes it available. None when descriptors or slot space run out.
    fn post(
        &mut self,
        lens: &[u32],
        write: bool,
        indirect: bool,
        bytes: Option<&[u8]>,
    ) -> Option<u16> {
        let total: u64 = lens.iter().map(|&l| u64::from(l)).sum();
        let ndesc = if indirect { 1 } else { lens.len() };
        if total > self.slot || self.free.len() < ndesc || lens.is_empty() {
            return None;
        }
        if indirect && lens.len() > INDIRECT_MAX {
            return None;
        }
        let descs: Vec<u16> = (0..ndesc)
            .map(|_| self.free.pop_front().expect("counted"))
            .collect();
        let head = descs[0];
        let mut gpa = self.slot_gpa(head);
        if let Some(b) = bytes {
            self.write_bytes(gpa, b);
        }
        let mut bufs = Vec::with_capacity(lens.len());
        let wflag = if write { F_WRITE } else { 0 };
        let table = self.indirect_gpa(head);
        for (i, &len) in lens.iter().enumerate() {
            let last = i + 1 == lens.len();
            let d = RawDesc {
                addr: gpa,
                len,
                flags: wflag | if last { 0 } else { F_NEXT },
                next: if indirect {
                    (i + 1) as u16
                } else if last {
                    0
                } else {
                    descs[i + 1]
                },
            };
            if indirect {
                self.write_desc_at(table + 16 * i as u64, d);
            } else {
                self.set_desc(descs[i], d);
            }
            bufs.push((gpa, len));
            gpa += u64::from(len);
        }
        if indirect {
            self.set_desc(
                head,
                RawDesc {
                    addr: table,
                    len: 16 * lens.len() as u32,
                    flags: F_INDIRECT,
                    next: 0,
                },
            );
        }
        self.chains[usize::from(head)] = Chain { descs, bufs };
        self.push_avail(head);
        Some(head)
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

    /// Takes every new used element and frees its chain's descriptors (its buffers can
    /// still be read with `chain_bytes` until the head is reused).
    pub fn reap(&mut self) -> Vec<UsedElem> {
        let end = self.used_idx();
        let mut out = Vec::new();
        while self.last_used != end {
            let e = self.used_elem(self.last_used);
            self.last_used = self.last_used.wrapping_add(1);
            if let Some(c) = self.chains.get_mut(e.id as usize) {
                // The buffers stay readable (`chain_bytes`) until the head is posted again.
                self.free.extend(c.descs.drain(..));
            }
            out.push(e);
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

    /// Reaps used elements and reassembles the frames the device delivered (following
    /// `num_buffers` with `MRG_RXBUF`).
    pub fn recv(&mut self) -> Vec<RxFrame> {
        let end = self.used_idx();
        let mut elems = Vec::new();
        while self.last_used != end {
            elems.push(self.used_elem(self.last_used));
            self.last_used = self.last_used.wrapping_add(1);
        }
        let mrg = self.features & feature::MRG_RXBUF != 0;
        let mut frames = Vec::new();
        let mut i = 0;
        while i < elems.len() {
            let (frame, take) = next_frame(&elems[i..], mrg, self.hdr_len, |e| self.chain_bytes(e));
            for e in &elems[i..(i + take).min(elems.len())] {
                if let Some(c) = self.chains.get_mut(e.id as usize) {
                    let c = std::mem::take(c);
                    self.free.extend(c.descs);
                }
            }
            i += take;
            frames.push(frame);
        }
        frames
    }

    /// Bench helper: takes every used element and makes the same chains available again,
    /// unchanged, with one `avail.idx` store. Allocation free.
    pub fn recycle(&mut self) {
        let end = self.used_idx();
        self.spare.clear();
        while self.last_used != end {
            let id = self.used_elem_fast(self.last_used);
            self.last_used = self.last_used.wrapping_add(1);
            self.spare.push(id);
        }
        let mask = self.size - 1;
        let ring = self.ptr(GPA_BASE + self.avail_off + 4, 2 * usize::from(self.size));
        for &h in &self.spare {
            let slot = usize::from(self.avail_idx & mask);
            // SAFETY: `slot < size` and the ring covers `size` u16 entries (2-aligned).
            unsafe { ring.cast::<u16>().add(slot).write_volatile(h.to_le()) };
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        self.set_avail_idx(self.avail_idx);
    }

    fn used_elem_fast(&self, idx: u16) -> u16 {
        let p = self.ptr(
            GPA_BASE + self.used_off + 4 + 8 * u64::from(idx & (self.size - 1)),
            4,
        );
        // SAFETY: 4 mapped bytes, 4-aligned (the used ring is page aligned).
        u32::from_le(unsafe { p.cast::<u32>().read_volatile() }) as u16
    }
}

/// A heap packet with headroom, recycled by [`VecPool`].
#[derive(Debug)]
pub struct VecPacket {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Packet for VecPacket {
    #[inline]
    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    fn prepend(&mut self, n: usize) -> bool {
        if n > self.start {
            return false;
        }
        self.start -= n;
        true
    }

    fn trim_front(&mut self, n: usize) -> bool {
        if n > self.end - self.start {
            return false;
        }
        self.start += n;
        true
    }
}

/// Headroom of a [`VecPacket`] (DPDK's default).
pub const VEC_HEADROOM: usize = 128;

/// A heap [`RxPool`] of at most `limit` packets out at once; recycles what it is given back.
pub struct VecPool {
    max_len: usize,
    limit: usize,
    out: usize,
    free: Vec<VecPacket>,
}

impl VecPool {
    /// A pool of packets holding up to `max_len` bytes, at most `limit` allocated at once.
    pub fn new(max_len: usize, limit: usize) -> VecPool {
        VecPool {
            max_len,
            limit,
            out: 0,
            free: Vec::new(),
        }
    }

    /// Returns packets to the pool.
    pub fn give_back(&mut self, pkts: impl IntoIterator<Item = VecPacket>) {
        for p in pkts {
            self.out -= 1;
            self.free.push(p);
        }
    }

    /// Packets allocated and not given back.
    pub fn outstanding(&self) -> usize {
        self.out
    }
}

impl RxPool for VecPool {
    type Pkt = VecPacket;

    #[inline]
    fn alloc(&mut self, len: usize) -> Option<VecPacket> {
        if self.out >= self.limit || len > self.max_len {
            return None;
        }
        self.out += 1;
        let mut p = self.free.pop().unwrap_or_else(|| VecPacket {
            buf: vec![0; VEC_HEADROOM + self.max_len],
            start: 0,
            end: 0,
        });
        p.start = VEC_HEADROOM;
        p.end = VEC_HEADROOM + len;
        Some(p)
    }

    #[inline]
    fn max_len(&self) -> usize {
        self.max_len
    }
}

/// Bytes of the ring fuzzers' guest memory.
pub(super) const MEM: usize = 1 << 15;
/// Frontend address of the ring fuzzers' guest memory.
pub(super) const UVA: u64 = 0x10_0000;

/// The features the ring fuzzers' configuration byte `cfg` picks (bits 3-6: MRG_RXBUF,
/// INDIRECT_DESC, EVENT_IDX, VERSION_1), added to `base`.
pub(super) fn fuzz_features(cfg: u8, base: u64) -> u64 {
    let mut features = base;
    if cfg & 8 != 0 {
        features |= feature::MRG_RXBUF;
    }
    if cfg & 16 != 0 {
        features |= feature::INDIRECT_DESC;
    }
    if cfg & 32 != 0 {
        features |= feature::EVENT_IDX;
    }
    if cfg & 64 != 0 {
        features |= feature::VERSION_1;
    }
    features
}

/// The ring fuzzers' guest memory: `MEM` zeroed, 8-aligned heap bytes, written through
/// `base` only.
pub(super) struct FuzzMemory {
    _buf: Vec<u64>,
    /// The first byte.
    pub(super) base: *mut u8,
}

impl FuzzMemory {
    pub(super) fn new() -> FuzzMemory {
        let mut buf = vec![0u64; MEM / 8];
        let base = buf.as_mut_ptr().cast::<u8>();
        FuzzMemory { _buf: buf, base }
    }

    /// Writes `bytes` at `off`.
    pub(super) fn write(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= MEM);
        // SAFETY: in bounds (asserted); the buffer is only accessed through `base`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(off), bytes.len()) };
    }

    /// The memory as a guest's, at guest address 0 and frontend address `UVA`.
    ///
    /// # Safety
    /// `self` must outlive the returned memory and every queue mapped in it.
    pub(super) unsafe fn guest(&self) -> GuestMemory {
        let spec = RegionSpec {
            guest_phys_addr: 0,
            size: MEM as u64,
            user_addr: UVA,
            mmap_offset: 0,
        };
        // SAFETY: `MEM` bytes at `base` stay allocated as long as `self` (the caller's
        // promise), and are only touched through raw pointers.
        unsafe { GuestMemory::from_raw(&[(spec, self.base)]) }
    }
}

/// Builds a small guest memory and queue from `data` (a configuration byte: queue size,
/// features, "tame" mode; then indices, avail entries, descriptors and buffer bytes) and runs dequeue, enqueue and the notification
/// calls on it, checking the invariants a hostile ring must not break: no panic, the used
/// index advances by at most the queue size per call, every used id is below the size.
/// Panics (a fuzz finding) when an invariant fails.
pub fn fuzz_rings(data: &[u8]) {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let size = 1u16 << (cfg & 7);
    let n = usize::from(size);
    let features = fuzz_features(cfg, 0);
    // Tame: keep buffers out of the rings and indices near range, so chains are often valid
    // and used entries are not overwritten by frame data (then they can be checked).
    let tame = cfg & 128 != 0;
    let (avail_off, used_off, data_off) = (2048usize, 2560usize, 4096usize);
    let mem_buf = FuzzMemory::new();
    let base = mem_buf.base;
    let wr = |off: usize, bytes: &[u8]| mem_buf.write(off, bytes);
    // The input, compactly: base index, avail index delta, avail flags, used_event, one byte
    // per avail entry, six bytes per descriptor, then buffer contents. Missing bytes are 0.
    let mut at = 0usize;
    let mut byte = || {
        let b = rest.get(at).copied().unwrap_or(0);
        at += 1;
        b
    };
    let start = u16::from_le_bytes([byte(), byte()]);
    let delta = u16::from(byte());
    let avail_flags = u16::from(byte() & 1);
    let used_event = u16::from_le_bytes([byte(), byte()]);
    let delta = if tame { delta % (size + 2) } else { delta };
    wr(avail_off, &avail_flags.to_le_bytes());
    wr(avail_off + 2, &start.wrapping_add(delta).to_le_bytes());
    for i in 0..n {
        let h = u16::from(byte());
        let h = if tame { h % (size + 1) } else { h };
        wr(avail_off + 4 + 2 * i, &h.to_le_bytes());
    }
    wr(avail_off + 4 + 2 * n, &used_event.to_le_bytes());
    wr(used_off + 2, &start.to_le_bytes());
    for i in 0..n {
        let addr = u64::from(u16::from_le_bytes([byte(), byte()]));
        let len = u32::from(u16::from_le_bytes([byte(), byte()]));
        let flags = byte();
        let next = u16::from(byte());
        let (addr, len, flags, next) = if tame {
            (
                data_off as u64 + addr % (MEM - data_off) as u64,
                len % 4096,
                u16::from(flags & 7),
                next % (size + 1),
            )
        } else {
            // High flag bits push the address or length to the edges of their range.
            let addr = if flags & 0x80 != 0 {
                u64::MAX - addr
            } else {
                addr
            };
            let len = if flags & 0x40 != 0 {
                u32::MAX - len
            } else {
                len
            };
            (addr, len, u16::from(flags & 7), next)
        };
        let d = desc_bytes(addr, len, flags, next);
        wr(16 * i, &d);
    }
    // Indirect tables and buffers live in the data area: fill it with what is left.
    let left = rest.get(at..).unwrap_or(&[]);
    wr(data_off, &left[..left.len().min(MEM - data_off)]);
    // SAFETY: `mem_buf` outlives `mem` and the queue (all dropped at the end of this
    // function) and is only touched through raw pointers meanwhile.
    let mem = unsafe { mem_buf.guest() };
    let addrs = RingAddrs {
        size,
        desc_uva: UVA,
        avail_uva: UVA + avail_off as u64,
        used_uva: UVA + used_off as u64,
    };
    let mut q = SplitQueue::new(&mem, &addrs, start, features).expect("fuzz rings are valid");
    if cfg & 1 != 0 {
        q.suppress_notifications();
    }
    let mut stats = QueueStats::default();
    let check = |q: &SplitQueue, before: u16| {
        let after = q.used_idx();
        let moved = after.wrapping_sub(before);
        assert!(moved <= size, "used index moved {moved} > {size}");
        if tame {
            let mut i = before;
            while i != after {
                let slot = usize::from(i & (size - 1));
                // SAFETY: the used ring (6 + 8*128 bytes at most) is inside MEM.
                let id = unsafe {
                    base.add(used_off + 4 + 8 * slot)
                        .cast::<u32>()
                        .read_unaligned()
                };
                assert!(id < u32::from(size), "used id {id} >= size {size}");
                i = i.wrapping_add(1);
            }
        }
    };
    let mut pool = VecPool::new(2048, 8 + usize::from(cfg >> 4));
    let mut burst: Burst<VecPacket> = Burst::new();
    let before = q.used_idx();
    q.dequeue(&mem, &mut pool, &mut burst, &mut stats);
    check(&q, before);
    for p in burst.as_slice() {
        assert!(p.len() <= 2048);
    }
    let _ = q.needs_interrupt();
    let sizes = [60usize, 1514, 9000, 1, 0];
    let pick = usize::from(cfg) % sizes.len();
    let pkts: Vec<VecPacket> = (0..4)
        .map(|i| {
            let l = sizes[(pick + i) % sizes.len()];
            VecPacket {
                buf: vec![0xa5; l],
                start: 0,
                end: l,
            }
        })
        .collect();
    let before = q.used_idx();
    let done = q.enqueue(&mem, &pkts, &mut stats);
    assert!(done <= pkts.len());
    check(&q, before);
    let _ = q.needs_interrupt();
    let before = q.used_idx();
    burst.drain().for_each(drop);
    q.dequeue(&mem, &mut pool, &mut burst, &mut stats);
    check(&q, before);
    // The queue and the table go before the memory they point into.
    drop(mem);
    drop(mem_buf);
}

/// A small deterministic generator for tests and benches (xorshift64*).
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (seed 0 is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Runs a queue's dequeue side until `driver`'s TX chains are all taken; returns frames.
pub fn drain_tx(
    q: &mut SplitQueue,
    driver: &Driver,
    pool: &mut VecPool,
    stats: &mut QueueStats,
) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut burst = Burst::new();
    while q.last_avail_idx() != driver.avail_idx() && !q.is_broken() {
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
