//! The per-worker forwarding engine: classify, learn, look up, batch per destination,
//! tag or untag per destination port, send.
//!
//! Run to completion on one PMD core. No heap allocation after [`WorkerState::new`], no
//! lock, no syscall, no logging: every outcome is a counter.

use std::sync::Arc;

use super::config::{PortMode, Snapshot, ETH_HLEN, VLAN_HLEN};
use super::counters::{DropReason, WorkerCounters};
use super::fdb::Fdb;
use super::io::{Burst, Packet, PacketIo, PortIndex, BURST, MAX_PORTS};
use super::vlan::{is_multicast, pop_tag, push_tag, set_vid, L2Header, Vlan};

/// How many frames ahead of the one being parsed the parse phase prefetches (l2fwd's
/// `PREFETCH_OFFSET`).
const PREFETCH_AHEAD: usize = 3;

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

/// What the decision phase made of one received frame.
#[derive(Clone, Copy)]
enum Action {
    /// Dropped, counted on the ingress port.
    Drop(DropReason),
    /// To one learned port.
    Unicast(PortIndex),
    /// To every other port of the VLAN.
    Flood,
}

/// One parsed frame of a burst, kept on the stack between the phases of [`WorkerState::forward`].
#[derive(Clone, Copy)]
struct Parsed {
    action: Action,
    /// Valid unless `action` is `Drop`.
    vlan: Vlan,
    /// The tag the frame carries now.
    tci: Option<u16>,
    dst: [u8; 6],
    src: [u8; 6],
}

/// Placeholder of dropped frames' `vlan` (never read).
const ANY_VLAN: Vlan = match Vlan::new(1) {
    Some(v) => v,
    None => unreachable!(),
};

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

    /// Packets queued in TX batches, not yet handed to [`PacketIo::tx_burst`].
    pub fn pending(&self) -> usize {
        self.tx.pending[..self.tx.npending]
            .iter()
            .map(|p| self.tx.batches[*p as usize].len())
            .sum()
    }

    /// Forwards one received burst from `in_port`, leaving `rx` empty.
    ///
    /// In phases over the whole burst: parse and classify every frame into its VLAN by the
    /// ingress port's mode; learn every unicast source; look up every unicast
    /// destination; then, in arrival order, queue each frame on its destination's TX
    /// batch (tagged or untagged for that port) or flood it to the VLAN's other ports
    /// (copies via [`PacketIo::copy`], the original to the last). A batch that fills is
    /// sent at once; call [`WorkerState::flush`] after the last burst of a poll iteration.
    ///
    /// Every received frame is counted in `rx` of `in_port`, and each of its copies ends
    /// as exactly one `tx` or one drop (ingress drops on `in_port`, egress drops on the
    /// destination port).
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
        let inc = counters.port(in_port);
        let n = rx.len();
        if n == 0 {
            return;
        }
        let Some(ingress) = snap.port(in_port) else {
            // The port was removed while its frames were in flight.
            let bytes = rx.as_slice().iter().map(|p| p.len() as u64).sum();
            inc.rx(n as u64, bytes);
            inc.drop(DropReason::PortDown, n as u64);
            rx.drain().for_each(drop);
            return;
        };

        // Phase 1: parse and classify.
        let mut parsed = [Parsed {
            action: Action::Flood,
            vlan: ANY_VLAN,
            tci: None,
            dst: [0; 6],
            src: [0; 6],
        }; BURST];
        let mut bytes = 0u64;
        let pkts = rx.as_slice();
        // As DPDK's l2fwd does: the first frames' headers are requested now, and each step
        // requests the one `PREFETCH_AHEAD` further, so its line arrives while the frames
        // before it are parsed instead of stalling the parse of each in turn.
        for pkt in pkts.iter().take(PREFETCH_AHEAD) {
            pkt.prefetch();
        }
        for (i, (p, pkt)) in parsed.iter_mut().zip(pkts).enumerate() {
            if let Some(ahead) = pkts.get(i + PREFETCH_AHEAD) {
                ahead.prefetch();
            }
            bytes += pkt.len() as u64;
            let Some(h) = L2Header::parse(pkt.data()) else {
                p.action = Action::Drop(DropReason::Malformed);
                continue;
            };
            if pkt.segmented() {
                p.action = Action::Drop(DropReason::MultiSegment);
                continue;
            }
            if l3_len(pkt.len(), h.tci) > usize::from(ingress.mtu) {
                p.action = Action::Drop(DropReason::Mtu);
                continue;
            }
            match classify(&ingress.mode, h.vid()) {
                Ok(v) => {
                    *p = Parsed {
                        action: Action::Flood,
                        vlan: v,
                        tci: h.tci,
                        dst: h.dst,
                        src: h.src,
                    }
                }
                Err(reason) => p.action = Action::Drop(reason),
            }
        }
        inc.rx(n as u64, bytes);
        let parsed = &mut parsed[..n];

        // Phase 2: learn sources. Frames of a burst mostly share their source: skip the
        // FDB for a repeat of the previous one.
        let mut last: Option<(Vlan, [u8; 6])> = None;
        for p in parsed.iter() {
            if matches!(p.action, Action::Drop(_)) || !learnable(&p.src) {
                continue;
            }
            if last != Some((p.vlan, p.src)) {
                counters.fdb.record(fdb.learn(p.vlan, &p.src, in_port, now));
                last = Some((p.vlan, p.src));
            }
        }

        // Phase 3: look up unicast destinations (the same way).
        let mut last: Option<(Vlan, [u8; 6], Option<PortIndex>)> = None;
        for p in parsed.iter_mut() {
            if matches!(p.action, Action::Drop(_)) || is_multicast(&p.dst) {
                continue;
            }
            let found = match last {
                Some((v, m, found)) if v == p.vlan && m == p.dst => found,
                _ => {
                    let found = fdb.lookup(p.vlan, &p.dst);
                    last = Some((p.vlan, p.dst, found));
                    found
                }
            };
            p.action = match found {
                None => Action::Flood,
                Some(d) if d == in_port => Action::Drop(DropReason::NoDestination),
                // Learned on a port that is gone (its entries are being flushed).
                Some(d) if snap.port(d).is_none() => Action::Drop(DropReason::PortDown),
                Some(d) => Action::Unicast(d),
            };
        }

        // Phase 4: move every frame to its batch(es), in arrival order.
        let tx = &mut self.tx;
        for (pkt, p) in rx.drain().zip(parsed.iter()) {
            match p.action {
                Action::Drop(reason) => inc.drop(reason, 1),
                Action::Unicast(d) => tx.enqueue(counters, io, snap, d, pkt, p.vlan, p.tci),
                Action::Flood => tx.flood(counters, io, snap, in_port, pkt, p.vlan, p.tci),
            }
        }
    }

    /// Sends every pending batch. O(ports with pending packets).
    pub fn flush<I: PacketIo<Pkt = P>>(&mut self, io: &mut I) {
        self.tx.flush(&self.counters, io);
    }
}

