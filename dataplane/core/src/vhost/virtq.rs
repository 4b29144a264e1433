//! The poll-mode split virtqueue, device side: guest TX chains into switch packets
//! ([`SplitQueue::dequeue`]) and switch packets into guest RX buffers
//! ([`SplitQueue::enqueue`]).
//!
//! Written by hand rather than with `virtio-queue`: that crate's queue reads rings through
//! `vm-memory`'s `GuestMemory` (not used here, see [`super::memory`] for why) and hands out
//! one descriptor chain at a time; here a whole burst of 32 chains is dequeued or filled
//! with one acquire load of `avail.idx`, one release store of `used.idx` and no allocation,
//! copying straight between guest buffers and switch packets (the per-packet cost is what
//! the switch's throughput is made of).
//!
//! # The guest is hostile
//! Rings and buffers live in memory the frontend writes concurrently. So:
//! - no Rust reference ever points into guest memory: descriptors and ring entries are read
//!   once with volatile reads into locals and only the local copy is validated and used;
//!   `avail.idx` is read with an acquire load and `used.idx` written with a release store
//!   (through `AtomicU16::from_ptr`, whose `&AtomicU16` is the one reference allowed: an
//!   atomic is made for concurrent writers);
//! - every index is checked (`head < size`, `next < table length`), every chain walk is
//!   bounded by the queue size (loops end), and every buffer range goes through
//!   [`GuestMemory::translate_gpa`], which returns a pointer only when the whole range is
//!   mapped;
//! - a bad chain is returned to the used ring with length 0 and counted; the queue goes on
//!   with the next one. Only an `avail.idx` more than `size` ahead (the ring state itself
//!   is impossible) marks the queue broken; a broken queue does nothing until rebuilt.
//!
//! # Fast path
//! No allocation, syscall, lock or log. Used entries are written in place (the guest does
//! not look past `used.idx`) and published with one release store per burst. Interrupt
//! decisions read the driver's flags right after that store (under the full fence the
//! notification protocol needs), so [`SplitQueue::needs_interrupt`] is a comparison of
//! cached values.
//!
//! # Memory
//! A queue holds raw pointers into the [`GuestMemory`] it was built on and only uses them
//! while a `&GuestMemory` with the same [`GuestMemory::id`] is borrowed by the call; handed
//! another table, `dequeue`/`enqueue` do nothing. After a new `SET_MEM_TABLE` the caller
//! rebuilds its queues (ring addresses must be translated again anyway).

use std::ptr::{self, NonNull};
use std::sync::atomic::{fence, AtomicU16, Ordering};

use super::inflight::SplitTrack;
use super::memory::GuestMemory;
use crate::prefetch;
use crate::switch::io::{Burst, Packet};

pub use super::layout::{feature, RingAddrs, MAX_QUEUE_SIZE};

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

/// Buffers of one chain remembered between sizing and copying a guest TX frame; longer
/// chains are walked a second time.
const MAX_SEGS: usize = 32;

/// Chains whose first buffers are prefetched at the start of a burst.
const PREFETCH_AHEAD: usize = 32;

/// Most descriptors followed in one chain (in the ring, and again in an indirect table),
/// as DPDK's `BUF_VECTOR_MAX`: virtio-net drivers use a few (Linux at most 19), and the
/// bound keeps a looping or absurdly long chain from costing more than this.
pub const MAX_CHAIN: u16 = 256;

/// Bad chains one `enqueue` call returns before it stops for this burst: with the chain
/// bound, the most work a hostile RX ring can cause per call is this many × `MAX_CHAIN`
/// descriptors (dequeue is bounded by its burst already).
pub const BAD_CHAIN_BUDGET: u64 = 32;

/// Why a queue could not be set up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    /// Size zero, not a power of two, or above [`MAX_QUEUE_SIZE`].
    #[error("queue size {size} is invalid: it must be a power of two from 1 to 32768")]
    BadSize {
        /// The size sent.
        size: u16,
    },
    /// A ring is not (wholly) inside one region of the memory table.
    #[error(
        "the {ring} ring ({len} bytes at frontend address {uva:#x}) is not inside the memory \
         table: the frontend must place rings in memory it shared with SET_MEM_TABLE"
    )]
    NotMapped {
        /// `"descriptor"`, `"available"` or `"used"`.
        ring: &'static str,
        /// Its frontend virtual address.
        uva: u64,
        /// Its length for this queue size.
        len: u64,
    },
    /// A ring is not aligned as virtio requires (16/2/4), in the frontend or once mapped.
    #[error("the {ring} ring at frontend address {uva:#x} is not {align}-byte aligned")]
    Misaligned {
        /// Which ring.
        ring: &'static str,
        /// Its frontend virtual address.
        uva: u64,
        /// The alignment it needs.
        align: u64,
    },
    /// The frontend negotiated the packed ring layout (a split queue was asked for).
    #[error("the packed ring layout was negotiated: this ring must be built as a packed queue")]
    PackedRing,
    /// A packed ring's `SET_VRING_BASE` names a slot past the ring (bits 0-14 are the slot,
    /// bit 15 the wrap counter).
    #[error(
        "vring base {base:#x} names slot {} of a {size}-descriptor packed ring: the slot \
         (bits 0-14) must be below the ring size",
        base & 0x7fff
    )]
    BadBase {
        /// The base sent.
        base: u16,
        /// The queue size.
        size: u16,
    },
}

