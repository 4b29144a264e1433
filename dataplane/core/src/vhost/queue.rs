//! One running virtqueue in whichever layout the frontend negotiated: split
//! ([`SplitQueue`]) or packed ([`PackedQueue`], `VIRTIO_F_RING_PACKED`). The PMD workers
//! call it through [`super::ring::ActiveRing`]; each call is one match on the layout, then
//! the layout's own burst code.

use super::inflight::Tracker;
use super::memory::GuestMemory;
use super::packed::PackedQueue;
use super::virtq::{feature, QueueStats, RingAddrs, RingError, RxPool, SplitQueue};
use crate::switch::io::{Burst, Packet};

/// A split or packed virtqueue, device side.
#[derive(Debug)]
pub enum Virtqueue {
    /// Virtio 1.0 split ring.
    Split(SplitQueue),
    /// Virtio 1.1 packed ring.
    Packed(PackedQueue),
}

impl Virtqueue {
    /// Builds the queue the negotiated `features` call for. `base` is `SET_VRING_BASE`'s
    /// value: the next avail index (split), or slot and wrap counter (packed, bit 15).
    pub fn new(
        mem: &GuestMemory,
        addrs: &RingAddrs,
        base: u16,
        features: u64,
    ) -> Result<Virtqueue, RingError> {
        if features & feature::RING_PACKED != 0 {
            PackedQueue::new(mem, addrs, base, features).map(Virtqueue::Packed)
        } else {
            SplitQueue::new(mem, addrs, base, features).map(Virtqueue::Split)
        }
    }

    /// Records in-flight descriptors from now on (`track` is in this queue's layout, as
    /// [`super::inflight::attach`] built it for the same features; another is ignored).
    pub fn set_inflight(&mut self, track: Tracker) {
        match (self, track) {
            (Virtqueue::Split(q), Tracker::Split(t)) => q.set_inflight(t),
            (Virtqueue::Packed(q), Tracker::Packed(t)) => q.set_inflight(t),
            _ => {}
        }
    }

    /// True for a packed ring.
    pub fn is_packed(&self) -> bool {
        matches!(self, Virtqueue::Packed(_))
    }

    /// What `GET_VRING_BASE` reports.
    pub fn last_avail_idx(&self) -> u16 {
        match self {
            Virtqueue::Split(q) => q.last_avail_idx(),
            Virtqueue::Packed(q) => q.last_avail_idx(),
        }
    }

    /// True once the driver put the ring in an impossible state.
    #[inline]
    pub fn is_broken(&self) -> bool {
        match self {
            Virtqueue::Split(q) => q.is_broken(),
            Virtqueue::Packed(q) => q.is_broken(),
        }
    }

    /// Poll mode: ask the driver not to kick.
    pub fn suppress_notifications(&mut self) {
        match self {
            Virtqueue::Split(q) => q.suppress_notifications(),
            Virtqueue::Packed(q) => q.suppress_notifications(),
        }
    }

    /// Should the caller signal the call eventfd after the last burst?
    #[inline]
    pub fn needs_interrupt(&mut self) -> bool {
        match self {
            Virtqueue::Split(q) => q.needs_interrupt(),
            Virtqueue::Packed(q) => q.needs_interrupt(),
        }
    }

    /// Guest TX into `out` (see [`SplitQueue::dequeue`], [`PackedQueue::dequeue`]).
    #[inline]
    pub fn dequeue<P: RxPool>(
        &mut self,
        mem: &GuestMemory,
        pool: &mut P,
        out: &mut Burst<P::Pkt>,
        stats: &mut QueueStats,
    ) -> usize {
        match self {
            Virtqueue::Split(q) => q.dequeue(mem, pool, out, stats),
            Virtqueue::Packed(q) => q.dequeue(mem, pool, out, stats),
        }
    }

    /// Guest RX from `pkts` (see [`SplitQueue::enqueue`], [`PackedQueue::enqueue`]).
    #[inline]
    pub fn enqueue<Q: Packet>(
        &mut self,
        mem: &GuestMemory,
        pkts: &[Q],
        stats: &mut QueueStats,
    ) -> usize {
        match self {
            Virtqueue::Split(q) => q.enqueue(mem, pkts, stats),
            Virtqueue::Packed(q) => q.enqueue(mem, pkts, stats),
        }
    }
}
