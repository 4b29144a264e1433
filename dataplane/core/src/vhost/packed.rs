//! The poll-mode packed virtqueue (virtio 1.1, `VIRTIO_F_RING_PACKED`), device side: guest
//! TX chains into switch packets ([`PackedQueue::dequeue`]) and switch packets into guest RX
//! buffers ([`PackedQueue::enqueue`]), with the same interfaces and the same hostile-guest
//! rules as [`super::virtq::SplitQueue`].
//!
//! # The ring
//! One array of 16-byte descriptors (`addr`, `len`, buffer `id`, `flags`) that driver and
//! device both write, plus two 4-byte event suppression structures: the *driver area*
//! (`SET_VRING_ADDR`'s "avail" address; the driver says when it wants interrupts) and the
//! *device area* (the "used" address; the device says when it wants kicks). A descriptor at
//! the device's position is available when its `AVAIL` flag equals the device's avail wrap
//! counter and its `USED` flag does not. A chain is consecutive descriptors linked by `NEXT`;
//! its buffer id is in its last descriptor. The device returns a chain by writing one used
//! descriptor (id, length written, `AVAIL` = `USED` = its used wrap counter) at the slot the
//! chain started in, and moves on by the chain's descriptor count. This queue returns every
//! chain in the order it took them, so its used position always catches up with its avail
//! position at the end of a call (in-order completion, what `VIRTIO_F_IN_ORDER` promises).
//!
//! # The guest is hostile
//! As for split rings: no reference into guest memory (volatile copies, an acquire load of
//! the first descriptor's flags, release stores of used flags), every buffer through
//! [`GuestMemory::translate_gpa_hinted`], every walk bounded. A chain that breaks a buffer
//! rule (unmapped range, wrong direction, indirect table when not negotiated or malformed)
//! goes back with length 0 and is counted; the queue goes on after it. The ring itself lying
//! marks the queue broken (the caller counts it in `broken_rings`), because after it no
//! position in the ring can be trusted:
//! - a chain longer than `min(size, MAX_CHAIN)` descriptors (a loop of `NEXT` flags);
//! - a later descriptor of a chain that is not available under the wrap counter its slot
//!   needs (a wrap lie: the driver published a chain into slots it does not own);
//! - a buffer id not below the queue size (an index lie: it could not be returned).
//!
//! # Fast path
//! No allocation, syscall, lock or log. Guest RX frames spanning several buffers
//! (`MRG_RXBUF`) keep their used entries in a shadow array until the frame is complete, so a
//! frame that runs out of buffers gives them all back untouched (a used descriptor
//! overwrites the available one, so nothing may be written early). Interrupt decisions read
//! the driver area right after the burst's last used flag is stored (under the full fence the
//! notification protocol needs), so [`PackedQueue::needs_interrupt`] compares cached values.
//!
//! # Memory
//! As [`super::virtq`]: the raw ring pointers are used only while a `&GuestMemory` with the
//! same [`GuestMemory::id`] is borrowed by the call; handed another table, calls do nothing.

use std::ptr::{self, NonNull};
use std::sync::atomic::{fence, AtomicU16, Ordering};

use super::inflight::PackedTrack;
use super::memory::GuestMemory;
use super::virtq::{
    feature, fill_seg, gather, gather_one, rx_header, take_frame, QueueStats, RingAddrs, RingError,
    RxPool, Seg, BAD_CHAIN_BUDGET, MAX_CHAIN, MAX_QUEUE_SIZE,
};
use crate::prefetch;
use crate::switch::io::{Burst, Packet};

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
/// Packed descriptor flag: available (compared with the avail wrap counter).
pub const DESC_F_AVAIL: u16 = 1 << 7;
/// Packed descriptor flag: used (compared with the used wrap counter).
pub const DESC_F_USED: u16 = 1 << 15;
/// Event suppression `flags`: notifications on.
pub const EVENT_F_ENABLE: u16 = 0;
/// Event suppression `flags`: notifications off.
pub const EVENT_F_DISABLE: u16 = 1;
/// Event suppression `flags`: notify at the descriptor `off_wrap` names (needs `EVENT_IDX`).
pub const EVENT_F_DESC: u16 = 2;

