//! The memif shared memory and one running ring, switch side (the master's view).
//!
//! A memif ring lives in a region the slave allocated: a header (`cookie`, `flags` and
//! `head` on one cache line, `tail` on the next) and `2^log2` descriptors
//! `{flags: u16, region: u16, length: u32, offset: u32, metadata: u32}` naming buffers in
//! any region. In both directions the slave owns the buffers:
//!
//! - **slave to master** ([`Direction::S2m`], the switch receives): the slave fills
//!   buffers and advances `head`; the switch copies frames out and advances `tail` to hand
//!   the slots back.
//! - **master to slave** ([`Direction::M2s`], the switch transmits): the slave posts empty
//!   buffers by advancing `head`; the switch copies frames in, sets each descriptor's
//!   `length`, and advances `tail`.
//!
//! Everything in the region is the peer's to change at any time. The switch keeps its own
//! index in its own memory (it never reads back the index it publishes), reads each
//! descriptor once into a local copy before checking it, checks every buffer
//! (`region`, `offset`, `length`) against the mapped size of its region, and gives up on a
//! ring (breaks it, counted by the caller) whose `head` claims more than the ring size
//! outstanding. A bad descriptor costs only its own frame.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use crate::switch::io::{Burst, Packet};
use crate::vhost::memory::{GuestMemory, MemoryError, RegionSpec};
use crate::vhost::virtq::RxPool;

/// Bytes of a ring header before the descriptors.
pub const RING_HEADER: usize = 128;
/// Bytes of one descriptor.
pub const DESC_SIZE: usize = 16;
/// Offset of `cookie` (`u32`) in the ring header.
pub const COOKIE_OFFSET: usize = 0;
/// Offset of `flags` (`u16`) in the ring header.
pub const FLAGS_OFFSET: usize = 4;
/// Offset of `head` (`u16`) in the ring header.
pub const HEAD_OFFSET: usize = 6;
/// Offset of `tail` (`u16`) in the ring header (its own cache line).
pub const TAIL_OFFSET: usize = 64;
/// Ring flag: the receiver polls and wants no interrupts.
pub const RING_FLAG_MASK_INT: u16 = 1;
/// Descriptor flag: the frame continues in the next slot.
pub const DESC_FLAG_NEXT: u16 = 1;
/// Largest log2 ring size accepted (16384 descriptors, DPDK's limit too).
pub const MAX_LOG2_RING: u8 = 14;
/// Most regions a peer may add.
pub const MAX_REGIONS: usize = 64;
/// Largest region accepted (1 TiB).
pub const MAX_REGION_SIZE: u64 = 1 << 40;
/// Most slots one frame may span.
pub const MAX_CHAIN: usize = 16;

/// Bytes a ring of `2^log2` descriptors takes.
pub fn ring_bytes(log2: u8) -> u64 {
    RING_HEADER as u64 + ((DESC_SIZE as u64) << log2)
}

/// Which way a ring carries frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Slave to master: the switch receives.
    S2m,
    /// Master to slave: the switch transmits.
    M2s,
}

/// Why a region or a ring was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The peer sent more regions than the switch accepts.
    #[error("memif region {index} is over the limit of {MAX_REGIONS} regions")]
    TooMany {
        /// Index sent.
        index: u16,
    },
    /// Regions must come in order from 0.
    #[error("memif region index {index} out of order: the next region must be {expected}")]
    OutOfOrder {
        /// Index sent.
        index: u16,
        /// Index expected.
        expected: usize,
    },
    /// Size 0 or over [`MAX_REGION_SIZE`].
    #[error("memif region {index} has size {size}: it must be 1 byte to 1 TiB")]
    Size {
        /// Index.
        index: u16,
        /// Size sent.
        size: u64,
    },
    /// The region's file cannot be sealed against shrinking, so the peer could truncate it
    /// under the switch.
    #[error("the file of memif region {index} cannot be sealed against shrinking (F_SEAL_SHRINK): the peer must share a memfd created with MFD_ALLOW_SEALING")]
    NotSealable {
        /// Index.
        index: u16,
    },
    /// Mapping failed (file too short, mmap refused).
    #[error("memif region {index}: {source}")]
    Map {
        /// Index.
        index: u16,
        /// Why.
        source: MemoryError,
    },
}

