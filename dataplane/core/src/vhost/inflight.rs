//! In-flight I/O tracking (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`, `GET_INFLIGHT_FD` and
//! `SET_INFLIGHT_FD`): a shared-memory record of the descriptors a queue took and has not
//! returned yet, kept by the frontend across a crash of the switch and handed back when it
//! reconnects, so the restarted switch completes each of them exactly once.
//!
//! # Layout (the vhost-user spec's "Inflight I/O tracking")
//! The switch allocates one memfd on `GET_INFLIGHT_FD`, `num_queues` queue regions back to
//! back, each [`queue_stride`] bytes (64-byte aligned, large enough for either layout, since
//! the frontend may ask before it sets the features). A split queue region is
//! `QueueRegionSplit { features: u64, version: u16, desc_num: u16, last_batch_head: u16,
//! used_idx: u16, desc: [DescStateSplit { inflight: u8, padding: [u8; 5], next: u16,
//! counter: u64 }; desc_num] }`; a packed one is `QueueRegionPacked { features, version,
//! desc_num, free_head, old_free_head, used_idx, old_used_idx: u16s, used_wrap_counter,
//! old_used_wrap_counter: u8, padding: [u8; 7], desc: [DescStatePacked { inflight: u8,
//! padding: u8, next, last, num: u16, counter: u64, id, flags: u16, len: u32, addr: u64 };
//! desc_num] }`. The split sizes come from the `vhost` crate's `DescStateSplit` and
//! `QueueRegionSplit` (checked below). Its `QueueRegionPacked` is `repr(packed)`, which puts
//! `desc` at byte 29, where the spec's C struct (and DPDK's `rte_vhost_inflight_info_packed`)
//! have it at 32 (the array of 8-aligned entries is aligned): the packed offsets are written
//! here by hand. Nothing in the region is ever referenced from Rust: the frontend shares it,
//! so every access is a volatile read or write of a copy at a checked offset.
//!
//! # Writes, in the spec's order
//! Split: taking head `i` sets `desc[i].counter` (a per-queue counter, then incremented) and
//! then `desc[i].inflight = 1`, before the chain is read or written. Putting it on the used
//! ring sets `desc[i].next = last_batch_head`, `last_batch_head = i`; after the burst's
//! `used.idx` store, each head of the batch gets `inflight = 0`, then `used_idx = used.idx`.
//! Packed: taking a chain records each descriptor (`addr`, `len`, `flags`, `id`) in entries
//! taken from the free list, the head entry's `counter`, `num`, `last` and `inflight = 1`,
//! then `free_head` and `old_free_head`; returning it links its entries back
//! (`desc[last].next = free_head`, `free_head = head`) and moves `used_idx` and
//! `used_wrap_counter` on, then the ring's used flags are stored, then `inflight = 0` and the
//! `old_*` copies are set. `used_idx` and `used_wrap_counter` (with their `old_*` copies)
//! sit in one aligned 8-byte word and change together in one store (see `P_USED_PAIR`): the
//! resume check reads the ring at `old_used_idx` under `old_used_wrap_counter`, and a crash
//! between two separate stores would pair an index of one lap with the counter of another.
//! The fast path only adds these plain stores (and reads of private
//! copies): no syscall, lock or allocation.
//!
//! # Resume
//! When a ring starts with a region attached, [`attach`] reads the region's state, repairs a
//! batch the crash cut in half as the spec says, and checks the in-flight descriptors
//! against the ring. This switch takes chains in ring order and returns them in the same
//! order, so the descriptors in flight at a crash are always the next ones from the used
//! position, in counter order: resubmitting them in counter order is resuming the ring at the
//! used position (split: `used.idx` after the repair; packed: `old_used_idx` and
//! `old_used_wrap_counter`), which is what the queue is built with. A packed chain resubmitted
//! reuses its entries. A region that breaks a rule (an index out of range, a `next` loop, a
//! counter given twice, in-flight descriptors that are not the ring's next chains) is an
//! [`InflightError`]: the ring is refused and counted, nothing is read out of bounds.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{compiler_fence, Ordering};
use std::sync::Arc;

use vhost::vhost_user::message::{DescStatePacked, DescStateSplit, QueueRegionSplit};

use super::layout::MAX_QUEUE_SIZE;

/// Bytes of a split queue region's header (`desc` starts here).
pub const SPLIT_HEADER: usize = 16;
/// Bytes of one `DescStateSplit`.
pub const SPLIT_DESC: usize = 16;
/// Bytes of a packed queue region's header (the C layout: `desc` aligned to 8).
pub const PACKED_HEADER: usize = 32;
/// Bytes of one `DescStatePacked`.
pub const PACKED_DESC: usize = 32;
/// Queue regions start on this boundary (as DPDK's and libvhost-user's).
const ALIGN: usize = 64;
/// The region format this switch writes.
const VERSION: u16 = 1;

const _: () = assert!(std::mem::size_of::<DescStateSplit>() == SPLIT_DESC);
const _: () = assert!(std::mem::offset_of!(QueueRegionSplit, desc) == SPLIT_HEADER);
const _: () = assert!(std::mem::size_of::<DescStatePacked>() == PACKED_DESC);