/// Per-queue counters, kept by the worker that owns the queue.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueStats {
    /// Frames moved.
    pub packets: u64,
    /// Frame bytes moved (virtio-net headers not counted).
    pub bytes: u64,
    /// Chains returned with length 0 because they broke a rule (or heads out of range).
    pub bad_chains: u64,
    /// Frames not delivered to the guest for lack of RX buffers.
    pub no_guest_buffers: u64,
    /// Frames dropped for size: guest TX frames longer than the pool's buffers, or switch
    /// frames larger than a (non-mergeable) guest RX chain.
    pub oversize: u64,
    /// Times dequeue stopped because the packet pool was empty.
    pub no_mbufs: u64,
    /// Interrupts sent (counted by the caller that writes the call eventfd).
    pub interrupts: u64,
}

/// Where guest TX frames go: a source of empty packets.
pub trait RxPool {
    /// The packet type produced.
    type Pkt: Packet;
    /// A packet whose `data()` is exactly `len` bytes (contents garbage), or `None` when
    /// the pool is empty. `len <= max_len()`.
    fn alloc(&mut self, len: usize) -> Option<Self::Pkt>;
    /// Largest frame `alloc` can hold.
    fn max_len(&self) -> usize;
}

/// One descriptor as the guest lays it out (little-endian fields).
#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// A validated buffer of a chain: `len` bytes of mapped guest memory at `ptr`.
#[derive(Clone, Copy)]
pub(super) struct Seg {
    pub(super) ptr: *mut u8,
    pub(super) len: u32,
}

/// What `enqueue` made of one frame.
enum Placed {
    /// In the guest's buffers.
    Delivered,
    /// Dropped: larger than the guest's buffer (counted in `oversize`).
    Oversize,
    /// Not placed, and nothing after it is: the guest has no buffers left, or the burst met
    /// its budget of bad chains.
    Stop,
}

/// The chain broke a rule; return it with length 0.
struct BadChain;

/// What a chain walk needs of the queue (copied out so the walk can borrow the region hint).
#[derive(Clone, Copy)]
struct Table {
    desc: *const Desc,
    size: u16,
    indirect: bool,
}

impl Table {
    /// Walks the chain at `head` (`head < size`, checked by the caller), handing each
    /// buffer to `f` until it returns false or the chain ends. Buffers must all be
    /// device-writable (`write`) or all device-readable. At most `min(size, MAX_CHAIN)`
    /// descriptors are visited in the ring and as many in an indirect table, so loops end.
    #[inline(always)]
    fn walk(
        self,
        mem: &GuestMemory,
        hint: &mut usize,
        head: u16,
        write: bool,
        mut f: impl FnMut(Seg) -> bool,
    ) -> Result<(), BadChain> {
        let mut table = self.desc;
        let mut table_len = u32::from(self.size);
        let mut idx = u32::from(head);
        let max_steps = u32::from(self.size.min(MAX_CHAIN));
        let mut steps = max_steps;
        let mut in_indirect = false;
        loop {
            if idx >= table_len || steps == 0 {
                return Err(BadChain);
            }
            steps -= 1;
            // SAFETY: `table` points to `table_len` descriptors inside mapped guest memory,
            // aligned for `Desc` (the ring was translated and checked in `SplitQueue::new`,
            // an indirect table just below), and `idx < table_len`. A volatile read copies
            // the descriptor once; the guest may change it afterwards, we use only the copy.
            let d = unsafe { ptr::read_volatile(table.add(idx as usize)) };
            let flags = u16::from_le(d.flags);
            let addr = u64::from_le(d.addr);
            let len = u32::from_le(d.len);
            if flags & DESC_F_INDIRECT != 0 {
                if in_indirect || !self.indirect || flags & DESC_F_NEXT != 0 {
                    return Err(BadChain);
                }
                if len == 0 || len & 15 != 0 {
                    return Err(BadChain);
                }
                let p = mem
                    .translate_gpa_hinted(addr, u64::from(len), hint)
                    .ok_or(BadChain)?;
                if p.as_ptr() as usize & (std::mem::align_of::<Desc>() - 1) != 0 {
                    return Err(BadChain);
                }
                table = p.as_ptr().cast::<Desc>();
                table_len = len / 16;
                idx = 0;
                steps = max_steps;
                in_indirect = true;
                continue;
            }
            if (flags & DESC_F_WRITE != 0) != write {
                return Err(BadChain);
            }
            let ptr = if len == 0 {
                NonNull::dangling().as_ptr()
            } else {
                mem.translate_gpa_hinted(addr, u64::from(len), hint)
                    .ok_or(BadChain)?
                    .as_ptr()
            };
            if !f(Seg { ptr, len }) || flags & DESC_F_NEXT == 0 {
                return Ok(());
            }
            idx = u32::from(u16::from_le(d.next));
        }
    }
}

