//! Packets for frames copied in from outside DPDK's drivers (native vhost-user guest TX):
//! an [`RxPool`] over a [`Mempool`] with a small per-worker cache filled in bulk, and a
//! second pool of jumbo buffers for frames larger than the first pool's (up to
//! [`MAX_FRAME`]): every frame stays in one buffer, so the pipeline's single-segment view
//! holds and the common small frame pays one comparison more than before.

use std::ptr::NonNull;
use std::sync::Arc;

use super::mbuf::Mbuf;
use super::mempool::Mempool;
use heddle_core::prefetch;
use heddle_core::switch::config::MAX_FRAME;
use heddle_core::switch::io::BURST;
use heddle_core::vhost::virtq::RxPool;

/// Per-worker source of empty mbufs sized to a frame. Not shared: each PMD worker owns one
/// (`Send`, not `Sync`). Mbufs left in the cache go back to the pool on drop.
pub struct MbufPool {
    pool: Arc<Mempool>,
    cache: [*mut dpdk_sys::rte_mbuf; BURST],
    cached: usize,
    max_len: usize,
    /// Buffers for frames above `max_len`, and the largest frame they take.
    jumbo: Option<(Arc<Mempool>, usize)>,
}

// SAFETY: the cached mbufs are owned by this value alone (taken from the pool, not yet
// handed out); moving it to another thread moves that ownership. The mempool is Sync.
unsafe impl Send for MbufPool {}

impl MbufPool {
    /// A pool drawing from `pool`; frames up to the data room minus DPDK's headroom fit.
    pub fn new(pool: Arc<Mempool>) -> MbufPool {
        let max_len = room_for_frames(&pool);
        MbufPool {
            pool,
            cache: [std::ptr::null_mut(); BURST],
            cached: 0,
            max_len,
            jumbo: None,
        }
    }

    /// A pool drawing from `pool`, and from `jumbo` for frames that do not fit `pool`'s
    /// buffers (up to [`MAX_FRAME`] bytes, or `jumbo`'s room if smaller).
    pub fn with_jumbo(pool: Arc<Mempool>, jumbo: Arc<Mempool>) -> MbufPool {
        let mut p = MbufPool::new(pool);
        let max = room_for_frames(&jumbo).min(MAX_FRAME);
        if max > p.max_len {
            p.jumbo = Some((jumbo, max));
        }
        p
    }

    /// A frame of `len` bytes from the jumbo pool: the rare path, kept out of `alloc`.
    #[cold]
    #[inline(never)]
    fn alloc_jumbo(&mut self, len: usize) -> Option<Mbuf> {
        let (pool, max) = self.jumbo.as_ref()?;
        if len > *max {
            return None;
        }
        let m = Mbuf::alloc(pool)?;
        // SAFETY: a fresh mbuf we own (one segment, lengths 0); the tailroom check keeps
        // the frame inside its buffer.
        unsafe { set_len(m.into_raw(), len) }
    }

    /// Mbufs taken from the mempool and not yet handed out.
    pub fn cached(&self) -> usize {
        self.cached
    }

    #[inline(always)]
    fn take(&mut self) -> Option<NonNull<dpdk_sys::rte_mbuf>> {
        if self.cached == 0 {
            // SAFETY: the pool pointer is valid; `cache` has room for BURST pointers, which
            // alloc_bulk fills completely on success (returns 0) and leaves untouched
            // otherwise.
            let rc = unsafe {
                dpdk_sys::heddle_rte_pktmbuf_alloc_bulk(
                    self.pool.as_ptr(),
                    self.cache.as_mut_ptr(),
                    BURST as u32,
                )
            };
            if rc == 0 {
                self.cached = BURST;
                // The frames are copied into these buffers next: start pulling their first
                // lines in, all at once, rather than taking each miss in the copy.
                for &m in &self.cache {
                    // SAFETY: alloc_bulk succeeded, so every slot is a valid, reset mbuf
                    // this pool owns; only two header fields are read.
                    let data =
                        unsafe { (*m).buf_addr.cast::<u8>().add(usize::from((*m).data_off)) };
                    prefetch::write(data);
                }
            } else {
                // Fewer than BURST left: take them one at a time.
                // SAFETY: as in `Mbuf::alloc`: a non-null result is a fresh mbuf we own.
                return NonNull::new(unsafe {
                    dpdk_sys::heddle_rte_pktmbuf_alloc(self.pool.as_ptr())
                });
            }
        }
        self.cached -= 1;
        NonNull::new(self.cache[self.cached])
    }
}

impl RxPool for MbufPool {
    type Pkt = Mbuf;

    #[inline]
    fn alloc(&mut self, len: usize) -> Option<Mbuf> {
        if len > self.max_len {
            return self.alloc_jumbo(len);
        }
        let raw = self.take()?;
        // SAFETY: `raw` is a fresh, reset mbuf we own (data_off at the headroom, one
        // segment, lengths 0).
        unsafe { set_len(raw, len) }
    }

    fn max_len(&self) -> usize {
        self.jumbo.as_ref().map_or(self.max_len, |(_, max)| *max)
    }
}

/// Frame bytes one buffer of `pool` takes after DPDK's headroom.
fn room_for_frames(pool: &Mempool) -> usize {
    usize::from(pool.data_room()).saturating_sub(dpdk_sys::RTE_PKTMBUF_HEADROOM as usize)
}

/// Takes ownership of `raw` and makes its frame `len` bytes long, or frees it (`None`) when
/// `len` does not fit its buffer.
///
/// # Safety
/// `raw` must be a fresh, reset mbuf (one segment, lengths 0) that the caller owns and
/// hands over.
#[inline(always)]
unsafe fn set_len(raw: NonNull<dpdk_sys::rte_mbuf>, len: usize) -> Option<Mbuf> {
    // SAFETY: the caller hands over ownership of a valid mbuf.
    let m = unsafe { Mbuf::from_raw(raw) };
    // SAFETY: the mbuf is ours and not shared. Setting the lengths is what
    // rte_pktmbuf_append does for a fresh mbuf; the tailroom check keeps the frame inside the
    // buffer even if the pool's data room differs from what the caller assumed.
    unsafe {
        let r = &mut *raw.as_ptr();
        if usize::from(r.data_off) + len > usize::from(r.buf_len) {
            return None; // `m` is freed on drop
        }
        r.data_len = len as u16;
        r.pkt_len = len as u32;
    }
    Some(m)
}

impl Drop for MbufPool {
    fn drop(&mut self) {
        if self.cached > 0 {
            // SAFETY: slots `0..cached` hold mbufs this pool owns; they are freed once and
            // forgotten (`cached` reset).
            unsafe { dpdk_sys::rte_pktmbuf_free_bulk(self.cache.as_mut_ptr(), self.cached as u32) };
            self.cached = 0;
        }
    }
}

// Each PMD worker moves its pool to its own thread when it starts.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<MbufPool>();
};
