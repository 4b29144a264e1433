//! How running memif rings pass between a port's control thread and the PMD workers: the
//! same hand-over as native vhost-user ([`crate::vhost::ring`]). Each ring has a slot
//! holding an atomic pointer to its [`ActiveQueue`]; the control thread installs a queue at
//! `CONNECT` and takes it back when the peer leaves, then waits for a quiescent state of
//! every worker (which never gives up) before it drops the queue and, with the last queue,
//! unmaps the peer's regions. A peer that dies under traffic therefore never has its memory
//! unmapped under a worker: the switch holds its own mapping of the peer's memfd until
//! every worker has moved on.
//!
//! Ownership on the fast path: a receive ring (slave to master) is read by exactly one
//! worker, the one its queue is assigned to; a transmit ring (master to slave) is written
//! by every worker that sends to the port, under the slot's [`TxLock`] when the switch has
//! more than one worker.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64};

use super::queue::{BurstStats, MemifQueue};
use crate::handover::HandoverSlot;
use crate::switch::io::{Burst, Packet};
use crate::sync::atomic::Ordering;
use crate::vhost::virtq::RxPool;

/// A ring the workers may use.
///
/// Poll mode only: the switch never writes the interrupt eventfd a peer passes with
/// `ADD_RING` (it is kept open while the ring runs and closed after). A write from a PMD
/// worker would be a syscall per burst, and a hostile peer could make it block (fill the
/// eventfd's counter, clear `O_NONBLOCK` on the shared file description) and stall every
/// port of that worker. DPDK's `net_memif` and VPP poll by default.
pub struct ActiveQueue {
    /// The ring.
    pub queue: MemifQueue,
    /// The eventfd the peer passed with `ADD_RING`, held open, never written.
    pub interrupt: Option<std::fs::File>,
}

/// One queue's hand-over point (see [`crate::handover`]).
pub type QueueSlot = HandoverSlot<ActiveQueue>;

/// What only the memif path sees, per port. Workers add to these only when something went
/// wrong so the common path touches none.
#[derive(Debug, Default)]
pub struct MemifCounters {
    /// Descriptors naming memory outside their region, chains too long or empty.
    pub bad_descs: AtomicU64,
    /// Frames larger than a switch buffer (received from the peer): dropped.
    pub oversize: AtomicU64,
    /// Times receive stopped because the packet pool was empty.
    pub no_mbufs: AtomicU64,
    /// Frames the peer had no buffers for.
    pub no_peer_buffers: AtomicU64,
    /// Rings the switch gave up on (the peer claimed more than the ring size outstanding).
    pub broken_rings: AtomicU64,
}

impl MemifCounters {
    #[inline]
    fn add(&self, st: &BurstStats) {
        if st.bad_descs | st.oversize | st.no_mbufs | st.no_peer_buffers != 0 {
            self.bad_descs.fetch_add(st.bad_descs, Ordering::Relaxed);
            self.oversize.fetch_add(st.oversize, Ordering::Relaxed);
            self.no_mbufs.fetch_add(st.no_mbufs, Ordering::Relaxed);
            self.no_peer_buffers
                .fetch_add(st.no_peer_buffers, Ordering::Relaxed);
        }
    }
}

/// The rings of one memif port as the workers see them: queue `q` is receive ring `q`
/// (slave to master) and transmit ring `q` (master to slave).
pub struct MemifRings {
    rx: Box<[QueueSlot]>,
    tx: Box<[QueueSlot]>,
    shared_tx: bool,
    /// Set while a peer is connected and its rings run.
    pub up: AtomicBool,
    /// Queue pairs running (both rings installed).
    pub pairs_in_use: AtomicU16,
    /// Error and interrupt counters.
    pub counters: MemifCounters,
}

impl MemifRings {
    /// Slots for `pairs` queue pairs, for a switch with `workers` PMD workers.
    pub fn new(pairs: u16, workers: usize) -> MemifRings {
        let slots = || (0..pairs).map(|_| QueueSlot::default()).collect();
        MemifRings {
            rx: slots(),
            tx: slots(),
            shared_tx: workers > 1,
            up: AtomicBool::new(false),
            pairs_in_use: AtomicU16::new(0),
            counters: MemifCounters::default(),
        }
    }

    /// Queue pairs offered.
    pub fn pairs(&self) -> u16 {
        self.rx.len() as u16
    }

    /// Receive slot `q`.
    pub fn rx_slot(&self, q: usize) -> Option<&QueueSlot> {
        self.rx.get(q)
    }

    /// Transmit slot `q`.
    pub fn tx_slot(&self, q: usize) -> Option<&QueueSlot> {
        self.tx.get(q)
    }

    /// Worker side: frames the peer sent on queue `queue`. Only the worker assigned the
    /// queue calls this.
    #[inline]
    pub fn rx_burst<P: RxPool>(&self, queue: u16, pool: &mut P, out: &mut Burst<P::Pkt>) {
        let Some(slot) = self.rx.get(usize::from(queue)) else {
            return;
        };
        let p = slot.load();
        if p.is_null() {
            return;
        }
        // SAFETY: a non-null pointer in the slot is a live `ActiveQueue`: the control side
        // frees one only after the quiescent-state wait that follows its removal from the
        // slot (no timeout), or once the port left every worker's configuration; this
        // worker is inside one poll iteration. Receive rings are read by the one worker the
        // queue is assigned to, so this `&mut` is unique.
        let q = unsafe { &mut *p };
        if q.queue.is_broken() {
            return;
        }
        let mut st = BurstStats::default();
        q.queue.dequeue(pool, out, &mut st);
        self.counters.add(&st);
        if q.queue.is_broken() {
            self.counters.broken_rings.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Worker side: copies `pkts` into the peer's buffers of queue `queue` (queue 0 when
    /// that one does not run). Returns how many the peer took, a prefix of `pkts`; the
    /// caller still owns and frees all of them.
    #[inline]
    pub fn tx_burst<Q: Packet>(&self, queue: u16, pkts: &[Q]) -> usize {
        let mut slot = self.tx.get(usize::from(queue));
        if !slot.is_some_and(QueueSlot::is_active) {
            slot = self.tx.first();
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
            // SAFETY: live as in `rx_burst`; several workers may transmit here, but then
            // `shared_tx` is set and the slot's lock taken above serialises them.
            let q = unsafe { &mut *p };
            if q.queue.is_broken() {
                0
            } else {
                let mut st = BurstStats::default();
                let n = q.queue.enqueue(pkts, &mut st);
                self.counters.add(&st);
                if q.queue.is_broken() {
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