/// Why a ring was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The ring names a region the peer has not added.
    #[error("memif ring names region {region}, but only {regions} were added")]
    NoRegion {
        /// Region named.
        region: u16,
        /// Regions added.
        regions: usize,
    },
    /// log2 ring size 0 or over [`MAX_LOG2_RING`].
    #[error("memif ring log2 size {0} is outside 1-{MAX_LOG2_RING}")]
    Size(u8),
    /// The ring header is not 8-byte aligned.
    #[error("memif ring offset {0} is not a multiple of 8")]
    Unaligned(u32),
    /// The ring does not fit in its region.
    #[error("memif ring at offset {offset} with {bytes} bytes does not fit in region {region} of {size} bytes")]
    OutOfRegion {
        /// Region.
        region: u16,
        /// Offset.
        offset: u32,
        /// Ring bytes.
        bytes: u64,
        /// Region size.
        size: u64,
    },
    /// The slave has not initialised the ring (`cookie` is wrong).
    #[error("memif ring has cookie {0:#x}, not 0x3e31f20: the slave did not initialise it")]
    Cookie(u32),
}

#[derive(Clone, Copy)]
struct RegionRef {
    base: NonNull<u8>,
    size: u64,
}

/// The peer's regions, mapped: region `i` of the table is the `i`-th `ADD_REGION`.
pub struct MemifMemory {
    regions: Box<[RegionRef]>,
    _maps: Vec<GuestMemory>,
}

// SAFETY: the pointers point into mappings `_maps` owns (or, for `from_raw`, memory the
// caller keeps alive); `MemifMemory` never writes through them itself.
unsafe impl Send for MemifMemory {}
// SAFETY: as for `Send`: `&self` methods only compute bounds-checked pointers.
unsafe impl Sync for MemifMemory {}

impl std::fmt::Debug for MemifMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemifMemory")
            .field("regions", &self.regions.len())
            .finish()
    }
}

/// Regions as they arrive, before `CONNECT` freezes them into a [`MemifMemory`].
#[derive(Default)]
pub struct RegionsBuilder {
    regions: Vec<RegionRef>,
    maps: Vec<GuestMemory>,
}

impl RegionsBuilder {
    /// Regions added so far.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// True before the first region.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Size of region `i`.
    pub fn size(&self, i: u16) -> Option<u64> {
        self.regions.get(usize::from(i)).map(|r| r.size)
    }

    /// Checks and maps region `index` of `size` bytes from `file`: index in order, size in
    /// range, the file sealed against shrinking (the switch adds the seal; a file that does
    /// not take it is refused) and at least `size` bytes long.
    pub fn add(&mut self, index: u16, size: u64, file: File) -> Result<(), RegionError> {
        if usize::from(index) >= MAX_REGIONS {
            return Err(RegionError::TooMany { index });
        }
        if usize::from(index) != self.regions.len() {
            return Err(RegionError::OutOfOrder {
                index,
                expected: self.regions.len(),
            });
        }
        if size == 0 || size > MAX_REGION_SIZE {
            return Err(RegionError::Size { index, size });
        }
        let fd = file.as_raw_fd();
        // SAFETY: `fd` is open (owned by `file`); adding F_SEAL_SHRINK only forbids future
        // truncation; a failure is detected by the read-back below.
        unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        // SAFETY: as above; F_GET_SEALS only reads.
        let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(RegionError::NotSealable { index });
        }
        let spec = RegionSpec {
            guest_phys_addr: 0,
            size,
            user_addr: 0,
            mmap_offset: 0,
        };
        let map = GuestMemory::map(vec![(spec, file)])
            .map_err(|source| RegionError::Map { index, source })?;
        let (base, size) = map.region_host(0).expect("one region was mapped");
        self.regions.push(RegionRef { base, size });
        self.maps.push(map);
        Ok(())
    }

    /// The table the rings run on.
    pub fn build(self) -> MemifMemory {
        MemifMemory {
            regions: self.regions.into_boxed_slice(),
            _maps: self.maps,
        }
    }
}