/// A frame's length without its Ethernet header and 802.1Q tag (`tci`): what a port's MTU
/// bounds. Frames reach this only after parsing, so they hold their headers.
#[inline(always)]
fn l3_len(frame_len: usize, tci: Option<u16>) -> usize {
    let hdr = if tci.is_some() {
        ETH_HLEN + VLAN_HLEN
    } else {
        ETH_HLEN
    };
    frame_len.saturating_sub(hdr)
}

/// True for a source address worth learning: unicast and not all-zero.
#[inline(always)]
fn learnable(src: &[u8; 6]) -> bool {
    !is_multicast(src) && *src != [0; 6]
}

impl<P: Packet> Batches<P> {
    /// Sends `pkt` (of `vlan`, carrying `tci` now) to every port of `vlan` but `in_port`:
    /// a copy to each but the last, the original to the last.
    #[allow(clippy::too_many_arguments)]
    #[inline]
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
        // The last member that is not the ingress port gets the original.
        let Some(last) = members.iter().rposition(|m| *m != in_port) else {
            counters.port(in_port).drop(DropReason::NoDestination, 1);
            return;
        };
        for &m in &members[..last] {
            if m == in_port {
                continue;
            }
            counters.port(in_port).copies(1);
            // Copies come from the untouched original: it is modified only when it is
            // enqueued itself, last.
            match io.copy(&pkt) {
                Some(c) => self.enqueue(counters, io, snap, m, c, vlan, tci),
                None => counters.port(m).drop(DropReason::NoBuffer, 1),
            }
        }
        self.enqueue(counters, io, snap, members[last], pkt, vlan, tci);
    }

    /// Puts `pkt` (of `vlan`, carrying tag `tci` now) into port `out`'s batch with the tag
    /// that port wants, sending the batch when it fills.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn enqueue<I: PacketIo<Pkt = P>>(
        &mut self,
        counters: &WorkerCounters,
        io: &mut I,
        snap: &Snapshot,
        out: PortIndex,
        mut pkt: P,
        vlan: Vlan,
        tci: Option<u16>,
    ) {
        let Some(egress) = snap.port(out) else {
            // Unreachable: unicast destinations were checked, flood lists hold only ports
            // of the same snapshot.
            counters.port(out).drop(DropReason::PortDown, 1);
            return;
        };
        if l3_len(pkt.len(), tci) > usize::from(egress.mtu) {
            counters.port(out).drop(DropReason::Mtu, 1);
            return;
        }
        let Some(tagged_out) = egress.mode.egress_tagged(vlan) else {
            // A learned port that no longer carries the VLAN.
            counters.port(out).drop(DropReason::VlanNotAllowed, 1);
            return;
        };
        let ok = match (tci, tagged_out) {
            (Some(t), true) => {
                // Keeps PCP and DEI; rewrites a priority tag's VID 0.
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
        let batch = &mut self.batches[i];
        if let Err(pkt) = batch.push(pkt) {
            // Unreachable: a batch is sent as soon as it is full, below.
            drop(pkt);
            counters.port(out).drop(DropReason::TxFull, 1);
            return;
        }
        if batch.is_full() {
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