// Split header fields.
const S_FEATURES: usize = 0;
const S_VERSION: usize = 8;
const S_DESC_NUM: usize = 10;
const S_LAST_BATCH_HEAD: usize = 12;
const S_USED_IDX: usize = 14;
// DescStateSplit fields.
const SD_INFLIGHT: usize = 0;
const SD_NEXT: usize = 6;
const SD_COUNTER: usize = 8;
// Packed header fields.
const P_FEATURES: usize = 0;
const P_VERSION: usize = 8;
const P_DESC_NUM: usize = 10;
const P_FREE_HEAD: usize = 12;
const P_OLD_FREE_HEAD: usize = 14;
const P_USED_IDX: usize = 16;
const P_OLD_USED_IDX: usize = 18;
const P_USED_WRAP: usize = 20;
const P_OLD_USED_WRAP: usize = 21;
// DescStatePacked fields.
const PD_INFLIGHT: usize = 0;
const PD_NEXT: usize = 2;
const PD_LAST: usize = 4;
const PD_NUM: usize = 6;
const PD_COUNTER: usize = 8;
const PD_ID: usize = 16;
const PD_FLAGS: usize = 18;
const PD_LEN: usize = 20;
const PD_ADDR: usize = 24;

/// Packed descriptor flags the resume looks at.
const DESC_F_AVAIL: u16 = 1 << 7;
const DESC_F_USED: u16 = 1 << 15;

/// The packed header's bytes 16..24 (`used_idx`, `old_used_idx`, `used_wrap_counter`,
/// `old_used_wrap_counter` and two padding bytes) as one aligned little-endian u64.
const P_USED_PAIR: usize = 16;

fn used_pair(used: u16, old_used: u16, wrap: bool, old_wrap: bool) -> u64 {
    u64::from(used) | u64::from(old_used) << 16 | u64::from(wrap) << 32 | u64::from(old_wrap) << 40
}

/// Bytes of one queue's region for `queue_size` descriptors, in either layout.
pub fn queue_stride(queue_size: u16) -> usize {
    let n = usize::from(queue_size);
    let split = SPLIT_HEADER + SPLIT_DESC * n;
    let packed = PACKED_HEADER + PACKED_DESC * n;
    split.max(packed).div_ceil(ALIGN) * ALIGN
}

/// Why a region or the state in it was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InflightError {
    /// `num_queues` or `queue_size` is zero or too large.
    #[error(
        "in-flight region for {num_queues} queues of {queue_size} descriptors: both must be \
         at least 1, queues at most {max_queues} and the size at most 32768"
    )]
    BadShape {
        /// Queues asked for.
        num_queues: u16,
        /// Descriptors per queue asked for.
        queue_size: u16,
        /// Most queues a port has.
        max_queues: u16,
    },
    /// The region sent back is smaller than its queues need.
    #[error(
        "in-flight region of {size} bytes is too small for {num_queues} queues of \
         {queue_size} descriptors ({needed} bytes): send back the region GET_INFLIGHT_FD gave"
    )]
    TooSmall {
        /// `mmap_size`.
        size: u64,
        /// Bytes needed.
        needed: u64,
        /// Queues.
        num_queues: u16,
        /// Descriptors per queue.
        queue_size: u16,
    },
    /// The file is shorter than `mmap_offset + mmap_size`, or the offset is not page aligned.
    #[error("in-flight region ({size} bytes at offset {offset:#x}) is not inside its file of {file_len} bytes at a page-aligned offset")]
    BadFile {
        /// `mmap_size`.
        size: u64,
        /// `mmap_offset`.
        offset: u64,
        /// The file's length.
        file_len: u64,
    },
    /// A system call failed.
    #[error("in-flight region: {call}: {err}")]
    Os {
        /// Which call.
        call: &'static str,
        /// errno text.
        err: String,
    },
    /// The ring is larger than the region's queues.
    #[error("vring of {ring} descriptors but the in-flight region tracks {region}")]
    RingTooLarge {
        /// Vring size.
        ring: u16,
        /// `queue_size` of the region.
        region: u16,
    },
    /// The state in the region breaks a rule; the ring is refused.
    #[error("in-flight state of vring {vring} is corrupt: {what}")]
    Corrupt {
        /// The vring index.
        vring: usize,
        /// The rule it broke.
        what: &'static str,
    },
}

/// One mapped in-flight region (shared with the frontend), unmapped on drop.
#[derive(Debug)]
pub struct InflightRegion {
    addr: NonNull<u8>,
    len: usize,
    num_queues: u16,
    queue_size: u16,
}

// SAFETY: the mapping is plain shared memory; the region only hands out raw pointers, and
// every access through them is a volatile read or write of a copy.
unsafe impl Send for InflightRegion {}
// SAFETY: as above; no interior state besides the mapping itself.
unsafe impl Sync for InflightRegion {}

