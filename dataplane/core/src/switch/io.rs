//! The boundary between the switch pipeline and whatever moves packets.
//!
//! The pipeline is generic over [`Packet`] and [`PacketIo`], so its logic is tested and
//! benchmarked without the EAL (see `switch::testing`), while `heddle-switch` runs it over
//! DPDK mbufs and ethdevs (`heddle_dataplane::dpdk::io`). Monomorphisation makes the indirection free.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

/// Packets moved per burst, as DPDK's examples and OVS use.
pub const BURST: usize = 32;

/// Index of a port in the switch's own port table (not a DPDK port id: native vhost-user
/// ports are not ethdevs). Always `< MAX_PORTS`.
pub type PortIndex = u16;

/// Most ports one switch holds.
pub const MAX_PORTS: usize = 256;

/// One packet owned by the pipeline: a single contiguous segment whose bytes start at
/// the Ethernet header.
pub trait Packet {
    /// The frame, starting at the destination MAC.
    fn data(&self) -> &[u8];
    /// The frame, writable.
    fn data_mut(&mut self) -> &mut [u8];
    /// Grows the frame by `n` bytes at the front (into headroom). The new bytes are
    /// uninitialised garbage the caller overwrites. Returns false, changing nothing, when the
    /// headroom is too small.
    fn prepend(&mut self, n: usize) -> bool;
    /// Removes `n` bytes from the front. Returns false, changing nothing, when the frame is
    /// shorter than `n`.
    fn trim_front(&mut self, n: usize) -> bool;
    /// Frame length in bytes.
    fn len(&self) -> usize {
        self.data().len()
    }
    /// True for a zero-length frame.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// True when the frame spans several buffers: `data()` is then only its first part, and
    /// `len()` (the whole frame) is longer. The pipeline drops such frames; packets built by
    /// the switch never are. Both lengths are read by the parse anyway, so this costs no
    /// memory access.
    #[inline(always)]
    fn segmented(&self) -> bool {
        self.len() != self.data().len()
    }
    /// Asks the CPU to start loading the frame's first cache line (its Ethernet header),
    /// which the pipeline reads soon. Only a hint.
    #[inline(always)]
    fn prefetch(&self) {
        crate::prefetch::read(self.data().as_ptr());
    }
}

/// Moves packets for one PMD worker. Each worker owns its own `PacketIo`, so an
/// implementation keeps per-worker state (its TX queue per port) without sharing.
pub trait PacketIo {
    /// The packet type this I/O moves.
    type Pkt: Packet;

    /// Receives up to `out.room()` packets from `queue` of `port`, appending them to `out`.
    fn rx_burst(&mut self, port: PortIndex, queue: u16, out: &mut Burst<Self::Pkt>);

    /// Sends every packet of `burst` on `port` (on this worker's TX queue) and empties it.
    /// Packets the port did not take are freed by the implementation (in bulk where it can).
    /// Returns how many were sent; the rest count as TX drops.
    fn tx_burst(&mut self, port: PortIndex, burst: &mut Burst<Self::Pkt>) -> usize;

    /// A deep copy of `pkt` for flooding, or `None` when the buffer pool is exhausted.
    fn copy(&mut self, pkt: &Self::Pkt) -> Option<Self::Pkt>;
}

/// Spin lock for a TX queue shared between workers. Uncontended it is one atomic swap.
#[derive(Debug, Default)]
pub struct TxLock(AtomicBool);

impl TxLock {
    /// Spins until the lock is taken.
    #[inline]
    pub fn lock(&self) {
        while self
            .0
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
    }