impl MemifMemory {
    /// A table over memory the caller owns (tests, benches).
    ///
    /// # Safety
    /// Each pointer must be valid for reads and writes of its `size` bytes, 8-byte aligned,
    /// for as long as the returned value (and any ring built on it) is used.
    pub unsafe fn from_raw(regions: &[(*mut u8, u64)]) -> MemifMemory {
        MemifMemory {
            regions: regions
                .iter()
                .map(|(p, size)| RegionRef {
                    base: NonNull::new(*p).expect("MemifMemory::from_raw: null region"),
                    size: *size,
                })
                .collect(),
            _maps: Vec::new(),
        }
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// True when there is no region.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Host pointer to `[offset, offset + len)` of `region` when all of it lies inside.
    #[inline(always)]
    fn buffer(&self, region: u16, offset: u32, len: u32) -> Option<*mut u8> {
        let r = self.regions.get(usize::from(region))?;
        // u32 + u32 cannot overflow u64.
        if u64::from(offset) + u64::from(len) > r.size {
            return None;
        }
        // SAFETY: `offset + len <= size`, so the pointer stays inside the region's mapping.
        Some(unsafe { r.base.as_ptr().add(offset as usize) })
    }
}

/// One descriptor, read once out of shared memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Desc {
    /// [`DESC_FLAG_NEXT`].
    pub flags: u16,
    /// Region of the buffer.
    pub region: u16,
    /// Bytes of frame (S2M) or of buffer room (M2S, as posted).
    pub length: u32,
    /// Offset of the buffer in its region.
    pub offset: u32,
    /// Unused in Ethernet mode.
    pub metadata: u32,
}

/// Per-burst counters, added to the port's by the caller.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct BurstStats {
    /// Frames moved.
    pub packets: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Descriptors that named memory outside their region (or chains too long or empty):
    /// their frame dropped.
    pub bad_descs: u64,
    /// Frames larger than a switch buffer (receive): dropped.
    pub oversize: u64,
    /// Times receive stopped because the packet pool was empty.
    pub no_mbufs: u64,
    /// Frames the peer had no buffers for (transmit).
    pub no_peer_buffers: u64,
}

/// A validated buffer.
#[derive(Clone, Copy)]
struct Seg {
    ptr: *mut u8,
    len: u32,
}

/// One memif ring, switch side.
pub struct MemifQueue {
    mem: Arc<MemifMemory>,
    ring: NonNull<u8>,
    dir: Direction,
    size: u16,
    mask: u16,
    /// S2M: the slot after the last frame taken; M2S: the switch's `tail`. Never read back
    /// from shared memory.
    next: u16,
    broken: bool,
}

// SAFETY: the ring pointer points into `mem`, which the queue keeps alive; one thread at a
// time uses a queue (`&mut self` for every burst).
unsafe impl Send for MemifQueue {}

impl std::fmt::Debug for MemifQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemifQueue")
            .field("dir", &self.dir)
            .field("size", &self.size)
            .field("next", &self.next)
            .field("broken", &self.broken)
            .finish()
    }
}

impl MemifQueue {
    /// Checks the ring the peer announced (region, alignment, fit, cookie) and prepares to
    /// run it from index 0. A receive ring is marked "no interrupts" (the switch polls).
    pub fn new(
        mem: Arc<MemifMemory>,
        dir: Direction,
        region: u16,
        offset: u32,
        log2: u8,
    ) -> Result<MemifQueue, RingError> {
        if log2 == 0 || log2 > MAX_LOG2_RING {
            return Err(RingError::Size(log2));
        }
        if !offset.is_multiple_of(8) {
            return Err(RingError::Unaligned(offset));
        }
        let bytes = ring_bytes(log2);
        let Some(r) = mem.regions.get(usize::from(region)).copied() else {
            return Err(RingError::NoRegion {
                region,
                regions: mem.len(),
            });
        };
        if u64::from(offset) + bytes > r.size {
            return Err(RingError::OutOfRegion {
                region,
                offset,
                bytes,
                size: r.size,
            });
        }
        // SAFETY: `offset + bytes <= size`: the header and every descriptor lie inside the
        // region's mapping, which `mem` keeps alive for the queue's life.
        let ring = unsafe { NonNull::new_unchecked(r.base.as_ptr().add(offset as usize)) };
        let q = MemifQueue {
            mem,
            ring,
            dir,
            size: 1u16 << log2,
            mask: (1u16 << log2) - 1,
            next: 0,
            broken: false,
        };
        // SAFETY: the cookie lies inside the checked header and is 4-byte aligned (offset is
        // a multiple of 8 in a page-aligned mapping); a volatile read of memory the peer may
        // write at any time.
        let cookie = unsafe { std::ptr::read_volatile(q.ring.as_ptr().cast::<u32>()) };
        if cookie != super::protocol::COOKIE {
            return Err(RingError::Cookie(cookie));
        }
        if dir == Direction::S2m {
            q.flags().fetch_or(RING_FLAG_MASK_INT, Ordering::Relaxed);
        }
        Ok(q)
    }