/// One split virtqueue, device side, for a poll-mode worker.
pub struct SplitQueue {
    table: Table,
    avail: *mut u8,
    used: *mut u8,
    mask: u16,
    mem_id: u64,
    hdr_len: usize,
    mrg: bool,
    event_idx: bool,
    /// Next avail ring slot to read (free-running).
    last_avail: u16,
    /// Next used ring slot to write; published to `used.idx` at the end of each burst.
    used_idx: u16,
    /// `used.idx` value at the last interrupt decision.
    signalled_used: u16,
    signalled_valid: bool,
    /// Driver's `avail.flags` and `used_event` as read right after the last publish.
    driver_flags: u16,
    used_event: u16,
    /// Poll mode asked for: keep notifications off at every burst.
    suppress: bool,
    broken: bool,
    /// Last memory region a buffer was found in.
    hint: usize,
    /// In-flight tracking (`INFLIGHT_SHMFD`), when the frontend shared a region.
    inflight: Option<SplitTrack>,
}

// SAFETY: the raw pointers point into guest memory that the queue only touches while the
// caller lends the matching `GuestMemory` (which is Send + Sync); the queue has no
// thread-affine state, so one worker may hand it to another.
unsafe impl Send for SplitQueue {}

impl std::fmt::Debug for SplitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitQueue")
            .field("size", &self.table.size)
            .field("last_avail", &self.last_avail)
            .field("used_idx", &self.used_idx)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// Translates one ring and checks its alignment, in the frontend and once mapped.
fn ring(
    mem: &GuestMemory,
    name: &'static str,
    uva: u64,
    len: u64,
    align: u64,
    host_align: usize,
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
    if p as usize & (host_align - 1) != 0 {
        return Err(RingError::Misaligned {
            ring: name,
            uva,
            align: host_align as u64,
        });
    }
    Ok(p)
}