    /// Releases the lock.
    #[inline]
    pub fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A fixed array of up to [`BURST`] packets. No heap allocation: it lives in per-worker
/// state and is reused for every burst.
pub struct Burst<P> {
    len: usize,
    pkts: [MaybeUninit<P>; BURST],
}

impl<P> Default for Burst<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P> Burst<P> {
    /// An empty burst.
    pub const fn new() -> Self {
        Self {
            len: 0,
            pkts: [const { MaybeUninit::uninit() }; BURST],
        }
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no packet is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when no more packet fits.
    pub fn is_full(&self) -> bool {
        self.len == BURST
    }

    /// Free slots.
    pub fn room(&self) -> usize {
        BURST - self.len
    }

    /// Appends `pkt`; gives it back when the burst is full.
    pub fn push(&mut self, pkt: P) -> Result<(), P> {
        if self.len == BURST {
            return Err(pkt);
        }
        self.pkts[self.len].write(pkt);
        self.len += 1;
        Ok(())
    }

    /// Removes and returns the last packet.
    pub fn pop(&mut self) -> Option<P> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: slots `0..len` are initialised (the invariant of `len`); slot `len` was the
        // last of them and is no longer counted, so it is read out exactly once.
        Some(unsafe { self.pkts[self.len].assume_init_read() })
    }

    /// The held packets.
    pub fn as_slice(&self) -> &[P] {
        // SAFETY: slots `0..len` are initialised and `MaybeUninit<P>` has `P`'s layout.
        unsafe { std::slice::from_raw_parts(self.pkts.as_ptr().cast::<P>(), self.len) }
    }

    /// The held packets, writable.
    pub fn as_mut_slice(&mut self) -> &mut [P] {
        // SAFETY: as in `as_slice`; `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.pkts.as_mut_ptr().cast::<P>(), self.len) }
    }

    /// Moves every packet out, in order, leaving the burst empty.
    pub fn drain(&mut self) -> Drain<'_, P> {
        let len = self.len;
        // Forget the packets first: if the caller leaks the iterator, nothing is dropped twice.
        self.len = 0;
        Drain {
            burst: self,
            next: 0,
            end: len,
        }
    }

    /// Raw pointer to the first slot, for FFI that fills or reads the array in place.
    pub fn as_mut_ptr(&mut self) -> *mut P {
        self.pkts.as_mut_ptr().cast::<P>()
    }

    /// Sets the number of held packets after FFI filled slots in place.
    ///
    /// # Safety
    /// Slots `0..len` must hold initialised packets that this burst now owns, `len <= BURST`,
    /// and any packets previously counted beyond `len` must have been moved out.
    pub unsafe fn set_len(&mut self, len: usize) {
        debug_assert!(len <= BURST);
        self.len = len;
    }
}

impl<P> Drop for Burst<P> {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}

/// Iterator returned by [`Burst::drain`].
pub struct Drain<'a, P> {
    burst: &'a mut Burst<P>,
    next: usize,
    end: usize,
}

impl<P> Iterator for Drain<'_, P> {
    type Item = P;

    fn next(&mut self) -> Option<P> {
        if self.next == self.end {
            return None;
        }
        let i = self.next;
        self.next += 1;
        // SAFETY: slots `next..end` were initialised when `drain` began and each is read once:
        // `next` only grows, and `len` was zeroed so `Burst` never reads them again.
        Some(unsafe { self.burst.pkts[i].assume_init_read() })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end - self.next;
        (n, Some(n))
    }
}

impl<P> Drop for Drain<'_, P> {
    fn drop(&mut self) {
        for _ in self.by_ref() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn burst_push_pop_drain_and_drop_release_each_packet_once() {
        let token = Rc::new(());
        let mut b = Burst::new();
        for _ in 0..BURST {
            assert!(b.push(token.clone()).is_ok());
        }
        assert!(b.is_full());
        assert!(b.push(token.clone()).is_err());
        assert_eq!(Rc::strong_count(&token), BURST + 1);
        let first_two: Vec<_> = b.drain().take(2).collect();
        // The drained-but-not-taken packets were dropped by Drain's Drop.
        assert!(b.is_empty());
        assert_eq!(Rc::strong_count(&token), 3);
        drop(first_two);
        for _ in 0..5 {
            b.push(token.clone()).unwrap();
        }
        drop(b);
        assert_eq!(Rc::strong_count(&token), 1);
    }
}