    /// Ring size in descriptors.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Which way the ring runs.
    pub fn direction(&self) -> Direction {
        self.dir
    }

    /// True once the peer put the ring in an impossible state; the ring is not touched again.
    #[inline]
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    #[inline(always)]
    fn word(&self, off: usize) -> &AtomicU16 {
        // SAFETY: `off` is one of the header's u16 fields, inside the checked header,
        // 2-byte aligned; the memory is shared with the peer, so only atomic access is used.
        unsafe { &*self.ring.as_ptr().add(off).cast::<AtomicU16>() }
    }

    #[inline(always)]
    fn flags(&self) -> &AtomicU16 {
        self.word(FLAGS_OFFSET)
    }

    #[inline(always)]
    fn head(&self) -> &AtomicU16 {
        self.word(HEAD_OFFSET)
    }

    #[inline(always)]
    fn tail(&self) -> &AtomicU16 {
        self.word(TAIL_OFFSET)
    }

    /// True when the peer did not mask interrupts on this (transmit) ring: it sleeps on its
    /// eventfd and wants a signal after frames arrive.
    #[inline]
    pub fn peer_wants_interrupt(&self) -> bool {
        self.flags().load(Ordering::Relaxed) & RING_FLAG_MASK_INT == 0
    }

    #[inline(always)]
    fn desc_ptr(&self, slot: u16) -> *mut Desc {
        // SAFETY: `slot & mask < size`, and the header plus `size` descriptors lie inside the
        // region (checked in `new`).
        unsafe {
            self.ring
                .as_ptr()
                .add(RING_HEADER + DESC_SIZE * usize::from(slot & self.mask))
                .cast::<Desc>()
        }
    }

    #[inline(always)]
    fn read_desc(&self, slot: u16) -> Desc {
        // SAFETY: in bounds (see `desc_ptr`) and 4-byte aligned; read once, volatile, as the
        // peer may change it at any time: the copy is what gets checked and used.
        unsafe { std::ptr::read_volatile(self.desc_ptr(slot)) }
    }

    /// Receive (S2M): copies up to `out.room()` frames the slave posted into packets from
    /// `pool`, then hands their slots back. Returns the frames appended.
    #[inline]
    pub fn dequeue<P: RxPool>(
        &mut self,
        pool: &mut P,
        out: &mut Burst<P::Pkt>,
        st: &mut BurstStats,
    ) -> usize {
        debug_assert_eq!(self.dir, Direction::S2m);
        if self.broken {
            return 0;
        }
        let head = self.head().load(Ordering::Acquire);
        let avail = head.wrapping_sub(self.next);
        if avail == 0 {
            return 0;
        }
        if avail > self.size {
            self.broken = true;
            return 0;
        }
        let mut cur = self.next;
        let mut got = 0;
        let mut segs = [Seg {
            ptr: std::ptr::null_mut(),
            len: 0,
        }; MAX_CHAIN];
        while cur != head && out.room() > 0 {
            // Gather one frame's slots.
            let mut n = 0;
            let mut total = 0usize;
            let mut bad = false;
            let mut slot = cur;
            let complete = loop {
                if slot == head {
                    break false;
                }
                let d = self.read_desc(slot);
                slot = slot.wrapping_add(1);
                if n == MAX_CHAIN {
                    bad = true;
                } else if let Some(ptr) = self.mem.buffer(d.region, d.offset, d.length) {
                    segs[n] = Seg { ptr, len: d.length };
                    n += 1;
                    total += d.length as usize;
                } else {
                    bad = true;
                }
                if d.flags & DESC_FLAG_NEXT == 0 {
                    break true;
                }
            };
            if !complete {
                // The rest of the frame is not posted yet.
                break;
            }
            if bad || total == 0 {
                st.bad_descs += 1;
                cur = slot;
                continue;
            }
            if total > pool.max_len() {
                st.oversize += 1;
                cur = slot;
                continue;
            }
            let Some(mut pkt) = pool.alloc(total) else {
                st.no_mbufs += 1;
                break;
            };
            let dst = pkt.data_mut();
            let mut at = 0;
            for s in &segs[..n] {
                let len = s.len as usize;
                // SAFETY: `s.ptr` has `len` bytes inside a mapped region (checked by
                // `buffer`); `dst` holds `total` bytes, the sum of the lengths. The source
                // is shared memory the peer may write meanwhile: a byte copy of whatever is
                // there, which only the peer's own frame depends on.
                unsafe {
                    std::ptr::copy_nonoverlapping(s.ptr, dst.as_mut_ptr().add(at), len);
                }
                at += len;
            }
            st.packets += 1;
            st.bytes += total as u64;
            let _ = out.push(pkt);
            got += 1;
            cur = slot;
        }
        if cur != self.next {
            self.next = cur;
            self.tail().store(cur, Ordering::Release);
        }
        got
    }