/// Virtio's `vring_need_event`: has `new` passed `event` since `old`?
#[inline(always)]
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl SplitQueue {
    /// Translates and checks the three rings (descriptor table `16*size` bytes aligned 16,
    /// available ring `6+2*size` aligned 2, used ring `6+8*size` aligned 4). `base` is the
    /// `SET_VRING_BASE` value: the next avail index to read. The used index shadow starts at
    /// `base` too, as DPDK does for split rings: everything before `base` was used.
    /// `features` are the negotiated virtio features.
    pub fn new(
        mem: &GuestMemory,
        addrs: &RingAddrs,
        base: u16,
        features: u64,
    ) -> Result<SplitQueue, RingError> {
        let size = addrs.size;
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(RingError::BadSize { size });
        }
        if features & feature::RING_PACKED != 0 {
            return Err(RingError::PackedRing);
        }
        let n = u64::from(size);
        let desc = ring(
            mem,
            "descriptor",
            addrs.desc_uva,
            16 * n,
            16,
            std::mem::align_of::<Desc>(),
        )?;
        let avail = ring(mem, "available", addrs.avail_uva, 6 + 2 * n, 2, 2)?;
        let used = ring(mem, "used", addrs.used_uva, 6 + 8 * n, 4, 4)?;
        let mrg = features & feature::MRG_RXBUF != 0;
        Ok(SplitQueue {
            table: Table {
                desc: desc.cast::<Desc>(),
                size,
                indirect: features & feature::INDIRECT_DESC != 0,
            },
            avail,
            used,
            mask: size - 1,
            mem_id: mem.id(),
            hdr_len: if mrg || features & feature::VERSION_1 != 0 {
                12
            } else {
                10
            },
            mrg,
            event_idx: features & feature::EVENT_IDX != 0,
            last_avail: base,
            used_idx: base,
            signalled_used: base,
            signalled_valid: false,
            driver_flags: 0,
            used_event: 0,
            suppress: false,
            broken: false,
            hint: 0,
            inflight: None,
        })
    }

    /// Records in-flight descriptors in `track` from now on (see [`super::inflight`]).
    pub fn set_inflight(&mut self, track: SplitTrack) {
        self.inflight = Some(track);
    }

    /// In-flight tracking: `head` is taken from the avail ring (before its chain is read).
    #[inline(always)]
    fn track_take(&mut self, head: u16) {
        if let Some(t) = &mut self.inflight {
            t.take(head);
        }
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.table.size
    }

    /// Next avail index the device will read (what `GET_VRING_BASE` reports).
    pub fn last_avail_idx(&self) -> u16 {
        self.last_avail
    }

    /// Used index last published.
    pub fn used_idx(&self) -> u16 {
        self.used_idx
    }

    /// Bytes of virtio-net header in front of each frame (10 or 12).
    pub fn header_len(&self) -> usize {
        self.hdr_len
    }

    /// True once the driver put the ring in an impossible state (`avail.idx` more than
    /// `size` ahead); every further call does nothing.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Guest TX: takes up to `out.room()` available chains, copies each frame (after the
    /// virtio-net header, which may have its own descriptor or share one) into a packet from
    /// `pool` and appends it to `out`; every chain taken goes back to the used ring with
    /// length 0, published once at the end. A chain that breaks a rule, or whose frame is
    /// longer than `pool.max_len()`, goes back unread and is counted (`bad_chains`,
    /// `oversize`). When the pool is empty the queue stops and leaves the chain available
    /// (`no_mbufs`). Returns the packets appended.
    pub fn dequeue<P: RxPool>(
        &mut self,
        mem: &GuestMemory,
        pool: &mut P,
        out: &mut Burst<P::Pkt>,
        stats: &mut QueueStats,
    ) -> usize {
        if self.broken || mem.id() != self.mem_id {
            return 0;
        }
        let avail_idx = self.avail_idx();
        let pending = avail_idx.wrapping_sub(self.last_avail);
        if pending > self.table.size {
            self.broken = true;
            return 0;
        }
        if self.suppress {
            self.write_avail_event();
        }
        let budget = usize::from(pending).min(out.room());
        self.prefetch_ahead(mem, budget, false);
        let max_len = pool.max_len();
        let hdr_len = self.hdr_len as u64;
        let limit = hdr_len + max_len as u64;
        let mut segs = [Seg {
            ptr: ptr::null_mut(),
            len: 0,
        }; MAX_SEGS];
        let mut got = 0;
        let mut used = self.used_idx;
        for i in 0..budget {
            let head = self.avail_entry(self.last_avail);
            if i + 1 < budget {
                // The guest's core just wrote the next chain's descriptor: start pulling it
                // over while this frame is copied.
                let next = self.avail_entry(self.last_avail.wrapping_add(1));
                prefetch::read(
                    self.table
                        .desc
                        .wrapping_add(usize::from(next & self.mask))
                        .cast(),
                );
            }
            if head >= self.table.size {
                // No valid id to return: consume the entry and count it.
                self.last_avail = self.last_avail.wrapping_add(1);
                stats.bad_chains += 1;
                continue;
            }
            self.track_take(head);
            let mut total = 0u64;
            let mut nsegs = 0usize;
            let walked = self.table.walk(mem, &mut self.hint, head, false, |s| {
                if nsegs < MAX_SEGS {
                    segs[nsegs] = s;
                }
                nsegs += 1;
                total += u64::from(s.len);
                total <= limit
            });
            let outcome = match walked {
                Err(BadChain) => Err(&mut stats.bad_chains),
                Ok(()) if total > limit => Err(&mut stats.oversize),
                Ok(()) if total <= hdr_len => Err(&mut stats.bad_chains),
                Ok(()) => Ok((total - hdr_len) as usize),
            };
            match outcome {
                Err(counter) => *counter += 1,
                Ok(len) => {
                    let copy = |dst: &mut [u8]| {
                        if nsegs <= MAX_SEGS {
                            gather(&segs[..nsegs], self.hdr_len, dst)
                        } else {
                            // Long chain: walk it again, copying; the guest may have changed
                            // it in between, so the copy checks the lengths add up again.
                            let mut skip = self.hdr_len;
                            let mut at = 0usize;
                            let mut fits = true;
                            let again = self.table.walk(mem, &mut self.hint, head, false, |s| {
                                fits = gather_one(s, &mut skip, dst, &mut at);
                                fits
                            });
                            again.is_ok() && fits && at == dst.len()
                        }
                    };
                    if !take_frame(pool, len, out, stats, &mut got, copy) {
                        break;
                    }
                }
            }
            self.put_used(used, head, 0);
            used = used.wrapping_add(1);
            self.last_avail = self.last_avail.wrapping_add(1);
        }
        self.publish(used);
        got
    }

    /// Guest RX: copies `pkts`, in order, into available guest buffers behind a zeroed
    /// virtio-net header (`num_buffers` set). With `MRG_RXBUF` a frame may take several
    /// heads; otherwise it takes one chain (of any number of write-only descriptors) that
    /// must hold header and frame: a frame larger than the chain is dropped (`oversize`) and
    /// the chain kept for the next one. A bad chain goes back with length 0 (`bad_chains`)
    /// and the frame tries the next chain (with `MRG_RXBUF`, heads the frame had already
    /// filled go back with length 0 too, and it starts again after the bad chain). Out of
    /// guest buffers, or after [`BAD_CHAIN_BUDGET`] bad chains in this call, the queue
    /// stops (`no_guest_buffers` counts the frames left). Used entries are published once.
    ///
    /// Returns how many packets of `pkts` were consumed, a prefix: delivered, or dropped as
    /// oversize. The caller still owns (and frees) every packet.
    pub fn enqueue<Q: Packet>(
        &mut self,
        mem: &GuestMemory,
        pkts: &[Q],
        stats: &mut QueueStats,
    ) -> usize {
        if self.broken || mem.id() != self.mem_id {
            return 0;
        }
        let avail_idx = self.avail_idx();
        if avail_idx.wrapping_sub(self.last_avail) > self.table.size {
            self.broken = true;
            return 0;
        }
        if self.suppress {
            self.write_avail_event();
        }
        let hdr = rx_header(self.hdr_len, self.mrg);
        let ready = usize::from(avail_idx.wrapping_sub(self.last_avail));
        self.prefetch_ahead(mem, ready.min(pkts.len()), true);
        let mut used = self.used_idx;
        let mut done = 0;
        let bad_limit = stats.bad_chains + BAD_CHAIN_BUDGET;
        for pkt in pkts {
            if stats.bad_chains >= bad_limit {
                // Enough bad chains for one burst: the rest waits (and is counted as not
                // delivered), so a hostile ring cannot keep the worker here.
                stats.no_guest_buffers += (pkts.len() - done) as u64;
                break;
            }
            let frame = pkt.data();
            let placed = if self.mrg {
                self.enqueue_mergeable(mem, &hdr, frame, avail_idx, &mut used, stats, bad_limit)
            } else {
                self.enqueue_single(mem, &hdr, frame, avail_idx, &mut used, stats, bad_limit)
            };
            match placed {
                Placed::Delivered => {
                    stats.packets += 1;
                    stats.bytes += frame.len() as u64;
                    done += 1;
                }
                Placed::Oversize => done += 1,
                Placed::Stop => {
                    stats.no_guest_buffers += (pkts.len() - done) as u64;
                    break;
                }
            }
        }
        self.publish(used);
        done
    }

    /// `enqueue` of one frame with `MRG_RXBUF`: the frame (header first) is spread over as
    /// many heads as it needs, each returned with the length it holds, and the header's
    /// `num_buffers` says how many. A bad chain among them sends the heads taken so far back
    /// empty and the frame starts again after it; too few buffers give every head back to
    /// the ring (the frame and the rest of the burst wait).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn enqueue_mergeable(
        &mut self,
        mem: &GuestMemory,
        hdr: &[u8; 12],
        frame: &[u8],
        avail_idx: u16,
        used: &mut u16,
        stats: &mut QueueStats,
        bad_limit: u64,
    ) -> Placed {
        let need = self.hdr_len + frame.len();
        // Where this frame (re)starts: after the last bad chain it met.
        let (mut start_avail, mut start_used) = (self.last_avail, *used);
        let mut start_batch = self.inflight.as_ref().map(SplitTrack::mark);
        let mut written = 0usize;
        let mut nbufs = 0u16;
        let mut num_buffers = [ptr::null_mut(); 2];
        while written < need {
            if self.last_avail == avail_idx {
                // Not enough buffers for this frame: give back what it took (it wrote into
                // them, harmlessly: they are still the device's).
                self.last_avail = start_avail;
                *used = start_used;
                if let (Some(t), Some(m)) = (&mut self.inflight, start_batch) {
                    t.rollback(m);
                }
                return Placed::Stop;
            }
            let head = self.avail_entry(self.last_avail);
            self.last_avail = self.last_avail.wrapping_add(1);
            let filled = if head < self.table.size {
                self.track_take(head);
                self.fill(mem, head, hdr, frame, written, &mut num_buffers)
            } else {
                Err(BadChain)
            };
            match filled {
                Ok(n) if n > 0 => {
                    self.put_used(*used, head, n as u32);
                    *used = used.wrapping_add(1);
                    nbufs += 1;
                    written += n;
                }
                _ => {
                    // A bad (or empty) chain inside the frame's buffers: the heads it took
                    // so far go back empty with it, and the frame starts again after it
                    // (in-order used entries cannot skip a head).
                    let mut i = start_used;
                    while i != *used {
                        self.put_used_len(i, 0);
                        i = i.wrapping_add(1);
                    }
                    if head < self.table.size {
                        self.put_used(*used, head, 0);
                        *used = used.wrapping_add(1);
                    }
                    stats.bad_chains += 1;
                    (start_avail, start_used) = (self.last_avail, *used);
                    start_batch = self.inflight.as_ref().map(SplitTrack::mark);
                    written = 0;
                    nbufs = 0;
                    if stats.bad_chains >= bad_limit {
                        return Placed::Stop;
                    }
                }
            }
        }
        let nb = nbufs.to_le_bytes();
        for (p, b) in num_buffers.into_iter().zip(nb) {
            // SAFETY: `fill` recorded these as pointers to bytes 10 and 11 of the header
            // inside validated, mapped buffers of this frame's heads (the last recording
            // wins, and the frame's final attempt wrote the whole 12-byte header, so both are
            // set); the memory table is borrowed for the whole call.
            unsafe { ptr::write_volatile(p, b) };
        }
        Placed::Delivered
    }

    /// `enqueue` of one frame without `MRG_RXBUF`: the whole frame goes into one chain. A
    /// chain too small drops the frame and stays for the next one; a bad chain is returned
    /// empty and the next one is tried.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn enqueue_single(
        &mut self,
        mem: &GuestMemory,
        hdr: &[u8; 12],
        frame: &[u8],
        avail_idx: u16,
        used: &mut u16,
        stats: &mut QueueStats,
        bad_limit: u64,
    ) -> Placed {
        let need = self.hdr_len + frame.len();
        loop {
            if self.last_avail == avail_idx {
                return Placed::Stop;
            }
            let head = self.avail_entry(self.last_avail);
            let filled = if head < self.table.size {
                self.track_take(head);
                let mut unused = [ptr::null_mut(); 2];
                self.fill(mem, head, hdr, frame, 0, &mut unused)
            } else {
                Err(BadChain)
            };
            match filled {
                Ok(n) if n < need => {
                    // The chain is too small for this frame: drop the frame, keep the chain
                    // for the next one.
                    stats.oversize += 1;
                    return Placed::Oversize;
                }
                Ok(n) => {
                    self.put_used(*used, head, n as u32);
                    *used = used.wrapping_add(1);
                    self.last_avail = self.last_avail.wrapping_add(1);
                    return Placed::Delivered;
                }
                Err(BadChain) => {
                    if head < self.table.size {
                        self.put_used(*used, head, 0);
                        *used = used.wrapping_add(1);
                    }
                    self.last_avail = self.last_avail.wrapping_add(1);
                    stats.bad_chains += 1;
                    if stats.bad_chains >= bad_limit {
                        return Placed::Stop;
                    }
                }
            }
        }
    }

    /// After `dequeue`/`enqueue`: should the caller signal the call eventfd? False when
    /// nothing was added to the used ring since the last decision; otherwise the driver's
    /// `VRING_AVAIL_F_NO_INTERRUPT` flag, or with `EVENT_IDX` virtio's `vring_need_event`
    /// rule between `used_event` and the used index at the last decision. Both were read
    /// right after the burst published its entries, so this touches no guest memory.
    /// Polling frontends (DPDK virtio-user) set `NO_INTERRUPT`: always false for them.
    pub fn needs_interrupt(&mut self) -> bool {
        let new = self.used_idx;
        let old = self.signalled_used;
        if new == old {
            return false;
        }
        let need = if self.event_idx {
            !self.signalled_valid || need_event(self.used_event, new, old)
        } else {
            self.driver_flags & AVAIL_F_NO_INTERRUPT == 0
        };
        self.signalled_used = new;
        self.signalled_valid = true;
        need
    }

    /// Poll mode: ask the driver not to kick. Without `EVENT_IDX` this sets
    /// `VRING_USED_F_NO_NOTIFY` in the used ring's flags. With `EVENT_IDX` (where the driver
    /// ignores those flags) it sets `avail_event` half the index space ahead of the last
    /// avail index and moves it along at every burst: the driver kicks only when its avail
    /// index passes `avail_event`, which cannot happen while at most `size` buffers are
    /// outstanding, so no kick is ever needed. Written at the next `dequeue`/`enqueue`
    /// (while the memory table is lent) and kept up at each one after.
    pub fn suppress_notifications(&mut self) {
        self.suppress = true;
    }

    /// `avail.idx`, acquire: the ring entries before it are visible after this load.
    #[inline(always)]
    fn avail_idx(&self) -> u16 {
        // SAFETY: `avail` points to the mapped, 2-aligned available ring (checked in `new`;
        // the caller lends the memory table for this call); offset 2 is `idx`. The driver
        // writes it concurrently, which is what an atomic is for.
        u16::from_le(
            unsafe { AtomicU16::from_ptr(self.avail.add(2).cast::<u16>()) }.load(Ordering::Acquire),
        )
    }

    /// Head index in avail ring slot `idx & mask`.
    #[inline(always)]
    fn avail_entry(&self, idx: u16) -> u16 {
        let slot = usize::from(idx & self.mask);
        // SAFETY: the ring holds `size` u16 entries from offset 4 and `slot < size`; a
        // volatile read copies the guest's value once.
        u16::from_le(unsafe { ptr::read_volatile(self.avail.add(4 + 2 * slot).cast::<u16>()) })
    }

    /// Writes used ring slot `idx & mask` (not yet published).
    #[inline(always)]
    fn put_used(&mut self, idx: u16, id: u16, len: u32) {
        if let Some(t) = &mut self.inflight {
            t.used(id);
        }
        let slot = usize::from(idx & self.mask);
        // SAFETY: the used ring holds `size` 8-byte elements from offset 4, 4-aligned (checked
        // in `new`), and `slot < size`; the memory table is lent for the call.
        unsafe {
            let e = self.used.add(4 + 8 * slot).cast::<u32>();
            ptr::write_volatile(e, u32::from(id).to_le());
            ptr::write_volatile(e.add(1), len.to_le());
        }
    }

    /// Rewrites the length of used ring slot `idx & mask` (not yet published).
    #[inline(always)]
    fn put_used_len(&self, idx: u16, len: u32) {
        let slot = usize::from(idx & self.mask);
        // SAFETY: as in `put_used`: the element's `len` field is 4 bytes after its `id`.
        unsafe { ptr::write_volatile(self.used.add(8 + 8 * slot).cast::<u32>(), len.to_le()) };
    }

    /// Asks the memory system for the next `count` chains' first buffers (and the avail
    /// entries and descriptors on the way) before the burst walks them one by one. The lines
    /// were last written by the guest's core: requested together, their transfers overlap
    /// instead of costing one round trip after the other (what DPDK gets from its batched
    /// copies). Only hints: nothing is validated or changed here; the real walk checks all.
    #[inline(always)]
    fn prefetch_ahead(&self, mem: &GuestMemory, count: usize, write: bool) {
        let mut hint = self.hint;
        for k in 0..count.min(PREFETCH_AHEAD) {
            let head = self.avail_entry(self.last_avail.wrapping_add(k as u16));
            if head >= self.table.size {
                continue;
            }
            // SAFETY: `head < size`, so the descriptor is inside the mapped, aligned table
            // (checked in `new`); a volatile read copies the guest's value once.
            let d = unsafe { ptr::read_volatile(self.table.desc.add(usize::from(head))) };
            let len = u64::from(u32::from_le(d.len)).min(128);
            if len == 0 || u16::from_le(d.flags) & DESC_F_INDIRECT != 0 {
                continue;
            }
            if let Some(p) = mem.translate_gpa_hinted(u64::from_le(d.addr), len, &mut hint) {
                let p = p.as_ptr().cast_const();
                if write {
                    prefetch::write(p);
                    prefetch::write(p.wrapping_add(64));
                } else {
                    prefetch::read(p);
                    prefetch::read(p.wrapping_add(64));
                }
            }
        }
    }

    /// Publishes used entries up to `used` with one release store, then reads what the
    /// driver wants to hear about them.
    #[inline(always)]
    fn publish(&mut self, used: u16) {
        if used == self.used_idx {
            return;
        }
        self.used_idx = used;
        // SAFETY: offset 2 of the mapped, 4-aligned used ring is `idx`; the release store
        // orders every used element written before it.
        unsafe { AtomicU16::from_ptr(self.used.add(2).cast::<u16>()) }
            .store(used.to_le(), Ordering::Release);
        // The notification protocol: our used.idx store must be visible before we read the
        // driver's flags, as its flag/event write is before it rechecks used.idx.
        fence(Ordering::SeqCst);
        if let Some(t) = &mut self.inflight {
            t.published(used);
        }
        let n = usize::from(self.table.size);
        // SAFETY: `flags` is at offset 0 and `used_event` at 4 + 2*size of the mapped
        // available ring (6 + 2*size bytes, 2-aligned); volatile reads copy them once.
        unsafe {
            self.driver_flags = u16::from_le(ptr::read_volatile(self.avail.cast::<u16>()));
            self.used_event =
                u16::from_le(ptr::read_volatile(self.avail.add(4 + 2 * n).cast::<u16>()));
        }
    }

    /// Keeps kicks off (see `suppress_notifications`).
    #[inline(always)]
    fn write_avail_event(&self) {
        let n = usize::from(self.table.size);
        // SAFETY: `flags` is at offset 0 and `avail_event` at 4 + 8*size of the mapped used
        // ring (6 + 8*size bytes, 4-aligned); the memory table is lent for the call.
        unsafe {
            if self.event_idx {
                let ev = self.last_avail.wrapping_add(0x8000);
                ptr::write_volatile(self.used.add(4 + 8 * n).cast::<u16>(), ev.to_le());
            } else {
                ptr::write_volatile(self.used.cast::<u16>(), USED_F_NO_NOTIFY.to_le());
            }
        }
    }

    /// Writes bytes `from..` of (`hdr[..hdr_len]` then `frame`) into the chain at `head`,
    /// as far as it holds; returns the bytes written. Records where header bytes 10 and 11
    /// (`num_buffers`) land.
    #[inline(always)]
    fn fill(
        &mut self,
        mem: &GuestMemory,
        head: u16,
        hdr: &[u8; 12],
        frame: &[u8],
        from: usize,
        num_buffers: &mut [*mut u8; 2],
    ) -> Result<usize, BadChain> {
        let hdr_len = self.hdr_len;
        let mut pos = from;
        self.table.walk(mem, &mut self.hint, head, true, |s| {
            fill_seg(s, hdr, hdr_len, frame, &mut pos, num_buffers)
        })?;
        Ok(pos - from)
    }
}

