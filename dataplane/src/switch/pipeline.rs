//! The per-worker forwarding engine: classify, learn, look up, batch per destination,
//! tag or untag per destination port, send.
//!
//! Run to completion on one PMD core. No heap allocation after [`WorkerState::new`], no
//! lock, no syscall, no logging: every outcome is a counter.

use std::sync::Arc;

use super::config::{PortMode, Snapshot, SwitchPort};
use super::counters::{DropReason, WorkerCounters};
use super::fdb::Fdb;
use super::io::{Burst, Packet, PacketIo, PortIndex, BURST, MAX_PORTS};
use super::vlan::{is_multicast, pop_tag, push_tag, set_vid, L2Header, Vlan};

/// One PMD worker's forwarding state: a TX batch per destination port and its counters.
pub struct WorkerState<P> {
    counters: Arc<WorkerCounters>,
    tx: Batches<P>,
}

/// Per-destination TX batches and the list of those holding packets.
struct Batches<P> {
    batches: Box<[Burst<P>]>,
    pending: Box<[PortIndex]>,
    is_pending: Box<[bool]>,
    npending: usize,
}

/// The last FDB answers within one burst: frames of a burst mostly share their addresses,
/// so this saves the hash and probe for all but the first of them.
struct BurstCache {
    learned: Option<(Vlan, [u8; 6])>,
    looked_up: Option<(Vlan, [u8; 6], Option<PortIndex>)>,
}

impl<P: Packet> WorkerState<P> {
    /// State for a worker that counts into `counters`. Allocates its batches once, here.
    pub fn new(counters: Arc<WorkerCounters>) -> WorkerState<P> {
        WorkerState {
            counters,
            tx: Batches {
                batches: (0..MAX_PORTS).map(|_| Burst::new()).collect(),
                pending: vec![0; MAX_PORTS].into_boxed_slice(),
                is_pending: vec![false; MAX_PORTS].into_boxed_slice(),
                npending: 0,
            },
        }
    }

    /// The worker's counters.
    pub fn counters(&self) -> &Arc<WorkerCounters> {
        &self.counters
    }

    /// Forwards one received burst from `in_port`, leaving `rx` empty. Frames are queued
    /// on per-port batches (sent when full); call [`WorkerState::flush`] after the last
    /// burst of a poll iteration.
    pub fn forward<I: PacketIo<Pkt = P>>(
        &mut self,
        snap: &Snapshot,
        fdb: &Fdb,
        now: u32,
        io: &mut I,
        in_port: PortIndex,
        rx: &mut Burst<P>,
    ) {
        let counters: &WorkerCounters = &self.counters;
        let tx = &mut self.tx;
        let inc = counters.port(in_port);
        let Some(ingress) = snap.port(in_port) else {
            // The port was removed while its frames were in flight.
            inc.drop(DropReason::PortDown, rx.len() as u64);
            rx.drain().for_each(drop);
            return;
        };
        let mut bytes = 0u64;
        let count = rx.len() as u64;
        let mut cache = BurstCache {
            learned: None,
            looked_up: None,
        };
        for pkt in rx.drain() {
            bytes += pkt.len() as u64;
            let Some(h) = L2Header::parse(pkt.data()) else {
                inc.drop(DropReason::Malformed, 1);
                continue;
            };
            let vlan = match classify(&ingress.mode, h.vid()) {
                Ok(v) => v,
                Err(reason) => {
                    inc.drop(reason, 1);
                    continue;
                }
            };
            if !is_multicast(&h.src) && cache.learned != Some((vlan, h.src)) {
                counters.fdb.record(fdb.learn(vlan, &h.src, in_port, now));
                cache.learned = Some((vlan, h.src));
            }
            if !is_multicast(&h.dst) {
                let dst = match cache.looked_up {
                    Some((v, m, port)) if v == vlan && m == h.dst => port,
                    _ => {
                        let port = fdb.lookup(vlan, &h.dst);
                        cache.looked_up = Some((vlan, h.dst, port));
                        port
                    }
                };
                if let Some(dst) = dst {
                    if dst == in_port {
                        inc.drop(DropReason::NoDestination, 1);
                    } else if let Some(egress) = snap.port(dst) {
                        tx.enqueue(counters, io, egress, pkt, vlan, h.tci);
                    } else {
                        inc.drop(DropReason::PortDown, 1);
                    }
                    continue;
                }
            }
            tx.flood(counters, io, snap, in_port, pkt, vlan, h.tci);
        }
        inc.rx(count, bytes);
    }

    /// Sends every pending batch.
    pub fn flush<I: PacketIo<Pkt = P>>(&mut self, io: &mut I) {
        self.tx.flush(&self.counters, io);
    }
}