    /// Transmit (M2S): copies `pkts` into the buffers the slave posted, in order. Returns
    /// how many the slave took (a prefix); the caller still owns and frees all of them.
    #[inline]
    pub fn enqueue<Q: Packet>(&mut self, pkts: &[Q], st: &mut BurstStats) -> usize {
        debug_assert_eq!(self.dir, Direction::M2s);
        if self.broken {
            return 0;
        }
        let head = self.head().load(Ordering::Acquire);
        let free = head.wrapping_sub(self.next);
        if free > self.size {
            self.broken = true;
            return 0;
        }
        let mut slot = self.next;
        let mut sent = 0;
        'pkts: for pkt in pkts {
            let data = pkt.data();
            let start = slot;
            let mut at = 0;
            let mut used = 0;
            loop {
                if slot == head || used == MAX_CHAIN {
                    // No room for the rest: this frame and the ones after it stay out.
                    slot = start;
                    break 'pkts;
                }
                let d = self.read_desc(slot);
                let p = self.desc_ptr(slot);
                let room = d.length.min((data.len() - at) as u32);
                let Some(dst) = self.mem.buffer(d.region, d.offset, room) else {
                    // A buffer outside its region: handed back empty, the frame tries the
                    // next slot.
                    st.bad_descs += 1;
                    // SAFETY: `p` is this slot's descriptor inside the ring (see
                    // `desc_ptr`); the switch owns the slot until it publishes `tail`.
                    unsafe {
                        std::ptr::addr_of_mut!((*p).length).write_volatile(0);
                        std::ptr::addr_of_mut!((*p).flags).write_volatile(0);
                    }
                    if used > 0 {
                        // A frame already split over earlier slots cannot skip one.
                        slot = start;
                        break 'pkts;
                    }
                    slot = slot.wrapping_add(1);
                    continue;
                };
                // SAFETY: `dst` has `room` bytes inside a region (checked by `buffer`),
                // `data[at..at + room]` is in bounds (`room <= data.len() - at`).
                unsafe {
                    std::ptr::copy_nonoverlapping(data.as_ptr().add(at), dst, room as usize);
                }
                at += room as usize;
                used += 1;
                let more = at < data.len();
                // SAFETY: as above: this slot's descriptor, owned by the switch until `tail`.
                unsafe {
                    std::ptr::addr_of_mut!((*p).length).write_volatile(room);
                    std::ptr::addr_of_mut!((*p).flags).write_volatile(if more {
                        DESC_FLAG_NEXT
                    } else {
                        0
                    });
                }
                slot = slot.wrapping_add(1);
                if !more {
                    break;
                }
            }
            st.packets += 1;
            st.bytes += data.len() as u64;
            sent += 1;
        }
        st.no_peer_buffers += (pkts.len() - sent) as u64;
        if slot != self.next {
            self.next = slot;
            self.tail().store(slot, Ordering::Release);
        }
        sent
    }
}