impl Drop for InflightRegion {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` are exactly what a successful mmap returned; every tracker
        // holding pointers into it holds an `Arc` of this region, so none is left.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}

fn os(call: &'static str) -> InflightError {
    InflightError::Os {
        call,
        err: std::io::Error::last_os_error().to_string(),
    }
}

fn check_shape(num_queues: u16, queue_size: u16, max_queues: u16) -> Result<(), InflightError> {
    if num_queues == 0 || num_queues > max_queues || queue_size == 0 || queue_size > MAX_QUEUE_SIZE
    {
        return Err(InflightError::BadShape {
            num_queues,
            queue_size,
            max_queues,
        });
    }
    Ok(())
}

impl InflightRegion {
    /// `GET_INFLIGHT_FD`: a new zeroed memfd for `num_queues` queues of `queue_size`
    /// descriptors (at most `max_queues`), mapped; returns it with the file to send.
    pub fn allocate(
        num_queues: u16,
        queue_size: u16,
        max_queues: u16,
    ) -> Result<(InflightRegion, File), InflightError> {
        check_shape(num_queues, queue_size, max_queues)?;
        let len = usize::from(num_queues) * queue_stride(queue_size);
        // SAFETY: the name is a valid C string; memfd_create has no other precondition.
        let fd = unsafe { libc::memfd_create(c"heddle-inflight".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(os("memfd_create"));
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64).map_err(|e| InflightError::Os {
            call: "ftruncate",
            err: e.to_string(),
        })?;
        let region = Self::map(&file, 0, len, num_queues, queue_size)?;
        Ok((region, file))
    }

    /// `SET_INFLIGHT_FD`: maps the region the frontend sends back (`mmap_size` bytes at
    /// `mmap_offset` of `file`), after checking it holds `num_queues` queues of
    /// `queue_size` and lies inside the file.
    pub fn open(
        file: &File,
        mmap_size: u64,
        mmap_offset: u64,
        num_queues: u16,
        queue_size: u16,
        max_queues: u16,
    ) -> Result<InflightRegion, InflightError> {
        check_shape(num_queues, queue_size, max_queues)?;
        let needed = u64::from(num_queues) * queue_stride(queue_size) as u64;
        if mmap_size < needed {
            return Err(InflightError::TooSmall {
                size: mmap_size,
                needed,
                num_queues,
                queue_size,
            });
        }
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let page = 4096u64;
        if !mmap_offset.is_multiple_of(page)
            || mmap_offset
                .checked_add(needed)
                .is_none_or(|end| end > file_len)
        {
            return Err(InflightError::BadFile {
                size: mmap_size,
                offset: mmap_offset,
                file_len,
            });
        }
        // Only the bytes the queues use are mapped: nothing past them is ever addressed.
        Self::map(file, mmap_offset, needed as usize, num_queues, queue_size)
    }

    fn map(
        file: &File,
        offset: u64,
        len: usize,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<InflightRegion, InflightError> {
        // SAFETY: a fresh shared mapping of `len` bytes of an open file at a page-aligned
        // offset (checked by the callers) that lies inside the file; nothing else is mapped
        // over.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os("mmap"));
        }
        Ok(InflightRegion {
            addr: NonNull::new(p.cast()).ok_or_else(|| os("mmap"))?,
            len,
            num_queues,
            queue_size,
        })
    }

    /// Bytes mapped (what `GET_INFLIGHT_FD` reports as `mmap_size`).
    pub fn mapped_len(&self) -> usize {
        self.len
    }

    /// Queues the region covers.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// Descriptors per queue region.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// The region of queue `q` (`q < num_queues`).
    fn queue(&self, q: usize) -> Option<QueueMem> {
        (q < usize::from(self.num_queues)).then(|| QueueMem {
            // In bounds: `q * stride + stride <= len` by construction.
            base: self
                .addr
                .as_ptr()
                .wrapping_add(q * queue_stride(self.queue_size)),
            len: queue_stride(self.queue_size),
        })
    }
}

/// One queue's bytes in the region: every access is bounds-checked against `len` (the
/// callers' offsets are in range by construction, the check makes that a local fact).
#[derive(Clone, Copy)]
struct QueueMem {
    base: *mut u8,
    len: usize,
}

macro_rules! accessors {
    ($get:ident, $set:ident, $t:ty) => {
        #[inline(always)]
        fn $get(self, off: usize) -> $t {
            assert!(
                off + std::mem::size_of::<$t>() <= self.len
                    && off % std::mem::align_of::<$t>() == 0
            );
            // SAFETY: `off..off+size` lies in this queue's region (checked above), which the
            // region's `Arc` keeps mapped; the base is 64-aligned, so the offset's alignment
            // is the pointer's. A volatile read copies the frontend-shared value once.
            <$t>::from_le(unsafe { ptr::read_volatile(self.base.add(off).cast::<$t>()) })
        }
        #[inline(always)]
        fn $set(self, off: usize, v: $t) {
            assert!(
                off + std::mem::size_of::<$t>() <= self.len
                    && off % std::mem::align_of::<$t>() == 0
            );
            #[cfg(test)]
            tests::kill_point();
            // SAFETY: as in the getter; a plain volatile store into shared memory.
            unsafe { ptr::write_volatile(self.base.add(off).cast::<$t>(), v.to_le()) }
            #[cfg(test)]
            tests::kill_point();
        }
    };
}

// `u32_at` (a packed entry's `len`) is written, never read back.
#[allow(dead_code)]
impl QueueMem {
    accessors!(u8_at, set_u8, u8);
    accessors!(u16_at, set_u16, u16);
    accessors!(u32_at, set_u32, u32);
    accessors!(u64_at, set_u64, u64);
}

/// What the ring looks like to the resume logic (read from guest memory by the caller).
pub trait RingView {
    /// Split: the avail ring entry at free-running index `idx`.
    fn avail_entry(&self, idx: u16) -> u16;
    /// Split: the used ring's `idx`.
    fn used_idx(&self) -> u16;
    /// Packed: the descriptor at `slot` (`< size`): `(addr, flags)`.
    fn packed_desc(&self, slot: u16) -> (u64, u16);
}

/// In-flight tracking of one running queue, in its layout.
#[derive(Debug)]
pub enum Tracker {
    /// Split ring.
    Split(SplitTrack),
    /// Packed ring.
    Packed(PackedTrack),
}

/// Attaches queue `vring` of `region` to a ring of `size` descriptors about to start:
/// initialises a fresh region (version 0, or one written for the other layout), else repairs
/// and checks what a previous switch left and finds the resume point. Returns the tracker and
/// the base to build the queue with (split: the next avail index; packed: slot and wrap
/// counter in bit 15). `frontend_base` is `SET_VRING_BASE`'s value, used for a fresh region.
pub fn attach(
    region: &Arc<InflightRegion>,
    vring: usize,
    size: u16,
    features: u64,
    frontend_base: u16,
    ring: &dyn RingView,
) -> Result<Option<(Tracker, u16)>, InflightError> {
    let Some(q) = region.queue(vring) else {
        return Ok(None);
    };
    let n = region.queue_size;
    if size > n {
        return Err(InflightError::RingTooLarge {
            ring: size,
            region: n,
        });
    }
    let packed = features & super::layout::feature::RING_PACKED != 0;
    let corrupt = |what| InflightError::Corrupt { vring, what };
    let (version, desc_num, rec_features) = if packed {
        (
            q.u16_at(P_VERSION),
            q.u16_at(P_DESC_NUM),
            q.u64_at(P_FEATURES),
        )
    } else {
        (
            q.u16_at(S_VERSION),
            q.u16_at(S_DESC_NUM),
            q.u64_at(S_FEATURES),
        )
    };
    let same_layout = (rec_features & super::layout::feature::RING_PACKED != 0) == packed;
    if version == 0 || !same_layout {
        let t = if packed {
            Tracker::Packed(PackedTrack::fresh(
                region.clone(),
                q,
                n,
                size,
                features,
                frontend_base,
            ))
        } else {
            let used = ring.used_idx();
            Tracker::Split(SplitTrack::fresh(
                region.clone(),
                q,
                n,
                size,
                features,
                used,
            ))
        };
        return Ok(Some((t, frontend_base)));
    }
    if version != VERSION {
        return Err(corrupt("unknown version"));
    }
    if desc_num != n {
        return Err(corrupt("desc_num is not the region's queue size"));
    }
    if packed {
        let (t, base) = PackedTrack::resume(region.clone(), q, n, size, vring, ring)?;
        Ok(Some((Tracker::Packed(t), base)))
    } else {
        let (t, base) = SplitTrack::resume(region.clone(), q, n, size, vring, ring)?;
        Ok(Some((Tracker::Split(t), base)))
    }
}

/// Split-ring tracking: `desc[head]` per head index.
pub struct SplitTrack {
    _region: Arc<InflightRegion>,
    q: QueueMem,
    /// Entries in the region (`desc_num`), at least the ring size.
    n: u16,
    counter: u64,
    last_batch_head: u16,
    batch_len: u16,
    /// Private copy of the `next` links this queue wrote (never read back from the region).
    next: Box<[u16]>,
}

impl std::fmt::Debug for SplitTrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitTrack")
            .field("n", &self.n)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

// SAFETY: the region pointer is kept valid by the `Arc`; the tracker is used by one thread at
// a time (it lives in its queue, which moves between threads whole).
unsafe impl Send for SplitTrack {}

fn sd(i: u16) -> usize {
    SPLIT_HEADER + SPLIT_DESC * usize::from(i)
}

fn pd(i: u16) -> usize {
    PACKED_HEADER + PACKED_DESC * usize::from(i)
}

impl SplitTrack {
    fn new(region: Arc<InflightRegion>, q: QueueMem, n: u16, counter: u64, lbh: u16) -> Self {
        SplitTrack {
            _region: region,
            q,
            n,
            counter,
            last_batch_head: lbh,
            batch_len: 0,
            next: vec![0; usize::from(n)].into_boxed_slice(),
        }
    }

    fn fresh(
        region: Arc<InflightRegion>,
        q: QueueMem,
        n: u16,
        _size: u16,
        features: u64,
        used: u16,
    ) -> Self {
        // Version last: a crash half-way leaves version 0, a fresh region again.
        q.set_u16(S_VERSION, 0);
        for i in 0..n {
            q.set_u8(sd(i) + SD_INFLIGHT, 0);
            q.set_u16(sd(i) + SD_NEXT, 0);
            q.set_u64(sd(i) + SD_COUNTER, 0);
        }
        q.set_u64(S_FEATURES, features);
        q.set_u16(S_DESC_NUM, n);
        q.set_u16(S_LAST_BATCH_HEAD, 0);
        q.set_u16(S_USED_IDX, used);
        compiler_fence(Ordering::SeqCst);
        q.set_u16(S_VERSION, VERSION);
        Self::new(region, q, n, 0, 0)
    }

    /// The spec's "when reconnecting", then the check that the descriptors in flight are the
    /// ring's next ones from `used.idx` in counter order. Returns the next avail index.
    fn resume(
        region: Arc<InflightRegion>,
        q: QueueMem,
        n: u16,
        size: u16,
        vring: usize,
        ring: &dyn RingView,
    ) -> Result<(Self, u16), InflightError> {
        let corrupt = |what| InflightError::Corrupt { vring, what };
        let used = ring.used_idx();
        let rec_used = q.u16_at(S_USED_IDX);
        let lbh = q.u16_at(S_LAST_BATCH_HEAD);
        if lbh >= n {
            return Err(corrupt("last_batch_head out of range"));
        }
        if rec_used != used {
            // The last batch reached the used ring but its in-flight flags were not all
            // cleared: clear them now.
            let batch = used.wrapping_sub(rec_used);
            if batch > size {
                return Err(corrupt(
                    "used_idx is more than the ring size behind used.idx",
                ));
            }
            let mut seen = vec![false; usize::from(n)];
            let mut i = lbh;
            for k in 0..batch {
                if i >= n {
                    return Err(corrupt("a next link is out of range"));
                }
                if std::mem::replace(&mut seen[usize::from(i)], true) {
                    return Err(corrupt("the last batch's next links loop"));
                }
                q.set_u8(sd(i) + SD_INFLIGHT, 0);
                if k + 1 < batch {
                    i = q.u16_at(sd(i) + SD_NEXT);
                }
            }
            compiler_fence(Ordering::SeqCst);
            q.set_u16(S_USED_IDX, used);
        }
        let mut flying = Vec::new();
        for i in 0..n {
            match q.u8_at(sd(i) + SD_INFLIGHT) {
                0 => {}
                1 if i < size => flying.push((q.u64_at(sd(i) + SD_COUNTER), i)),
                1 => return Err(corrupt("a descriptor in flight is past the ring")),
                _ => return Err(corrupt("an inflight flag is neither 0 nor 1")),
            }
        }
        if flying.len() > usize::from(size) {
            return Err(corrupt("more descriptors in flight than the ring holds"));
        }
        flying.sort_unstable();
        if flying.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(corrupt("two descriptors in flight have the same counter"));
        }
        // Resubmission in counter order = the ring's next entries from used.idx (entries
        // naming no descriptor are skipped, as the queue skips them).
        let mut at = used;
        for &(_, head) in &flying {
            let mut steps = 0u16;
            loop {
                if steps == size {
                    return Err(corrupt(
                        "descriptors in flight are not the ring's next chains in counter order",
                    ));
                }
                let e = ring.avail_entry(at);
                at = at.wrapping_add(1);
                steps += 1;
                if e < size {
                    if e != head {
                        return Err(corrupt(
                            "descriptors in flight are not the ring's next chains in counter order",
                        ));
                    }
                    break;
                }
            }
        }
        let counter = flying.last().map_or(0, |&(c, _)| c.wrapping_add(1));
        Ok((Self::new(region, q, n, counter, lbh), used))
    }

    /// The device takes head `head` from the avail ring (before reading its chain).
    #[inline(always)]
    pub fn take(&mut self, head: u16) {
        if head >= self.n {
            return;
        }
        self.q.set_u64(sd(head) + SD_COUNTER, self.counter);
        self.counter = self.counter.wrapping_add(1);
        self.q.set_u8(sd(head) + SD_INFLIGHT, 1);
    }

    /// `head` was written to the used ring (not yet published).
    #[inline(always)]
    pub fn used(&mut self, head: u16) {
        if head >= self.n {
            return;
        }
        self.q.set_u16(sd(head) + SD_NEXT, self.last_batch_head);
        self.next[usize::from(head)] = self.last_batch_head;
        self.q.set_u16(S_LAST_BATCH_HEAD, head);
        self.last_batch_head = head;
        self.batch_len = self.batch_len.saturating_add(1);
    }

    /// Where the batch stands (to undo `used` calls whose entries will not be published).
    #[inline(always)]
    pub fn mark(&self) -> (u16, u16) {
        (self.last_batch_head, self.batch_len)
    }

    /// Forgets the `used` calls since `mark`.
    #[inline(always)]
    pub fn rollback(&mut self, mark: (u16, u16)) {
        (self.last_batch_head, self.batch_len) = mark;
        self.q.set_u16(S_LAST_BATCH_HEAD, self.last_batch_head);
    }

    /// The ring's `used.idx` was stored as `used_idx`: clears the batch's in-flight flags,
    /// then records `used_idx`.
    #[inline(always)]
    pub fn published(&mut self, used_idx: u16) {
        if self.batch_len == 0 {
            return;
        }
        compiler_fence(Ordering::SeqCst);
        let mut i = self.last_batch_head;
        for k in 0..self.batch_len {
            self.q.set_u8(sd(i) + SD_INFLIGHT, 0);
            if k + 1 < self.batch_len {
                i = self.next[usize::from(i)];
            }
        }
        self.batch_len = 0;
        self.q.set_u16(S_USED_IDX, used_idx);
    }
}

/// Packed-ring tracking: entries taken from the region's free list, one per descriptor.
pub struct PackedTrack {
    _region: Arc<InflightRegion>,
    q: QueueMem,
    n: u16,
    size: u16,
    counter: u64,
    free_head: u16,
    used_idx: u16,
    used_wrap: bool,
    /// Private copies of the entries' links and chain shapes (never read back from the
    /// region on the fast path).
    next: Box<[u16]>,
    last: Box<[u16]>,
    num: Box<[u16]>,
    /// Head entries of the chains taken and not yet returned, oldest first (a ring).
    taken: Box<[u16]>,
    taken_first: usize,
    taken_len: usize,
    /// Head entries to reuse, in counter order, for the chains in flight at a crash.
    resubmit: Box<[u16]>,
    resubmit_pos: usize,
    /// The region ran out of entries (only a corrupt one can): no more tracking.
    failed: bool,
}

impl std::fmt::Debug for PackedTrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedTrack")
            .field("n", &self.n)
            .field("free_head", &self.free_head)
            .field("taken", &self.taken_len)
            .field("resubmit", &(self.resubmit.len() - self.resubmit_pos))
            .finish_non_exhaustive()
    }
}

// SAFETY: as for `SplitTrack`.
unsafe impl Send for PackedTrack {}

impl PackedTrack {
    fn fresh(
        region: Arc<InflightRegion>,
        q: QueueMem,
        n: u16,
        size: u16,
        features: u64,
        base: u16,
    ) -> Self {
        q.set_u16(P_VERSION, 0);
        for i in 0..n {
            for off in (0..PACKED_DESC).step_by(8) {
                q.set_u64(pd(i) + off, 0);
            }
            q.set_u16(pd(i) + PD_NEXT, i + 1);
        }
        let (idx, wrap) = (base & 0x7fff, u8::from(base & 0x8000 != 0));
        q.set_u64(P_FEATURES, features);
        q.set_u16(P_DESC_NUM, n);
        q.set_u16(P_FREE_HEAD, 0);
        q.set_u16(P_OLD_FREE_HEAD, 0);
        q.set_u64(P_USED_PAIR, used_pair(idx, idx, wrap != 0, wrap != 0));
        compiler_fence(Ordering::SeqCst);
        q.set_u16(P_VERSION, VERSION);
        let next = (1..=n).collect::<Vec<_>>().into_boxed_slice();
        Self::new(region, q, n, size, 0, 0, idx, wrap != 0, next, Vec::new())
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        region: Arc<InflightRegion>,
        q: QueueMem,
        n: u16,
        size: u16,
        counter: u64,
        free_head: u16,
        used_idx: u16,
        used_wrap: bool,
        next: Box<[u16]>,
        resubmit: Vec<u16>,
    ) -> Self {
        let mut last = vec![0; usize::from(n)].into_boxed_slice();
        let mut num = vec![0; usize::from(n)].into_boxed_slice();
        for &e in &resubmit {
            last[usize::from(e)] = q.u16_at(pd(e) + PD_LAST);
            num[usize::from(e)] = q.u16_at(pd(e) + PD_NUM);
        }
        PackedTrack {
            _region: region,
            q,
            n,
            size,
            counter,
            free_head,
            used_idx,
            used_wrap,
            next,
            last,
            num,
            taken: vec![0; usize::from(size)].into_boxed_slice(),
            taken_first: 0,
            taken_len: 0,
            resubmit: resubmit.into_boxed_slice(),
            resubmit_pos: 0,
            failed: false,
        }
    }

    /// The spec's "when reconnecting" for packed rings, then the check that the chains in
    /// flight are the ring's next available ones from the used position, in counter order.
    fn resume(
        region: Arc<InflightRegion>,
        q: QueueMem,
        n: u16,
        size: u16,
        vring: usize,
        ring: &dyn RingView,
    ) -> Result<(Self, u16), InflightError> {
        let corrupt = |what| InflightError::Corrupt { vring, what };
        let free_head = q.u16_at(P_FREE_HEAD);
        let old_free_head = q.u16_at(P_OLD_FREE_HEAD);
        let used_idx = q.u16_at(P_USED_IDX);
        let old_used_idx = q.u16_at(P_OLD_USED_IDX);
        let used_wrap = q.u8_at(P_USED_WRAP);
        let old_used_wrap = q.u8_at(P_OLD_USED_WRAP);
        if free_head > n || old_free_head > n {
            return Err(corrupt("free_head out of range"));
        }
        if used_idx >= size || old_used_idx >= size || used_wrap > 1 || old_used_wrap > 1 {
            return Err(corrupt("used_idx or a wrap counter out of range"));
        }
        if (used_idx, used_wrap) != (old_used_idx, old_used_wrap) {
            // The crash hit a return: did its used flags reach the ring?
            let (_, flags) = ring.packed_desc(old_used_idx);
            let w = old_used_wrap != 0;
            let avail = (flags & DESC_F_AVAIL != 0) == w && (flags & DESC_F_USED != 0) != w;
            if !avail {
                // They did: the return is complete. Its head entry is the new free_head
                // (the spec leaves its inflight flag to clear; a resubmission would do it
                // twice).
                if free_head < n {
                    q.set_u8(pd(free_head) + PD_INFLIGHT, 0);
                }
                compiler_fence(Ordering::SeqCst);
                q.set_u16(P_OLD_FREE_HEAD, free_head);
                let w = used_wrap != 0;
                q.set_u64(P_USED_PAIR, used_pair(used_idx, used_idx, w, w));
            }
        }
        let (fh, ui, uw) = (
            q.u16_at(P_OLD_FREE_HEAD),
            q.u16_at(P_OLD_USED_IDX),
            q.u8_at(P_OLD_USED_WRAP),
        );
        q.set_u16(P_FREE_HEAD, fh);
        q.set_u64(P_USED_PAIR, used_pair(ui, ui, uw != 0, uw != 0));
        let mut flying = Vec::new();
        for i in 0..n {
            match q.u8_at(pd(i) + PD_INFLIGHT) {
                0 => {}
                // A take the crash cut short (`old_free_head` moves past the chain's entries
                // last): its chain is still the ring's, its entries still on the free list.
                1 if i == fh => q.set_u8(pd(i) + PD_INFLIGHT, 0),
                1 => flying.push((q.u64_at(pd(i) + PD_COUNTER), i)),
                _ => return Err(corrupt("an inflight flag is neither 0 nor 1")),
            }
        }
        flying.sort_unstable();
        if flying.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(corrupt("two chains in flight have the same counter"));
        }
        // Each chain in flight must be the ring's next available chain, in counter order.
        let (mut slot, mut wrap, mut total) = (ui, uw != 0, 0u32);
        let mut in_chains = vec![false; usize::from(n)];
        for &(_, e) in &flying {
            let num = q.u16_at(pd(e) + PD_NUM);
            let last = q.u16_at(pd(e) + PD_LAST);
            if num == 0 || num > size || last >= n {
                return Err(corrupt("a chain in flight has a bad length or last entry"));
            }
            total += u32::from(num);
            if total > u32::from(size) {
                return Err(corrupt("more descriptors in flight than the ring holds"));
            }
            // Its entries: e .. last along the private links, `num` of them.
            let mut i = e;
            for k in 0..num {
                if i >= n || std::mem::replace(&mut in_chains[usize::from(i)], true) {
                    return Err(corrupt("a chain's entries loop or leave the region"));
                }
                if k + 1 < num {
                    i = q.u16_at(pd(i) + PD_NEXT);
                }
            }
            if i != last {
                return Err(corrupt("a chain's links do not end at its last entry"));
            }
            let (addr, flags) = ring.packed_desc(slot);
            let avail = (flags & DESC_F_AVAIL != 0) == wrap && (flags & DESC_F_USED != 0) != wrap;
            if !avail || addr != q.u64_at(pd(e) + PD_ADDR) {
                return Err(corrupt(
                    "chains in flight are not the ring's next available chains in counter order",
                ));
            }
            let s = u32::from(slot) + u32::from(num);
            if s >= u32::from(size) {
                wrap = !wrap;
            }
            slot = (s % u32::from(size)) as u16;
        }
        // The free list must be loop-free, in range, apart from the chains in flight, and
        // long enough for the rest of the ring.
        let mut next = vec![0u16; usize::from(n)].into_boxed_slice();
        for i in 0..n {
            next[usize::from(i)] = q.u16_at(pd(i) + PD_NEXT);
        }
        let (mut i, mut free) = (fh, 0u32);
        while i != n {
            if i > n || std::mem::replace(&mut in_chains[usize::from(i)], true) {
                return Err(corrupt(
                    "the free list loops, leaves the region or holds a chain in flight",
                ));
            }
            free += 1;
            i = next[usize::from(i)];
        }
        if free + total < u32::from(size) {
            return Err(corrupt("the free list is too short for the ring"));
        }
        let counter = flying.last().map_or(0, |&(c, _)| c.wrapping_add(1));
        let resubmit = flying.iter().map(|&(_, e)| e).collect();
        let t = Self::new(region, q, n, size, counter, fh, ui, uw != 0, next, resubmit);
        Ok((t, ui | (u16::from(uw) << 15)))
    }

    /// The device takes the chain of `ndesc` descriptors at ring slot `slot` (`read(k)`
    /// gives its k-th descriptor as `(addr, len, id, flags)`), before it is processed. False
    /// when the free list ran out (only a corrupt region can make it): the caller breaks the
    /// ring.
    #[inline(always)]
    pub fn take(&mut self, ndesc: u16, read: impl Fn(u16) -> (u64, u32, u16, u16)) -> bool {
        if self.failed {
            return false;
        }
        if self.taken_len == self.taken.len() || ndesc == 0 {
            self.failed = true;
            return false;
        }
        let head;
        if self.resubmit_pos < self.resubmit.len() {
            // A chain in flight at the crash: its entries are reused as they are.
            head = self.resubmit[self.resubmit_pos];
            if self.num[usize::from(head)] != ndesc {
                // The frontend changed the chain since: the region no longer describes it.
                self.failed = true;
                return false;
            }
            self.resubmit_pos += 1;
            self.q.set_u64(pd(head) + PD_COUNTER, self.counter);
            self.counter = self.counter.wrapping_add(1);
        } else {
            head = self.free_head;
            let mut f = self.free_head;
            for k in 0..ndesc {
                if f >= self.n {
                    // Only a corrupt free list ends early (a checked one holds the ring).
                    self.failed = true;
                    return false;
                }
                if k == 0 {
                    self.q.set_u16(pd(head) + PD_NUM, 0);
                    self.q.set_u64(pd(head) + PD_COUNTER, self.counter);
                    self.counter = self.counter.wrapping_add(1);
                    self.q.set_u8(pd(head) + PD_INFLIGHT, 1);
                }
                if k + 1 == ndesc {
                    self.q.set_u16(pd(head) + PD_LAST, f);
                    self.last[usize::from(head)] = f;
                }
                self.q.set_u16(pd(head) + PD_NUM, k + 1);
                let (addr, len, id, flags) = read(k);
                self.q.set_u64(pd(f) + PD_ADDR, addr);
                self.q.set_u32(pd(f) + PD_LEN, len);
                self.q.set_u16(pd(f) + PD_FLAGS, flags);
                self.q.set_u16(pd(f) + PD_ID, id);
                f = self.next[usize::from(f)];
                self.q.set_u16(P_FREE_HEAD, f);
            }
            self.free_head = f;
            self.num[usize::from(head)] = ndesc;
            self.q.set_u16(P_OLD_FREE_HEAD, f);
        }
        let at = (self.taken_first + self.taken_len) % self.taken.len();
        self.taken[at] = head;
        self.taken_len += 1;
        true
    }

    /// Gives back the `count` most recent takes (their chains stay available in the ring),
    /// newest first.
    #[inline(always)]
    pub fn untake(&mut self, count: usize) {
        if self.failed {
            return;
        }
        for _ in 0..count.min(self.taken_len) {
            self.taken_len -= 1;
            let head = self.taken[(self.taken_first + self.taken_len) % self.taken.len()];
            if self.resubmit_pos > 0 && self.resubmit[self.resubmit_pos - 1] == head {
                // Still in flight from before the crash: it stays so.
                self.resubmit_pos -= 1;
                continue;
            }
            // Free list first: a crash before the flag leaves an in-flight entry at
            // `old_free_head`, which the resume reads as a take cut short.
            self.free_head = head;
            self.q.set_u16(P_FREE_HEAD, head);
            self.q.set_u16(P_OLD_FREE_HEAD, head);
            self.q.set_u8(pd(head) + PD_INFLIGHT, 0);
        }
    }

    /// Before the oldest taken chain's used flags are stored: links its entries back to the
    /// free list and moves `used_idx` on. Returns its head entry for [`Self::after_used`].
    #[inline(always)]
    pub fn before_used(&mut self) -> Option<u16> {
        if self.failed || self.taken_len == 0 {
            return None;
        }
        let e = self.taken[self.taken_first];
        self.taken_first = (self.taken_first + 1) % self.taken.len();
        self.taken_len -= 1;
        let last = self.last[usize::from(e)];
        self.q.set_u16(pd(last) + PD_NEXT, self.free_head);
        self.next[usize::from(last)] = self.free_head;
        self.free_head = e;
        self.q.set_u16(P_FREE_HEAD, e);
        let (old, old_wrap) = (self.used_idx, self.used_wrap);
        let s = u32::from(self.used_idx) + u32::from(self.num[usize::from(e)]);
        if s >= u32::from(self.size) {
            self.used_wrap = !self.used_wrap;
        }
        self.used_idx = (s % u32::from(self.size)) as u16;
        self.q.set_u64(
            P_USED_PAIR,
            used_pair(self.used_idx, old, self.used_wrap, old_wrap),
        );
        Some(e)
    }

    /// After the used flags of the chain `before_used` returned were stored.
    #[inline(always)]
    pub fn after_used(&mut self, e: Option<u16>) {
        let Some(e) = e else { return };
        compiler_fence(Ordering::SeqCst);
        self.q.set_u8(pd(e) + PD_INFLIGHT, 0);
        self.q.set_u16(P_OLD_FREE_HEAD, self.free_head);
        let (u, w) = (self.used_idx, self.used_wrap);
        self.q.set_u64(P_USED_PAIR, used_pair(u, u, w, w));
    }
}

/// The ring in guest memory, as [`attach`] reads it (volatile copies, every address
/// translated; an address outside the table reads as zero, and the queue refuses such a ring
/// anyway).
pub struct GuestRing<'a> {
    /// The memory table.
    pub mem: &'a super::memory::GuestMemory,
    /// The ring's addresses.
    pub addrs: super::layout::RingAddrs,
}

impl GuestRing<'_> {
    fn read<T: Copy + Default>(&self, uva: Option<u64>) -> T {
        let size = std::mem::size_of::<T>();
        let Some(p) = uva.and_then(|a| self.mem.translate_uva(a, size as u64)) else {
            return T::default();
        };
        if p.as_ptr().align_offset(std::mem::align_of::<T>()) != 0 {
            return T::default();
        }
        // SAFETY: `translate_uva` checked the bytes lie in one mapped region, which the
        // borrowed table keeps mapped; alignment checked above; a volatile read copies the
        // guest's value once.
        unsafe { ptr::read_volatile(p.as_ptr().cast::<T>()) }
    }
}

impl RingView for GuestRing<'_> {
    fn avail_entry(&self, idx: u16) -> u16 {
        let slot = u64::from(idx & self.addrs.size.wrapping_sub(1));
        u16::from_le(self.read(self.addrs.avail_uva.checked_add(4 + 2 * slot)))
    }

    fn used_idx(&self) -> u16 {
        u16::from_le(self.read(self.addrs.used_uva.checked_add(2)))
    }

    fn packed_desc(&self, slot: u16) -> (u64, u16) {
        let at = self.addrs.desc_uva.checked_add(16 * u64::from(slot));
        let addr = u64::from_le(self.read(at));
        let flags = u16::from_le(self.read(at.and_then(|a| a.checked_add(14))));
        (addr, flags)
    }
}

#[cfg(test)]
mod tests;
