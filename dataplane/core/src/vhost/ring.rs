//! How a running virtqueue passes between a port's vhost-user thread and the PMD workers.
//!
//! Each vring of a port has a [`RingSlot`]: an atomic pointer to the [`ActiveRing`] (the
//! split queue, the guest memory it lives in, its call eventfd). The vhost-user thread builds
//! an `ActiveRing` when the frontend has set the ring up and enabled it, and *installs* it;
//! workers load the pointer once per burst (one acquire load, no lock, no reference count).
//! To stop a ring the thread *takes* the pointer back and waits for a quiescent state of every
//! worker (each has started a new poll iteration, see `heddle_dataplane::daemon::worker`), after which no worker
//! can still hold it: only then does it read the ring's last index or free it. The wait never
//! gives up (a stalled worker is reported and counted, and waited for); it ends early only
//! when the whole port is out of every worker's reach (removed from the configuration and
//! every worker passed that generation). Guest memory is therefore unmapped on the
//! vhost-user thread, never under a worker.
//!
//! Ownership on the fast path: a guest TX ring (odd index) is dequeued by exactly one worker,
//! the one its queue pair is assigned to. A guest RX ring (even index) is filled by every
//! worker that sends to the port; when the switch has more than one worker each enqueue takes
//! the ring's [`TxLock`] (uncontended it is one atomic swap per burst).

use std::fs::File;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::memory::GuestMemory;
use super::queue::Virtqueue;
use super::virtq::{QueueStats, RxPool};
use crate::handover::HandoverSlot;
use crate::switch::io::{Burst, Packet};
use crate::sync::atomic::Ordering;
use crate::sync::Access;

/// A virtqueue the workers may use: the queue, the memory it was translated against, and
/// the eventfd to signal when the frontend asks for interrupts.
pub struct ActiveRing {
    /// The ring's device-side state (split or packed).
    pub queue: Virtqueue,
    /// Kept alive while the ring runs; the queue's pointers point into it.
    pub mem: Arc<GuestMemory>,
    /// `SET_VRING_CALL`'s eventfd, if the frontend wants interrupts.
    pub call: Option<EventFd>,
    /// Who touches the ring, checked by the loom model of the hand-over (free otherwise).
    pub access: Access,
}

impl ActiveRing {
    /// A running ring over `queue` in `mem`, signalling `call` (the descriptor the frontend
    /// sent in `SET_VRING_CALL`) when the guest wants an interrupt.
    pub fn new(queue: Virtqueue, mem: Arc<GuestMemory>, call: Option<File>) -> ActiveRing {
        let call = call.map(|f| {
            // SAFETY: `into_raw_fd` gives up `f`'s ownership of an open descriptor, which the
            // EventFd takes over and closes once. The frontend sends an eventfd; were it any
            // other descriptor, writing 8 bytes to it (all `EventFd::write` does) harms only
            // the frontend's own file.
            unsafe { EventFd::from_raw_fd(f.into_raw_fd()) }
        });
        ActiveRing {
            queue,
            mem,
            call,
            access: Access::new(),
        }
    }

