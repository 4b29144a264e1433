//! Counters written by one PMD worker each and read by the control plane.
//!
//! Each worker owns its `WorkerCounters`; it is the only writer, so an increment is a
//! relaxed load and store (no locked instruction). Readers sum over workers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::io::{PortIndex, MAX_PORTS};

/// Why the switch dropped a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Shorter than an Ethernet (or tagged Ethernet) header. Counted on the ingress port.
    Malformed,
    /// A tagged frame on an access port, or a VID outside a trunk's set (ingress), or a
    /// destination that no longer carries the VLAN (egress).
    VlanNotAllowed,
    /// An untagged frame on a trunk without a native VLAN. Ingress.
    UntaggedNoNative,
    /// No other port on the VLAN, or the destination is the ingress port. Ingress.
    NoDestination,
    /// The destination port's TX queue did not take it. Egress.
    TxFull,
    /// No buffer for a flood copy. Egress.
    NoBuffer,
    /// No headroom to push a VLAN tag. Egress.
    Headroom,
    /// The learned destination port is gone. Ingress.
    PortDown,
    /// Larger than the ingress port's MTU (counted on the ingress port) or the destination
    /// port's (counted on the destination): the frame without its Ethernet header and 802.1Q
    /// tag is longer than the port's `mtu`.
    Mtu,
    /// A frame in several buffers (a device that scatters received frames): the switch
    /// carries frames in one buffer. Ingress.
    MultiSegment,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 10;
    /// Every reason, in index order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Malformed,
        DropReason::VlanNotAllowed,
        DropReason::UntaggedNoNative,
        DropReason::NoDestination,
        DropReason::TxFull,
        DropReason::NoBuffer,
        DropReason::Headroom,
        DropReason::PortDown,
        DropReason::Mtu,
        DropReason::MultiSegment,
    ];

    /// Stable snake_case name (API, metrics).
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::VlanNotAllowed => "vlan_not_allowed",
            DropReason::UntaggedNoNative => "untagged_no_native",
            DropReason::NoDestination => "no_destination",
            DropReason::TxFull => "tx_full",
            DropReason::NoBuffer => "no_buffer",
            DropReason::Headroom => "headroom",
            DropReason::PortDown => "port_down",
            DropReason::Mtu => "mtu",
            DropReason::MultiSegment => "multi_segment",
        }
    }
}

#[inline(always)]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// One worker's counters for one port, alone on its cache lines.
#[repr(align(64))]
#[derive(Debug, Default)]
pub struct PortCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    copies: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
}

impl PortCounters {
    /// Counts received frames.
    #[inline(always)]
    pub fn rx(&self, packets: u64, bytes: u64) {
        bump(&self.rx_packets, packets);
        bump(&self.rx_bytes, bytes);
    }

    /// Counts sent frames.
    #[inline(always)]
    pub fn tx(&self, packets: u64, bytes: u64) {
        bump(&self.tx_packets, packets);
        bump(&self.tx_bytes, bytes);
    }

    /// Counts `n` flood copies made (or attempted) of frames received on this port: each
    /// ends as one more `tx` or drop somewhere, so `rx + copies = tx + drops` over all ports.
    #[inline(always)]
    pub fn copies(&self, n: u64) {
        bump(&self.copies, n);
    }

    /// Counts `n` drops for `reason`.
    #[inline(always)]
    pub fn drop(&self, reason: DropReason, n: u64) {
        bump(&self.drops[reason as usize], n);
    }

    /// Reads the counters (each one atomically; the set not as a whole).
    pub fn snapshot(&self) -> PortTotals {
        let mut t = PortTotals {
            rx_packets: self.rx_packets.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            tx_packets: self.tx_packets.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            copies: self.copies.load(Ordering::Relaxed),
            drops: [0; DropReason::COUNT],
        };
        for (out, d) in t.drops.iter_mut().zip(self.drops.iter()) {
            *out = d.load(Ordering::Relaxed);
        }
        t
    }

