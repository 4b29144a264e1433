use std::ptr::NonNull;

use super::mempool::Mempool;
use heddle_core::switch::io::Packet;

/// One owned DPDK packet buffer (single segment). Freed on drop; handed to TX by value.
///
/// `repr(transparent)` over a non-null `rte_mbuf` pointer, so a `[Mbuf]` is exactly the
/// `struct rte_mbuf **` array that `rte_eth_rx_burst`/`tx_burst` read and fill.
#[repr(transparent)]
#[derive(Debug)]
pub struct Mbuf(NonNull<dpdk_sys::rte_mbuf>);

// SAFETY: an mbuf is owned by exactly one Mbuf at a time; moving it to another thread moves
// that ownership. It is not Sync: two threads must not touch one mbuf's data at once.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Takes ownership of a raw mbuf.
    ///
    /// # Safety
    /// `raw` must be a valid mbuf that nothing else owns or frees.
    pub unsafe fn from_raw(raw: NonNull<dpdk_sys::rte_mbuf>) -> Mbuf {
        Mbuf(raw)
    }

    /// Gives up ownership; the caller must free or transmit the mbuf.
    pub fn into_raw(self) -> NonNull<dpdk_sys::rte_mbuf> {
        let raw = self.0;
        std::mem::forget(self);
        raw
    }

    /// A new empty mbuf from `pool`, or `None` when the pool is exhausted.
    pub fn alloc(pool: &Mempool) -> Option<Mbuf> {
        // SAFETY: the pool pointer is valid; a non-null result is a fresh mbuf we own.
        NonNull::new(unsafe { dpdk_sys::heddle_rte_pktmbuf_alloc(pool.as_ptr()) }).map(Mbuf)
    }

    /// A new mbuf holding a copy of `bytes`, or `None` if the pool is empty or it does not fit.
    pub fn from_bytes(pool: &Mempool, bytes: &[u8]) -> Option<Mbuf> {
        let m = Mbuf::alloc(pool)?;
        let len = u16::try_from(bytes.len()).ok()?;
        // SAFETY: `m` is a valid mbuf we own; append returns null (checked) or a pointer to
        // `len` writable bytes inside its data room.
        let dst = unsafe { dpdk_sys::heddle_rte_pktmbuf_append(m.0.as_ptr(), len) };
        if dst.is_null() {
            return None;
        }
        // SAFETY: `dst` points to `len` writable bytes (see above) that do not overlap `bytes`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.cast::<u8>(), bytes.len()) };
        Some(m)
    }

    /// A deep copy into a new mbuf from `pool`.
    pub fn copy(&self, pool: &Mempool) -> Option<Mbuf> {
        // SAFETY: `self` is a valid mbuf; rte_pktmbuf_copy only reads it and returns a new
        // mbuf we own, or null.
        NonNull::new(unsafe {
            dpdk_sys::rte_pktmbuf_copy(self.0.as_ptr(), pool.as_ptr(), 0, u32::MAX)
        })
        .map(Mbuf)
    }

    /// Segments in the chain.
    pub fn segments(&self) -> u16 {
        // SAFETY: `self` is a valid mbuf.
        unsafe { dpdk_sys::heddle_rte_pktmbuf_nb_segs(self.0.as_ptr()) }
    }

    /// Frees many mbufs at once (`rte_pktmbuf_free_bulk`).
    pub fn free_bulk(mbufs: &mut [Mbuf]) {
        if mbufs.is_empty() {
            return;
        }
        let n = u32::try_from(mbufs.len()).expect("bursts are small");
        // SAFETY: `Mbuf` is repr(transparent) over a non-null `rte_mbuf *`, so the slice is a
        // valid `rte_mbuf **` array of owned mbufs; the caller forgets them afterwards (see
        // `Burst` users), so none is freed twice.
        unsafe { dpdk_sys::rte_pktmbuf_free_bulk(mbufs.as_mut_ptr().cast(), n) };
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: this Mbuf owns the buffer, and drop runs once.
        unsafe { dpdk_sys::heddle_rte_pktmbuf_free(self.0.as_ptr()) }
    }
}

// The fast-path accessors below are DPDK's own `static inline` bodies (rte_pktmbuf_mtod,
// rte_pktmbuf_prepend, rte_pktmbuf_adj, rte_pktmbuf_pkt_len) written over the bindgen
// struct: through the C shim each would be a call the optimiser cannot inline, several per
// packet. `ffi/tests/shim.rs` checks the shim's versions; `dataplane/tests/dpdk.rs` checks these agree.
impl Packet for Mbuf {
    #[inline(always)]
    fn data(&self) -> &[u8] {
        // SAFETY: this Mbuf owns a valid mbuf; buf_addr + data_off is its first data byte and
        // data_len bytes of the first segment are initialised. The pipeline only handles the
        // first segment.
        unsafe {
            let m = &*self.0.as_ptr();
            std::slice::from_raw_parts(
                m.buf_addr.cast::<u8>().add(m.data_off as usize),
                m.data_len as usize,
            )
        }
    }

    #[inline(always)]
    fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `data`; `&mut self` makes the borrow unique (Heddle never shares an
        // mbuf by refcount: flood copies are deep copies).
        unsafe {
            let m = &*self.0.as_ptr();
            std::slice::from_raw_parts_mut(
                m.buf_addr.cast::<u8>().add(m.data_off as usize),
                m.data_len as usize,
            )
        }
    }

    #[inline(always)]
    fn prepend(&mut self, n: usize) -> bool {
        // SAFETY: valid owned mbuf, exclusively borrowed; the headroom check keeps data_off
        // from underflowing, as rte_pktmbuf_prepend does.
        unsafe {
            let m = &mut *self.0.as_ptr();
            if n > m.data_off as usize {
                return false;
            }
            m.data_off -= n as u16;
            m.data_len += n as u16;
            m.pkt_len += n as u32;
        }
        true
    }

    #[inline(always)]
    fn trim_front(&mut self, n: usize) -> bool {
        // SAFETY: valid owned mbuf, exclusively borrowed; the length check keeps data_len
        // from underflowing, as rte_pktmbuf_adj does.
        unsafe {
            let m = &mut *self.0.as_ptr();
            if n > m.data_len as usize {
                return false;
            }
            m.data_off += n as u16;
            m.data_len -= n as u16;
            m.pkt_len -= n as u32;
        }
        true
    }

    #[inline(always)]
    fn len(&self) -> usize {
        // Whole frame length (all segments), for byte counters.
        // SAFETY: valid owned mbuf.
        unsafe { (*self.0.as_ptr()).pkt_len as usize }
    }
}