    /// Signals the frontend if the ring's event rules ask for it (interrupt-driven guests
    /// such as Linux virtio-net; polling DPDK frontends never need it).
    #[inline]
    fn notify(&mut self, counters: &RingCounters) {
        if let Some(call) = &self.call {
            if self.queue.needs_interrupt() {
                // One write(2) syscall on the fast path, only for interrupt-driven frontends
                // that asked for this interrupt. The only failure is a counter at its maximum
                // (EAGAIN, non-blocking eventfd): the frontend has interrupts pending already.
                let _ = call.write(1);
                counters.interrupts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One vring's hand-over point (see [`crate::handover`]).
pub type RingSlot = HandoverSlot<ActiveRing>;

/// Per-port counters of what only the vhost-user path sees. Workers add to them only when
/// something went wrong (or an interrupt was sent), so the common path touches none.
#[derive(Debug, Default)]
pub struct RingCounters {
    /// Descriptor chains returned with length 0 because they were malformed.
    pub bad_chains: AtomicU64,
    /// Frames larger than a switch buffer (guest TX) — dropped.
    pub oversize: AtomicU64,
    /// Guest TX frames left in the ring because the mbuf pool was empty.
    pub no_mbufs: AtomicU64,
    /// Frames the guest had no RX buffers for.
    pub no_guest_buffers: AtomicU64,
    /// Interrupts (call eventfd writes) sent to the frontend.
    pub interrupts: AtomicU64,
    /// Rings the switch gave up on (e.g. the guest moved its avail index by more than the
    /// ring size).
    pub broken_rings: AtomicU64,
}

impl RingCounters {
    #[inline]
    fn add(&self, st: &QueueStats) {
        if st.bad_chains | st.oversize | st.no_mbufs | st.no_guest_buffers != 0 {
            self.bad_chains.fetch_add(st.bad_chains, Ordering::Relaxed);
            self.oversize.fetch_add(st.oversize, Ordering::Relaxed);
            self.no_mbufs.fetch_add(st.no_mbufs, Ordering::Relaxed);
            self.no_guest_buffers
                .fetch_add(st.no_guest_buffers, Ordering::Relaxed);
        }
    }
}

/// The vrings of one port as the workers see them.
pub struct PortRings {
    slots: Box<[RingSlot]>,
    /// More than one worker may transmit to this port: enqueues take the ring lock.
    shared_tx: bool,
    /// Set when the frontend is connected and at least one queue pair runs.
    pub up: AtomicBool,
    /// Queue pairs whose two vrings both run.
    pub pairs_in_use: AtomicU16,
    /// The running vrings are packed (virtio 1.1) rings.
    pub packed: AtomicBool,
    /// Error and interrupt counters.
    pub counters: RingCounters,
}

impl PortRings {
    /// Slots for `pairs` queue pairs, for a switch with `workers` PMD workers.
    pub fn new(pairs: u16, workers: usize) -> PortRings {
        PortRings {
            slots: (0..2 * usize::from(pairs))
                .map(|_| RingSlot::default())
                .collect(),
            shared_tx: workers > 1,
            up: AtomicBool::new(false),
            pairs_in_use: AtomicU16::new(0),
            packed: AtomicBool::new(false),
            counters: RingCounters::default(),
        }
    }

    /// Queue pairs offered to the frontend.
    pub fn pairs(&self) -> u16 {
        (self.slots.len() / 2) as u16
    }

    /// The slot of vring `index` (even: guest RX, odd: guest TX).
    pub fn slot(&self, index: usize) -> Option<&RingSlot> {
        self.slots.get(index)
    }

    /// Worker side: receives what the guest transmitted on queue pair `pair`.
    ///
    /// Only the worker that polls this queue pair calls this (the switch assigns each RX
    /// queue to one worker).
    #[inline]
    pub fn rx_burst<P: RxPool>(&self, pair: u16, pool: &mut P, out: &mut Burst<P::Pkt>) {
        let Some(slot) = self.slots.get(2 * usize::from(pair) + 1) else {
            return;
        };
        let p = slot.load();
        if p.is_null() {
            return;
        }
        // SAFETY: a non-null pointer in the slot is a live `ActiveRing`: the control side
        // frees one only after `Shared::synchronize_unless` returned following its removal
        // from the slot, i.e. every worker started a new poll iteration since (the wait has
        // no timeout), or the port left every worker's configuration (then no worker gets
        // here); this worker is inside one poll iteration. Guest TX rings are dequeued only by
        // the one worker that owns the queue pair, so this `&mut` is unique.
        let ring = unsafe { &mut *p };
        ring.access.exclusive();
        if ring.queue.is_broken() {
            return;
        }
        let mut st = QueueStats::default();
        let n = ring.queue.dequeue(&ring.mem, pool, out, &mut st);
        if n > 0 {
            ring.notify(&self.counters);
        }
        self.counters.add(&st);
        if ring.queue.is_broken() {
            self.counters.broken_rings.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Worker side: copies `pkts` into the guest's RX buffers of queue pair `pair` (falling
    /// back to pair 0 when the frontend did not enable that one). Returns how many packets
    /// the guest took, a prefix of `pkts`; the caller still owns and frees all of them.
    #[inline]
    pub fn tx_burst<Q: Packet>(&self, pair: u16, pkts: &[Q]) -> usize {
        let mut slot = self.slots.get(2 * usize::from(pair));
        if !slot.is_some_and(RingSlot::is_active) {
            slot = self.slots.first();
        }
        let Some(slot) = slot else {
            return 0;
        };
        if self.shared_tx {
            slot.lock().lock();
        }
        let p = slot.load();
        let sent = if p.is_null() {
            0
        } else {
            // SAFETY: live as in `rx_burst`; guest RX rings are filled by several workers,
            // but then `shared_tx` is set and the ring lock taken above serialises them, so
            // this `&mut` is unique for the duration of the call.
            let ring = unsafe { &mut *p };
            ring.access.exclusive();
            if ring.queue.is_broken() {
                0
            } else {
                let mut st = QueueStats::default();
                let n = ring.queue.enqueue(&ring.mem, pkts, &mut st);
                if n > 0 {
                    ring.notify(&self.counters);
                }
                self.counters.add(&st);
                if ring.queue.is_broken() {
                    self.counters.broken_rings.fetch_add(1, Ordering::Relaxed);
                }
                n
            }
        };
        if self.shared_tx {
            slot.lock().unlock();
        }
        sent
    }
}
