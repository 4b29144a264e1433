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
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 8;
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

    /// Counts `n` drops for `reason`.
    #[inline(always)]
    pub fn drop(&self, reason: DropReason, n: u64) {
        bump(&self.drops[reason as usize], n);
    }

    fn reset(&self) {
        for c in [
            &self.rx_packets,
            &self.rx_bytes,
            &self.tx_packets,
            &self.tx_bytes,
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

/// FDB events seen by a worker.
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
        let c = w.port(index);
        t.rx_packets += c.rx_packets.load(Ordering::Relaxed);
        t.rx_bytes += c.rx_bytes.load(Ordering::Relaxed);
        t.tx_packets += c.tx_packets.load(Ordering::Relaxed);
        t.tx_bytes += c.tx_bytes.load(Ordering::Relaxed);
        for (sum, d) in t.drops.iter_mut().zip(c.drops.iter()) {
            *sum += d.load(Ordering::Relaxed);
        }
    }
    t
}

/// Sums FDB events over workers.
pub fn sum_fdb(workers: &[Arc<WorkerCounters>]) -> FdbTotals {
    let mut t = FdbTotals::default();
    for w in workers {
        t.learned += w.fdb.learned.load(Ordering::Relaxed);
        t.moves += w.fdb.moves.load(Ordering::Relaxed);
        t.full += w.fdb.full.load(Ordering::Relaxed);
    }
    t
}