/// The virtio-net header written before each guest RX frame: zeroed, except `num_buffers`
/// set to 1 by a virtio 1 device (12-byte header) without MRG_RXBUF (with it, the frame's
/// buffer count is patched in later).
#[inline(always)]
pub(super) fn rx_header(hdr_len: usize, mrg: bool) -> [u8; 12] {
    let mut hdr = [0u8; 12];
    if hdr_len == 12 && !mrg {
        // Without MRG_RXBUF a virtio 1 device sets num_buffers to 1.
        hdr[10] = 1;
    }
    hdr
}

/// Takes one guest TX frame of `len` bytes: a packet from `pool` that `copy` fills from the
/// chain, appended to `out` (counted in `stats` and `*got`) when the copy holds, else counted
/// in `bad_chains`. False when the pool is empty (`no_mbufs`): the caller stops. The
/// frame step of both ring layouts' `dequeue`; `out` must have room.
#[inline(always)]
pub(super) fn take_frame<P: RxPool>(
    pool: &mut P,
    len: usize,
    out: &mut Burst<P::Pkt>,
    stats: &mut QueueStats,
    got: &mut usize,
    copy: impl FnOnce(&mut [u8]) -> bool,
) -> bool {
    let Some(mut pkt) = pool.alloc(len) else {
        stats.no_mbufs += 1;
        return false;
    };
    if copy(pkt.data_mut()) {
        stats.packets += 1;
        stats.bytes += len as u64;
        *got += 1;
        // Cannot fail: the callers take at most `out.room()` chains.
        let _ = out.push(pkt);
    } else {
        stats.bad_chains += 1;
    }
    true
}