    fn reset(&self) {
        for c in [
            &self.rx_packets,
            &self.rx_bytes,
            &self.tx_packets,
            &self.tx_bytes,
            &self.copies,
        ]
        .into_iter()
        .chain(self.drops.iter())
        {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Totals of one port over workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortTotals {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Flood copies of frames received on the port (see [`PortCounters::copies`]).
    pub copies: u64,
    /// Drops, indexed by `DropReason as usize`.
    pub drops: [u64; DropReason::COUNT],
}

impl PortTotals {
    /// Drops with their reason names.
    pub fn drops_by_name(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (r.name(), self.drops[*r as usize]))
    }

    /// Adds `other` into `self` (wrapping, as the counters themselves do).
    pub fn add(&mut self, other: &PortTotals) {
        self.rx_packets = self.rx_packets.wrapping_add(other.rx_packets);
        self.rx_bytes = self.rx_bytes.wrapping_add(other.rx_bytes);
        self.tx_packets = self.tx_packets.wrapping_add(other.tx_packets);
        self.tx_bytes = self.tx_bytes.wrapping_add(other.tx_bytes);
        self.copies = self.copies.wrapping_add(other.copies);
        for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
            *a = a.wrapping_add(*b);
        }
    }

    /// Drops for one reason.
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }

    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// A PMD worker's loop accounting, as OVS's pmd-stats-show has it.
#[derive(Debug, Default)]
pub struct PmdCounters {
    iterations: AtomicU64,
    idle_iterations: AtomicU64,
    busy_cycles: AtomicU64,
    idle_cycles: AtomicU64,
    packets: AtomicU64,
}

/// A read of [`PmdCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PmdTotals {
    /// Loop iterations.
    pub iterations: u64,
    /// Iterations that found nothing.
    pub idle_iterations: u64,
    /// Cycles of iterations that moved packets.
    pub busy_cycles: u64,
    /// Cycles of empty iterations.
    pub idle_cycles: u64,
    /// Packets received.
    pub packets: u64,
}

impl PmdCounters {
    /// Records one loop iteration that took `cycles` and received `packets`.
    #[inline(always)]
    pub fn record(&self, cycles: u64, packets: u64) {
        bump(&self.iterations, 1);
        if packets == 0 {
            bump(&self.idle_iterations, 1);
            bump(&self.idle_cycles, cycles);
        } else {
            bump(&self.busy_cycles, cycles);
            bump(&self.packets, packets);
        }
    }

    /// Reads the counters.
    pub fn snapshot(&self) -> PmdTotals {
        PmdTotals {
            iterations: self.iterations.load(Ordering::Relaxed),
            idle_iterations: self.idle_iterations.load(Ordering::Relaxed),
            busy_cycles: self.busy_cycles.load(Ordering::Relaxed),
            idle_cycles: self.idle_cycles.load(Ordering::Relaxed),
            packets: self.packets.load(Ordering::Relaxed),
        }
    }
}

/// FDB events seen by a worker: `learned` (learn), `moves` (mac_move), `full`
/// (learn_failed_full).
#[derive(Debug, Default)]
pub struct FdbCounters {
    learned: AtomicU64,
    moves: AtomicU64,
    full: AtomicU64,
}

/// Sums of [`FdbCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FdbTotals {
    /// New entries.
    pub learned: u64,
    /// MAC moves.
    pub moves: u64,
    /// Learning failures for lack of a slot.
    pub full: u64,
}

impl FdbCounters {
    /// Counts one outcome of `Fdb::learn`.
    #[inline(always)]
    pub fn record(&self, outcome: super::fdb::Learn) {
        use super::fdb::Learn;
        match outcome {
            Learn::Learned => bump(&self.learned, 1),
            Learn::Moved => bump(&self.moves, 1),
            Learn::Full => bump(&self.full, 1),
            Learn::Known | Learn::Refreshed | Learn::Static => {}
        }
    }

    /// Reads the counters.
    pub fn snapshot(&self) -> FdbTotals {
        FdbTotals {
            learned: self.learned.load(Ordering::Relaxed),
            moves: self.moves.load(Ordering::Relaxed),
            full: self.full.load(Ordering::Relaxed),
        }
    }
}

/// Everything one worker counts.
#[derive(Debug)]
pub struct WorkerCounters {
    ports: Box<[PortCounters]>,
    /// Loop accounting.
    pub pmd: PmdCounters,
    /// FDB events.
    pub fdb: FdbCounters,
}