/// Buffers of one chain remembered between sizing and copying a guest TX frame; longer
/// chains are walked a second time.
const MAX_SEGS: usize = 32;

/// Most guest RX buffers one frame may take with `MRG_RXBUF` (as DPDK's `BUF_VECTOR_MAX`);
/// a frame needing more (a guest posting tiny buffers) is dropped as oversize and the
/// buffers stay available.
pub const MAX_FRAME_BUFFERS: usize = 256;

/// One descriptor as the driver lays it out (little-endian fields).
#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    id: u16,
    flags: u16,
}

/// What walking the chain at the device's avail position found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Walk {
    /// No descriptor available there.
    Empty,
    /// A chain of `ndesc` ring descriptors with buffer `id`; `bad` when a buffer broke a
    /// rule (it goes back with length 0).
    Chain { id: u16, ndesc: u16, bad: bool },
    /// The ring lied (chain too long, wrap or id lie): the queue is broken.
    Broken,
}

/// A used entry waiting to be written (guest RX frames over several buffers).
#[derive(Clone, Copy, Default)]
struct Pending {
    id: u16,
    ndesc: u16,
    len: u32,
}

/// One packed virtqueue, device side, for a poll-mode worker.
pub struct PackedQueue {
    desc: *mut Desc,
    /// Driver event suppression (the driver writes it).
    driver_event: *mut u8,
    /// Device event suppression (this queue writes it).
    device_event: *mut u8,
    size: u16,
    mem_id: u64,
    hdr_len: usize,
    mrg: bool,
    indirect: bool,
    event_idx: bool,
    /// Next descriptor slot to read, and the wrap counter it is read under.
    avail_idx: u16,
    avail_wrap: bool,
    /// Next slot a used descriptor goes to, and its wrap counter.
    used_idx: u16,
    used_wrap: bool,
    /// Used position (see `linear`) at the last interrupt decision.
    signalled: u32,
    signalled_valid: bool,
    /// Driver area as read right after the last used descriptors were published.
    driver_flags: u16,
    driver_off_wrap: u16,
    /// Poll mode asked for: keep kicks off.
    suppress: bool,
    broken: bool,
    /// Last memory region a buffer was found in.
    hint: usize,
    /// Used entries of the guest RX frame being written (`MRG_RXBUF`).
    shadow: Box<[Pending]>,
    /// In-flight tracking (`INFLIGHT_SHMFD`), when the frontend shared a region.
    inflight: Option<PackedTrack>,
}

// SAFETY: the raw pointers point into guest memory that the queue only touches while the
// caller lends the matching `GuestMemory` (which is Send + Sync); the queue has no
// thread-affine state, so one worker may hand it to another.
unsafe impl Send for PackedQueue {}

impl std::fmt::Debug for PackedQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedQueue")
            .field("size", &self.size)
            .field("avail_idx", &self.avail_idx)
            .field("avail_wrap", &self.avail_wrap)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// Translates one ring area and checks its alignment, in the frontend and once mapped.
fn area(
    mem: &GuestMemory,
    name: &'static str,
    uva: u64,
    len: u64,
    align: u64,
) -> Result<*mut u8, RingError> {
    if uva & (align - 1) != 0 {
        return Err(RingError::Misaligned {
            ring: name,
            uva,
            align,
        });
    }
    let p = mem
        .translate_uva(uva, len)
        .ok_or(RingError::NotMapped {
            ring: name,
            uva,
            len,
        })?
        .as_ptr();
    if p as usize & (align as usize - 1) != 0 {
        return Err(RingError::Misaligned {
            ring: name,
            uva,
            align,
        });
    }
    Ok(p)
}

/// True when `flags` mark a descriptor available under wrap counter `wrap`.
#[inline(always)]
fn is_avail(flags: u16, wrap: bool) -> bool {
    (flags & DESC_F_AVAIL != 0) == wrap && (flags & DESC_F_USED != 0) != wrap
}

/// The `vring_need_event` rule on positions taken modulo `m`: true when `event` lies in
/// `[old, new)`.
#[inline(always)]
fn need_event(event: u32, new: u32, old: u32, m: u32) -> bool {
    (new + m - event - 1) % m < (new + m - old) % m
}

