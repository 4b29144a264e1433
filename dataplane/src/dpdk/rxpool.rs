//! Packets for frames copied in from outside DPDK's drivers (native vhost-user guest TX):
//! an [`RxPool`] over a [`Mempool`] with a small per-worker cache filled in bulk.

use std::ptr::NonNull;
use std::sync::Arc;

use super::mbuf::Mbuf;
use super::mempool::Mempool;
use heddle_core::prefetch;
use heddle_core::switch::io::BURST;
use heddle_core::vhost::virtq::RxPool;

/// Per-worker source of empty mbufs sized to a frame. Not shared: each PMD worker owns one
/// (`Send`, not `Sync`). Mbufs left in the cache go back to the pool on drop.
pub struct MbufPool {
    pool: Arc<Mempool>,
    cache: [*mut dpdk_sys::rte_mbuf; BURST],
    cached: usize,
    max_len: usize,
}

// SAFETY: the cached mbufs are owned by this value alone (taken from the pool, not yet
// handed out); moving it to another thread moves that ownership. The mempool is Sync.
unsafe impl Send for MbufPool {}

impl MbufPool {
    /// A pool drawing from `pool`; frames up to the data room minus DPDK's headroom fit.
    pub fn new(pool: Arc<Mempool>) -> MbufPool {
        let room = usize::from(pool.data_room());
        let max_len = room.saturating_sub(dpdk_sys::RTE_PKTMBUF_HEADROOM as usize);
        MbufPool {
            pool,
            cache: [std::ptr::null_mut(); BURST],
            cached: 0,
            max_len,
        }
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
            return None;
        }
        let raw = self.take()?;
        // SAFETY: `raw` is a fresh, reset mbuf we own (data_off at the headroom, one
        // segment, lengths 0); `Mbuf` takes that ownership.
        let m = unsafe { Mbuf::from_raw(raw) };
        // SAFETY: the mbuf is ours and not shared. Setting the lengths is what
        // rte_pktmbuf_append does for a fresh mbuf; the tailroom check keeps the frame
        // inside the buffer even if the pool's data room differs from what `new` assumed.
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

    fn max_len(&self) -> usize {
        self.max_len
    }
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