impl Default for WorkerCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerCounters {
    /// Zeroed counters for every port index.
    pub fn new() -> WorkerCounters {
        WorkerCounters {
            ports: (0..MAX_PORTS).map(|_| PortCounters::default()).collect(),
            pmd: PmdCounters::default(),
            fdb: FdbCounters::default(),
        }
    }

    /// The counters of port `index` (indexes at or past `MAX_PORTS` share the last slot;
    /// the control plane never hands those out).
    #[inline(always)]
    pub fn port(&self, index: PortIndex) -> &PortCounters {
        &self.ports[(index as usize).min(MAX_PORTS - 1)]
    }

    /// Zeroes a port's counters. Only when no worker uses the port (after it was removed
    /// and every worker moved to a snapshot without it), so its index starts from zero when
    /// reused.
    pub fn reset_port(&self, index: PortIndex) {
        self.port(index).reset();
    }
}

/// Sums port `index` over workers.
pub fn sum_port(workers: &[Arc<WorkerCounters>], index: PortIndex) -> PortTotals {
    let mut t = PortTotals::default();
    for w in workers {
        t.add(&w.port(index).snapshot());
    }
    t
}

/// Sums FDB events over workers.
pub fn sum_fdb(workers: &[Arc<WorkerCounters>]) -> FdbTotals {
    let mut t = FdbTotals::default();
    for w in workers {
        let f = w.fdb.snapshot();
        t.learned += f.learned;
        t.moves += f.moves;
        t.full += f.full;
    }
    t
}

/// Sums PMD loop accounting over workers.
pub fn sum_pmd(workers: &[Arc<WorkerCounters>]) -> PmdTotals {
    let mut t = PmdTotals::default();
    for w in workers {
        let p = w.pmd.snapshot();
        t.iterations += p.iterations;
        t.idle_iterations += p.idle_iterations;
        t.busy_cycles += p.busy_cycles;
        t.idle_cycles += p.idle_cycles;
        t.packets += p.packets;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::fdb::Learn;

    #[test]
    fn drop_reason_names_are_stable_and_indexes_match() {
        let names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(
            names,
            [
                "malformed",
                "vlan_not_allowed",
                "untagged_no_native",
                "no_destination",
                "tx_full",
                "no_buffer",
                "headroom",
                "port_down",
                "mtu",
                "multi_segment"
            ]
        );
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn counters_sum_over_workers_and_reset() {
        let w: Vec<_> = (0..2).map(|_| Arc::new(WorkerCounters::new())).collect();
        w[0].port(3).rx(2, 128);
        w[1].port(3).rx(1, 64);
        w[1].port(3).tx(4, 256);
        w[0].port(3).drop(DropReason::TxFull, 5);
        w[1].port(3).drop(DropReason::TxFull, 1);
        w[1].port(4).drop(DropReason::Malformed, 1);
        let t = sum_port(&w, 3);
        assert_eq!(
            (t.rx_packets, t.rx_bytes, t.tx_packets, t.tx_bytes),
            (3, 192, 4, 256)
        );
        assert_eq!(t.dropped(DropReason::TxFull), 6);
        assert_eq!(t.total_drops(), 6);
        assert_eq!(
            t.drops_by_name().find(|(n, _)| *n == "tx_full"),
            Some(("tx_full", 6))
        );
        w[0].fdb.record(Learn::Learned);
        w[1].fdb.record(Learn::Moved);
        w[1].fdb.record(Learn::Full);
        w[1].fdb.record(Learn::Known);
        let f = sum_fdb(&w);
        assert_eq!((f.learned, f.moves, f.full), (1, 1, 1));
        w[0].pmd.record(100, 0);
        w[1].pmd.record(300, 32);
        let p = sum_pmd(&w);
        assert_eq!(
            (
                p.iterations,
                p.idle_iterations,
                p.idle_cycles,
                p.busy_cycles,
                p.packets
            ),
            (2, 1, 100, 300, 32)
        );
        w[0].reset_port(3);
        w[1].reset_port(3);
        assert_eq!(sum_port(&w, 3), PortTotals::default());
        assert_eq!(sum_port(&w, 4).dropped(DropReason::Malformed), 1);
    }
}