/// Writes bytes `*at..` of (`hdr[..hdr_len]` then `frame`) into the buffer `s`, as far as
/// it holds, advancing `*at`; records where header bytes 10 and 11 (`num_buffers`) land.
/// True while bytes are left to write. The buffer step of both ring layouts' `fill`.
#[inline(always)]
pub(super) fn fill_seg(
    s: Seg,
    hdr: &[u8; 12],
    hdr_len: usize,
    frame: &[u8],
    at: &mut usize,
    num_buffers: &mut [*mut u8; 2],
) -> bool {
    let need = hdr_len + frame.len();
    let mut pos = *at;
    let cap = s.len as usize;
    let mut off = 0usize;
    while off < cap && pos < need {
        let n;
        if pos < hdr_len {
            n = (cap - off).min(hdr_len - pos);
            for k in 0..n {
                if pos + k >= 10 {
                    // SAFETY: `off + k < cap`: inside this validated buffer.
                    num_buffers[pos + k - 10] = unsafe { s.ptr.add(off + k) };
                }
            }
            // SAFETY: `n` bytes fit in the buffer from `off` (`n <= cap - off`) and in
            // `hdr` from `pos` (`n <= hdr_len - pos`); guest memory is not ours, so
            // nothing overlaps.
            unsafe { ptr::copy_nonoverlapping(hdr.as_ptr().add(pos), s.ptr.add(off), n) };
        } else {
            n = (cap - off).min(need - pos);
            // SAFETY: as above, with `frame` from `pos - hdr_len` (`n <= need - pos`).
            unsafe {
                ptr::copy_nonoverlapping(frame.as_ptr().add(pos - hdr_len), s.ptr.add(off), n)
            };
        }
        pos += n;
        off += n;
    }
    *at = pos;
    pos < need
}

/// Copies the chain `segs`, minus its first `skip` bytes, into `dst`; true when the lengths
/// matched exactly.
#[inline(always)]
pub(super) fn gather(segs: &[Seg], mut skip: usize, dst: &mut [u8]) -> bool {
    let mut at = 0;
    for &s in segs {
        if !gather_one(s, &mut skip, dst, &mut at) {
            return false;
        }
    }
    at == dst.len()
}

/// Copies one buffer into `dst` at `*at`, after skipping `*skip` bytes (header). False when
/// it would overflow `dst`.
#[inline(always)]
pub(super) fn gather_one(s: Seg, skip: &mut usize, dst: &mut [u8], at: &mut usize) -> bool {
    let len = s.len as usize;
    if *skip >= len {
        *skip -= len;
        return true;
    }
    let n = len - *skip;
    if n > dst.len() - *at {
        return false;
    }
    // SAFETY: `s` is a validated buffer of `len` mapped bytes, so `skip..len` is readable;
    // `dst[at..at+n]` is in bounds (checked above); a packet buffer is not guest memory.
    unsafe { ptr::copy_nonoverlapping(s.ptr.add(*skip), dst.as_mut_ptr().add(*at), n) };
    *skip = 0;
    *at += n;
    true
}