impl PackedQueue {
    /// Maps the rings at `addrs` (descriptor ring, driver area in `avail_uva`, device area in
    /// `used_uva`), checking they lie in `mem` and are aligned (16, 4, 4). `base` is what
    /// `SET_VRING_BASE` sent for a packed ring: the next descriptor slot in bits 0-14 and the
    /// avail wrap counter in bit 15 (a fresh ring is `0x8000`).
    pub fn new(
        mem: &GuestMemory,
        addrs: &RingAddrs,
        base: u16,
        features: u64,
    ) -> Result<PackedQueue, RingError> {
        let size = addrs.size;
        if size == 0 || size > MAX_QUEUE_SIZE {
            return Err(RingError::BadSize { size });
        }
        let idx = base & 0x7fff;
        if idx >= size {
            return Err(RingError::BadBase { base, size });
        }
        let wrap = base & 0x8000 != 0;
        let desc = area(mem, "descriptor", addrs.desc_uva, 16 * u64::from(size), 16)?;
        let driver_event = area(mem, "driver event", addrs.avail_uva, 4, 4)?;
        let device_event = area(mem, "device event", addrs.used_uva, 4, 4)?;
        let mrg = features & feature::MRG_RXBUF != 0;
        let mut q = PackedQueue {
            desc: desc.cast::<Desc>(),
            driver_event,
            device_event,
            size,
            mem_id: mem.id(),
            hdr_len: if mrg || features & feature::VERSION_1 != 0 {
                12
            } else {
                10
            },
            mrg,
            indirect: features & feature::INDIRECT_DESC != 0,
            event_idx: features & feature::EVENT_IDX != 0,
            avail_idx: idx,
            avail_wrap: wrap,
            used_idx: idx,
            used_wrap: wrap,
            signalled: 0,
            signalled_valid: false,
            driver_flags: EVENT_F_ENABLE,
            driver_off_wrap: 0,
            suppress: false,
            broken: false,
            hint: 0,
            shadow: vec![Pending::default(); MAX_FRAME_BUFFERS].into_boxed_slice(),
            inflight: None,
        };
        q.signalled = q.used_position();
        Ok(q)
    }

    /// Records in-flight chains in `track` from now on (see [`super::inflight`]).
    pub fn set_inflight(&mut self, track: PackedTrack) {
        self.inflight = Some(track);
    }

    /// In-flight tracking: the chain of `ndesc` descriptors at the avail position is taken
    /// (recorded before it is used). False when the region's free list ran out (a corrupt
    /// region): the caller breaks the ring.
    #[inline(always)]
    fn track_take(&mut self, ndesc: u16) -> bool {
        let Some(t) = &mut self.inflight else {
            return true;
        };
        let (desc, idx, size) = (self.desc, self.avail_idx, self.size);
        t.take(ndesc, |k| {
            let slot = ((u32::from(idx) + u32::from(k)) % u32::from(size)) as usize;
            // SAFETY: `slot < size`: inside the mapped, aligned ring (checked in `new`); a
            // volatile read copies the descriptor the walk just validated.
            let d = unsafe { ptr::read_volatile(desc.add(slot)) };
            (
                u64::from_le(d.addr),
                u32::from_le(d.len),
                u16::from_le(d.id),
                u16::from_le(d.flags),
            )
        })
    }

    /// [`Self::take`] of a guest RX chain, recorded in flight first (after it was filled:
    /// until its used entry is written the buffer is still the device's, so a crash before
    /// this leaves nothing the driver would see). A corrupt region breaks the queue.
    #[inline(always)]
    fn take_tracked(&mut self, ndesc: u16) {
        if !self.track_take(ndesc) {
            self.broken = true;
        }
        self.take(ndesc);
    }

