//! What the split queue and in-flight tracking both need of a queue's layout: where its rings
//! are, the feature bits that change them, the largest queue. A module of its own so that
//! `virtq` (which records in-flight descriptors) and `inflight` (which checks a region against
//! a queue) need not use each other.

/// Where the driver put one queue's rings (`VHOST_USER_SET_VRING_NUM`/`_ADDR`), in
/// frontend virtual addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingAddrs {
    /// Descriptors in the ring (a power of two, at most [`MAX_QUEUE_SIZE`]).
    pub size: u16,
    /// The descriptor table.
    pub desc_uva: u64,
    /// The available ring.
    pub avail_uva: u64,
    /// The used ring.
    pub used_uva: u64,
}

/// Virtio feature bits this queue looks at.
pub mod feature {
    /// Virtio 1.0 (little-endian rings, 12-byte net header).
    pub const VERSION_1: u64 = 1 << 32;
    /// Mergeable receive buffers: a frame may span several heads; `num_buffers` says how many.
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// Descriptors may point to a table of descriptors (one level).
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event`/`avail_event` replace the flag-based notification suppression.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// Buffers are used in the order they were made available.
    pub const IN_ORDER: u64 = 1 << 35;
    /// The packed ring layout (the split queue does not serve it; `vhost::packed` does).
    pub const RING_PACKED: u64 = 1 << 34;
    /// Notify even when the avail ring is empty (legacy; nothing to do for a poller).
    pub const NOTIFY_ON_EMPTY: u64 = 1 << 24;
    /// Header and data may share descriptors in any layout (implied by `VERSION_1`).
    pub const ANY_LAYOUT: u64 = 1 << 27;
}

/// Largest split queue (virtio 1.x).
pub const MAX_QUEUE_SIZE: u16 = 32768;