impl<P: Packet> Batches<P> {
    #[allow(clippy::too_many_arguments)]
    fn flood<I: PacketIo<Pkt = P>>(
        &mut self,
        counters: &WorkerCounters,
        io: &mut I,
        snap: &Snapshot,
        in_port: PortIndex,
        pkt: P,
        vlan: Vlan,
        tci: Option<u16>,
    ) {
        let members = snap.flood(vlan);
        let mut left = members.iter().filter(|m| **m != in_port).count();
        if left == 0 {
            counters.port(in_port).drop(DropReason::NoDestination, 1);
            return;
        }
        let mut original = Some(pkt);
        for &m in members {
            if m == in_port {
                continue;
            }
            let Some(egress) = snap.port(m) else { continue };
            left -= 1;
            let out = if left == 0 {
                original.take()
            } else {
                // Copies come from the untouched original: it is modified only when it is
                // enqueued itself, last.
                original.as_ref().and_then(|p| io.copy(p))
            };
            match out {
                Some(p) => self.enqueue(counters, io, egress, p, vlan, tci),
                None => counters.port(m).drop(DropReason::NoBuffer, 1),
            }
        }
    }

    /// Puts `pkt` (of `vlan`, carrying tag `tci` now) into `egress`'s batch with the tag
    /// that port wants.
    #[inline]
    fn enqueue<I: PacketIo<Pkt = P>>(
        &mut self,
        counters: &WorkerCounters,
        io: &mut I,
        egress: &SwitchPort,
        mut pkt: P,
        vlan: Vlan,
        tci: Option<u16>,
    ) {
        let out = egress.index;
        let tagged_out = match &egress.mode {
            PortMode::Access { vlan: v } => {
                if *v != vlan {
                    counters.port(out).drop(DropReason::VlanNotAllowed, 1);
                    return;
                }
                false
            }
            PortMode::Trunk { native, .. } => {
                if !egress.mode.carries(vlan) {
                    counters.port(out).drop(DropReason::VlanNotAllowed, 1);
                    return;
                }
                *native != Some(vlan)
            }
        };
        let ok = match (tci, tagged_out) {
            (Some(t), true) => {
                if t & 0x0fff != vlan.get() {
                    set_vid(&mut pkt, vlan.get());
                }
                true
            }
            (Some(_), false) => pop_tag(&mut pkt),
            (None, true) => push_tag(&mut pkt, vlan.get()),
            (None, false) => true,
        };
        if !ok {
            counters.port(out).drop(DropReason::Headroom, 1);
            return;
        }
        let i = out as usize;
        if !self.is_pending[i] {
            self.is_pending[i] = true;
            self.pending[self.npending] = out;
            self.npending += 1;
        }
        if self.batches[i].push(pkt).is_err() {
            // Unreachable: a batch is sent as soon as it is full, below.
            counters.port(out).drop(DropReason::TxFull, 1);
            return;
        }
        if self.batches[i].is_full() {
            self.send(counters, io, out);
        }
    }

    fn send<I: PacketIo<Pkt = P>>(
        &mut self,
        counters: &WorkerCounters,
        io: &mut I,
        port: PortIndex,
    ) {
        let batch = &mut self.batches[port as usize];
        let n = batch.len();
        if n == 0 {
            return;
        }
        let mut lens = [0u32; BURST];
        for (l, p) in lens.iter_mut().zip(batch.as_slice()) {
            *l = p.len() as u32;
        }
        let sent = io.tx_burst(port, batch).min(n);
        let bytes: u64 = lens[..sent].iter().map(|l| u64::from(*l)).sum();
        let c = counters.port(port);
        c.tx(sent as u64, bytes);
        if sent < n {
            c.drop(DropReason::TxFull, (n - sent) as u64);
        }
    }

    fn flush<I: PacketIo<Pkt = P>>(&mut self, counters: &WorkerCounters, io: &mut I) {
        for k in 0..self.npending {
            let port = self.pending[k];
            self.is_pending[port as usize] = false;
            self.send(counters, io, port);
        }
        self.npending = 0;
    }
}

/// The VLAN a frame belongs to on ingress, or why it is dropped.
#[inline(always)]
fn classify(mode: &PortMode, vid: Option<u16>) -> Result<Vlan, DropReason> {
    match (mode, vid) {
        (PortMode::Access { vlan }, None | Some(0)) => Ok(*vlan),
        (PortMode::Access { .. }, Some(_)) => Err(DropReason::VlanNotAllowed),
        (PortMode::Trunk { native, .. }, None | Some(0)) => {
            native.ok_or(DropReason::UntaggedNoNative)
        }
        (PortMode::Trunk { allowed, .. }, Some(vid)) => match Vlan::new(vid) {
            Some(v) if allowed.contains(v) => Ok(v),
            _ => Err(DropReason::VlanNotAllowed),
        },
    }
}