    /// In-flight tracking: the last `count` chains taken stay in the ring after all.
    #[inline(always)]
    fn track_untake(&mut self, count: usize) {
        if let Some(t) = &mut self.inflight {
            t.untake(count);
        }
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// What `GET_VRING_BASE` reports: the next slot in bits 0-14, the avail wrap counter in
    /// bit 15.
    pub fn last_avail_idx(&self) -> u16 {
        self.avail_idx | (u16::from(self.avail_wrap) << 15)
    }

    /// The used position as a number modulo `2 * size` (slot, plus `size` when the used wrap
    /// counter is 0): it grows by one per descriptor slot returned.
    pub fn used_position(&self) -> u32 {
        Self::linear(self.size, self.used_idx, self.used_wrap)
    }

    #[inline(always)]
    fn linear(size: u16, idx: u16, wrap: bool) -> u32 {
        u32::from(idx) + if wrap { 0 } else { u32::from(size) }
    }

    /// Bytes of virtio-net header in front of each frame (10 or 12).
    pub fn header_len(&self) -> usize {
        self.hdr_len
    }

    /// True once the driver lied about the ring (see the module docs); every further call
    /// does nothing.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Poll mode: ask the driver not to kick (device area `flags` = disable), written at the
    /// next `dequeue`/`enqueue` and kept up at each one after.
    pub fn suppress_notifications(&mut self) {
        self.suppress = true;
    }

    /// After `dequeue`/`enqueue`: should the caller signal the call eventfd? False when
    /// nothing was returned since the last decision; otherwise what the driver area said
    /// right after the burst: enable, disable, or (with `EVENT_IDX`) whether the used
    /// position passed the descriptor `off_wrap` names.
    pub fn needs_interrupt(&mut self) -> bool {
        let new = self.used_position();
        let old = self.signalled;
        if new == old {
            return false;
        }
        let need = if self.event_idx && self.driver_flags == EVENT_F_DESC {
            let off = self.driver_off_wrap & 0x7fff;
            let wrap = self.driver_off_wrap & 0x8000 != 0;
            // An offset past the ring is a driver bug: interrupt, as for "enable".
            !self.signalled_valid
                || off >= self.size
                || need_event(
                    Self::linear(self.size, off, wrap),
                    new,
                    old,
                    2 * u32::from(self.size),
                )
        } else {
            self.driver_flags != EVENT_F_DISABLE
        };
        self.signalled = new;
        self.signalled_valid = true;
        need
    }

    /// Advances a (slot, wrap) position by `n` slots.
    #[inline(always)]
    fn advance(size: u16, idx: &mut u16, wrap: &mut bool, n: u16) {
        let next = u32::from(*idx) + u32::from(n);
        if next >= u32::from(size) {
            *idx = (next - u32::from(size)) as u16;
            *wrap = !*wrap;
        } else {
            *idx = next as u16;
        }
    }

    /// Flags of descriptor `idx`, acquire: the rest of the chain the driver wrote before
    /// publishing it is visible after this load.
    #[inline(always)]
    fn flags_acquire(&self, idx: u16) -> u16 {
        // SAFETY: `desc` points to `size` mapped, 16-aligned descriptors (checked in `new`;
        // the caller lends the memory table) and `idx < size`; `flags` is at offset 14,
        // 2-aligned. The driver writes it concurrently, which is what an atomic is for.
        u16::from_le(
            unsafe {
                AtomicU16::from_ptr(ptr::addr_of_mut!((*self.desc.add(usize::from(idx))).flags))
            }
            .load(Ordering::Acquire),
        )
    }

    /// A volatile copy of descriptor `idx` (`idx < size`).
    #[inline(always)]
    fn read_desc(&self, idx: u16) -> Desc {
        // SAFETY: as in `flags_acquire`; the copy is taken once and only it is used.
        unsafe { ptr::read_volatile(self.desc.add(usize::from(idx))) }
    }

    /// Walks the chain at the avail position without consuming it, handing each buffer to
    /// `f` until it returns false (the walk still reads to the chain's end, to learn its
    /// length and id). Buffers must all be device-writable (`write`) or all readable.
    #[inline(always)]
    fn walk(&mut self, mem: &GuestMemory, write: bool, mut f: impl FnMut(Seg) -> bool) -> Walk {
        let (mut idx, mut wrap) = (self.avail_idx, self.avail_wrap);
        let first = self.flags_acquire(idx);
        if !is_avail(first, wrap) {
            return Walk::Empty;
        }
        let max = self.size.min(MAX_CHAIN);
        let mut n = 0u16;
        let mut bad = false;
        let mut feeding = true;
        loop {
            if n == max {
                return Walk::Broken;
            }
            let d = self.read_desc(idx);
            let flags = if n == 0 { first } else { u16::from_le(d.flags) };
            if n > 0 && !is_avail(flags, wrap) {
                return Walk::Broken;
            }
            n += 1;
            Self::advance(self.size, &mut idx, &mut wrap, 1);
            if !bad && feeding {
                let addr = u64::from_le(d.addr);
                let len = u32::from_le(d.len);
                let ok = if flags & DESC_F_INDIRECT != 0 {
                    // An indirect table is the chain's only ring descriptor.
                    if !self.indirect || flags & DESC_F_NEXT != 0 || n != 1 {
                        false
                    } else {
                        self.walk_indirect(mem, addr, len, write, &mut feeding, &mut f)
                    }
                } else if (flags & DESC_F_WRITE != 0) != write {
                    false
                } else {
                    match self.translate(mem, addr, len) {
                        Some(ptr) => {
                            feeding = f(Seg { ptr, len });
                            true
                        }
                        None => false,
                    }
                };
                bad = !ok;
            }
            if flags & DESC_F_NEXT == 0 {
                let id = u16::from_le(d.id);
                if id >= self.size {
                    return Walk::Broken;
                }
                return Walk::Chain { id, ndesc: n, bad };
            }
        }
    }

    /// Host pointer for a buffer (a dangling one for length 0), or None when unmapped.
    #[inline(always)]
    fn translate(&mut self, mem: &GuestMemory, addr: u64, len: u32) -> Option<*mut u8> {
        if len == 0 {
            return Some(NonNull::dangling().as_ptr());
        }
        mem.translate_gpa_hinted(addr, u64::from(len), &mut self.hint)
            .map(NonNull::as_ptr)
    }

    /// Feeds the buffers of the indirect table at `addr` (`len` bytes) to `f`; false when
    /// the table or one of its entries breaks a rule. The `NEXT` flags inside a packed
    /// indirect table mean nothing: every entry is part of the buffer.
    fn walk_indirect(
        &mut self,
        mem: &GuestMemory,
        addr: u64,
        len: u32,
        write: bool,
        feeding: &mut bool,
        f: &mut impl FnMut(Seg) -> bool,
    ) -> bool {
        if len == 0 || len & 15 != 0 || len / 16 > u32::from(MAX_CHAIN) {
            return false;
        }
        let Some(p) = mem.translate_gpa_hinted(addr, u64::from(len), &mut self.hint) else {
            return false;
        };
        let table = p.as_ptr().cast::<Desc>();
        if table as usize & (std::mem::align_of::<Desc>() - 1) != 0 {
            return false;
        }
        for i in 0..(len / 16) as usize {
            // SAFETY: the table's `len` bytes are mapped (translated above) and aligned for
            // `Desc`, and `i < len / 16`; a volatile read copies the entry once.
            let d = unsafe { ptr::read_volatile(table.add(i)) };
            let flags = u16::from_le(d.flags);
            if flags & DESC_F_INDIRECT != 0 || (flags & DESC_F_WRITE != 0) != write {
                return false;
            }
            let blen = u32::from_le(d.len);
            let Some(ptr) = self.translate(mem, u64::from_le(d.addr), blen) else {
                return false;
            };
            if !f(Seg { ptr, len: blen }) {
                *feeding = false;
                return true;
            }
        }
        true
    }

    /// Consumes `ndesc` slots from the avail position.
    #[inline(always)]
    fn take(&mut self, ndesc: u16) {
        Self::advance(self.size, &mut self.avail_idx, &mut self.avail_wrap, ndesc);
    }

    /// Writes a used descriptor for buffer `id` at the used position and moves it on by
    /// `ndesc`: id and length first, then the flags with a release store, so the driver sees
    /// a complete entry once it sees the flags.
    #[inline(always)]
    fn put_used(&mut self, id: u16, ndesc: u16, len: u32) {
        let mut flags = if self.used_wrap {
            DESC_F_AVAIL | DESC_F_USED
        } else {
            0
        };
        if len > 0 {
            flags |= DESC_F_WRITE;
        }
        let tracked = self.inflight.as_mut().and_then(PackedTrack::before_used);
        // SAFETY: `used_idx < size`: the descriptor is inside the mapped, aligned ring
        // (checked in `new`); the slot belongs to the device until these flags say used
        // (the chain started there and was taken by this queue).
        unsafe {
            let d = self.desc.add(usize::from(self.used_idx));
            ptr::write_volatile(ptr::addr_of_mut!((*d).id), id.to_le());
            ptr::write_volatile(ptr::addr_of_mut!((*d).len), len.to_le());
            AtomicU16::from_ptr(ptr::addr_of_mut!((*d).flags))
                .store(flags.to_le(), Ordering::Release);
        }
        if let Some(t) = &mut self.inflight {
            t.after_used(tracked);
        }
        Self::advance(self.size, &mut self.used_idx, &mut self.used_wrap, ndesc);
    }

    /// After used descriptors were written: reads what the driver wants to hear about them.
    #[inline(always)]
    fn after_publish(&mut self) {
        // The notification protocol: our used flags must be visible before we read the
        // driver area, as the driver writes it before it rechecks the ring.
        fence(Ordering::SeqCst);
        // SAFETY: the driver area is 4 mapped, 4-aligned bytes (checked in `new`): off_wrap
        // at 0, flags at 2; volatile reads copy them once.
        unsafe {
            self.driver_off_wrap =
                u16::from_le(ptr::read_volatile(self.driver_event.cast::<u16>()));
            self.driver_flags =
                u16::from_le(ptr::read_volatile(self.driver_event.add(2).cast::<u16>()));
        }
    }

    /// Keeps kicks off: device area flags = disable (written only when not already so, to
    /// leave the driver's cache line alone).
    #[inline(always)]
    fn write_device_event(&self) {
        // SAFETY: the device area is 4 mapped, 4-aligned bytes (checked in `new`); flags at
        // offset 2. The driver only reads it; a hostile one writing it changes nothing here.
        unsafe {
            let p = self.device_event.add(2).cast::<u16>();
            if ptr::read_volatile(p) != EVENT_F_DISABLE.to_le() {
                ptr::write_volatile(p, EVENT_F_DISABLE.to_le());
            }
        }
    }

    /// The start of a burst: false when the queue may not run (broken, or `mem` is not the
    /// table it was mapped in); else rewrites the device event suppression when asked for.
    #[inline(always)]
    fn begin(&mut self, mem: &GuestMemory) -> bool {
        if self.broken || mem.id() != self.mem_id {
            return false;
        }
        if self.suppress {
            self.write_device_event();
        }
        true
    }

    /// Guest TX: takes up to `out.room()` available chains, copies each frame (after the
    /// virtio-net header) into a packet from `pool` and appends it to `out`; every chain
    /// taken goes back as used with length 0. A chain that breaks a buffer rule, or whose
    /// frame is longer than `pool.max_len()`, goes back unread and is counted (`bad_chains`,
    /// `oversize`). When the pool is empty the queue stops and leaves the chain available
    /// (`no_mbufs`). A ring lie breaks the queue. Returns the packets appended.
    pub fn dequeue<P: RxPool>(
        &mut self,
        mem: &GuestMemory,
        pool: &mut P,
        out: &mut Burst<P::Pkt>,
        stats: &mut QueueStats,
    ) -> usize {
        if !self.begin(mem) {
            return 0;
        }
        let max_len = pool.max_len();
        let hdr_len = self.hdr_len as u64;
        let limit = hdr_len + max_len as u64;
        let mut segs = [Seg {
            ptr: ptr::null_mut(),
            len: 0,
        }; MAX_SEGS];
        let mut got = 0;
        let mut returned = false;
        while out.room() > 0 {
            let mut total = 0u64;
            let mut nsegs = 0usize;
            let walked = self.walk(mem, false, |s| {
                if nsegs < MAX_SEGS {
                    segs[nsegs] = s;
                    prefetch::read(s.ptr);
                }
                nsegs += 1;
                total += u64::from(s.len);
                total <= limit
            });
            let (id, ndesc, bad) = match walked {
                Walk::Empty => break,
                Walk::Broken => {
                    self.broken = true;
                    break;
                }
                Walk::Chain { id, ndesc, bad } => (id, ndesc, bad),
            };
            if !self.track_take(ndesc) {
                self.broken = true;
                break;
            }
            let outcome = if bad {
                Err(&mut stats.bad_chains)
            } else if total > limit {
                Err(&mut stats.oversize)
            } else if total <= hdr_len {
                Err(&mut stats.bad_chains)
            } else {
                Ok((total - hdr_len) as usize)
            };
            match outcome {
                Err(counter) => *counter += 1,
                Ok(len) => {
                    let copy = |dst: &mut [u8]| {
                        if nsegs <= MAX_SEGS {
                            gather(&segs[..nsegs], self.hdr_len, dst)
                        } else {
                            // Long chain: walk it again, copying; the guest may have changed it
                            // in between, so the copy checks the shape and lengths again.
                            let mut skip = self.hdr_len;
                            let mut at = 0usize;
                            let mut fits = true;
                            let again = self.walk(mem, false, |s| {
                                fits = gather_one(s, &mut skip, dst, &mut at);
                                fits
                            });
                            again
                                == (Walk::Chain {
                                    id,
                                    ndesc,
                                    bad: false,
                                })
                                && fits
                                && at == dst.len()
                        }
                    };
                    if !take_frame(pool, len, out, stats, &mut got, copy) {
                        self.track_untake(1);
                        break;
                    }
                }
            }
            self.take(ndesc);
            self.put_used(id, ndesc, 0);
            returned = true;
        }
        if returned {
            self.after_publish();
        }
        got
    }

    /// Guest RX: copies `pkts`, in order, into available guest buffers behind a zeroed
    /// virtio-net header (`num_buffers` set), with the rules of
    /// [`super::virtq::SplitQueue::enqueue`]: with `MRG_RXBUF` a frame may take several
    /// buffers (at most [`MAX_FRAME_BUFFERS`]); otherwise one chain that must hold header and
    /// frame, a frame larger than the chain being dropped (`oversize`) and the chain kept. A
    /// bad chain goes back with length 0 (`bad_chains`), with the buffers the frame had
    /// already filled, and the frame starts again after it. Out of guest buffers, after
    /// [`BAD_CHAIN_BUDGET`] bad chains in this call, or on a ring lie (the queue breaks), it
    /// stops; `no_guest_buffers` counts the frames left.
    ///
    /// Returns how many packets of `pkts` were consumed, a prefix: delivered, or dropped as
    /// oversize. The caller still owns (and frees) every packet.
    pub fn enqueue<Q: Packet>(
        &mut self,
        mem: &GuestMemory,
        pkts: &[Q],
        stats: &mut QueueStats,
    ) -> usize {
        if !self.begin(mem) {
            return 0;
        }
        let hdr = rx_header(self.hdr_len, self.mrg);
        let start_used = self.used_position();
        let mut done = 0;
        let bad_limit = stats.bad_chains + BAD_CHAIN_BUDGET;
        'pkts: for pkt in pkts {
            if stats.bad_chains >= bad_limit {
                stats.no_guest_buffers += (pkts.len() - done) as u64;
                break;
            }
            let frame = pkt.data();
            let need = self.hdr_len + frame.len();
            if self.mrg {
                // Where this frame (re)starts: after the last bad chain it met.
                let (mut start_idx, mut start_wrap) = (self.avail_idx, self.avail_wrap);
                let mut written = 0usize;
                let mut nbufs = 0usize;
                let mut num_buffers = [ptr::null_mut(); 2];
                while written < need {
                    if nbufs == MAX_FRAME_BUFFERS {
                        // A frame spread over this many buffers: drop it, leave them.
                        (self.avail_idx, self.avail_wrap) = (start_idx, start_wrap);
                        self.track_untake(nbufs);
                        stats.oversize += 1;
                        done += 1;
                        continue 'pkts;
                    }
                    match self.fill(mem, &hdr, frame, written, &mut num_buffers) {
                        (Walk::Chain { id, ndesc, bad }, n) if !bad && n > 0 => {
                            self.take_tracked(ndesc);
                            self.shadow[nbufs] = Pending {
                                id,
                                ndesc,
                                len: n as u32,
                            };
                            nbufs += 1;
                            written += n;
                        }
                        (Walk::Chain { id, ndesc, .. }, _) => {
                            // A bad (or empty) chain inside the frame's buffers: the buffers
                            // it took so far go back empty with it (used entries are in
                            // order), and the frame starts again after it.
                            self.take_tracked(ndesc);
                            for k in 0..nbufs {
                                let p = self.shadow[k];
                                self.put_used(p.id, p.ndesc, 0);
                            }
                            self.put_used(id, ndesc, 0);
                            stats.bad_chains += 1;
                            (start_idx, start_wrap) = (self.avail_idx, self.avail_wrap);
                            written = 0;
                            nbufs = 0;
                            if stats.bad_chains >= bad_limit {
                                stats.no_guest_buffers += (pkts.len() - done) as u64;
                                break 'pkts;
                            }
                        }
                        (walk, _) => {
                            // Out of buffers (or the ring lied): give back what this frame
                            // took; it wrote into them, harmlessly, they are still the
                            // device's.
                            (self.avail_idx, self.avail_wrap) = (start_idx, start_wrap);
                            self.track_untake(nbufs);
                            if walk == Walk::Broken {
                                self.broken = true;
                            }
                            stats.no_guest_buffers += (pkts.len() - done) as u64;
                            break 'pkts;
                        }
                    }
                }
                let nb = (nbufs as u16).to_le_bytes();
                for (p, b) in num_buffers.into_iter().zip(nb) {
                    // SAFETY: `fill` recorded these as pointers to bytes 10 and 11 of the
                    // header inside validated, mapped buffers of this frame (the last
                    // recording wins, and the frame's final attempt wrote the whole 12-byte
                    // header, so both are set); the memory table is borrowed for the call.
                    unsafe { ptr::write_volatile(p, b) };
                }
                for k in 0..nbufs {
                    let p = self.shadow[k];
                    self.put_used(p.id, p.ndesc, p.len);
                }
            } else {
                loop {
                    let mut unused = [ptr::null_mut(); 2];
                    match self.fill(mem, &hdr, frame, 0, &mut unused) {
                        (Walk::Chain { bad: false, .. }, n) if n < need => {
                            // The chain is too small for this frame: drop the frame, keep
                            // the chain for the next one.
                            stats.oversize += 1;
                            done += 1;
                            continue 'pkts;
                        }
                        (
                            Walk::Chain {
                                id,
                                ndesc,
                                bad: false,
                            },
                            n,
                        ) => {
                            self.take_tracked(ndesc);
                            self.put_used(id, ndesc, n as u32);
                            break;
                        }
                        (
                            Walk::Chain {
                                id,
                                ndesc,
                                bad: true,
                            },
                            _,
                        ) => {
                            self.take_tracked(ndesc);
                            self.put_used(id, ndesc, 0);
                            stats.bad_chains += 1;
                            if stats.bad_chains >= bad_limit {
                                stats.no_guest_buffers += (pkts.len() - done) as u64;
                                break 'pkts;
                            }
                        }
                        (walk, _) => {
                            if walk == Walk::Broken {
                                self.broken = true;
                            }
                            stats.no_guest_buffers += (pkts.len() - done) as u64;
                            break 'pkts;
                        }
                    }
                }
            }
            stats.packets += 1;
            stats.bytes += frame.len() as u64;
            done += 1;
        }
        if self.used_position() != start_used {
            self.after_publish();
        }
        done
    }

    /// Writes bytes `from..` of (`hdr[..hdr_len]` then `frame`) into the chain at the avail
    /// position, as far as it holds; returns the walk and the bytes written. Records where
    /// header bytes 10 and 11 (`num_buffers`) land.
    #[inline(always)]
    fn fill(
        &mut self,
        mem: &GuestMemory,
        hdr: &[u8; 12],
        frame: &[u8],
        from: usize,
        num_buffers: &mut [*mut u8; 2],
    ) -> (Walk, usize) {
        let hdr_len = self.hdr_len;
        let mut pos = from;
        let walk = self.walk(mem, true, |s| {
            fill_seg(s, hdr, hdr_len, frame, &mut pos, num_buffers)
        });
        (walk, pos - from)
    }
}
