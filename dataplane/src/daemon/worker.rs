//! PMD workers: one busy-polling loop per configured core, run to completion.
//!
//! A worker reads the configuration through [`Shared::current`] only when the generation
//! number moved, then polls its RX queues, forwards each burst through the pipeline and
//! flushes the per-port TX batches. It takes no lock (except a shared TX queue's, see
//! `dpdk::io`), allocates nothing, logs nothing and makes no syscall. It acknowledges each
//! generation in `seen`, which is how the control plane knows an old port is no longer
//! touched and may be stopped (quiescent-state reclamation). Nothing a worker may hold is
//! freed before it acknowledged a later generation, however long it takes: waits have no
//! timeout (a stall is logged and counted in `stalls`), and port removal hands a port that
//! a stalled worker holds up to the control plane's retire list instead of blocking the API.

use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::dpdk::io::{DpdkIo, PortPaths};
use crate::dpdk::{tsc, Mbuf, Mempool};
use heddle_core::switch::config::Snapshot;
use heddle_core::switch::counters::WorkerCounters;
use heddle_core::switch::fdb::Fdb;
use heddle_core::switch::io::{Burst, PacketIo, PortIndex};
use heddle_core::switch::pipeline::WorkerState;
use heddle_core::sync::atomic::{AtomicU64, Ordering};
use heddle_core::sync::back_off;

/// What every worker sees of the configuration: the switch snapshot plus, per worker, its
/// port paths and the RX queues it polls.
pub struct Dataplane {
    /// Ports and VLAN flood lists.
    pub switch: Snapshot,
    /// Per worker: how to reach each port.
    pub paths: Vec<Arc<PortPaths>>,
    /// Per worker: the (port, RX queue) pairs it polls.
    pub rx: Vec<Vec<(PortIndex, u16)>>,
}

/// An `AtomicU64` alone on its cache line, so workers' acknowledgements do not share lines.
#[repr(align(64))]
#[derive(Debug, Default)]
pub struct Padded(pub AtomicU64);

/// How often a wait for a stalled worker is reported (a warning naming the worker).
pub const STALL_REPORT: Duration = Duration::from_secs(1);

/// State shared by the control plane and the workers.
pub struct Shared {
    /// The current configuration.
    pub current: ArcSwap<Dataplane>,
    /// Bumped after every store to `current`.
    pub generation: AtomicU64,
    /// Per worker: the last generation it picked up.
    pub seen: Vec<Padded>,
    /// Per worker: how many times a wait for its quiescent state took longer than
    /// `stall_report` (one count per wait, however long it lasts).
    pub stalls: Vec<Padded>,
    /// How long a wait may take before it is reported (`STALL_REPORT` in the daemon).
    pub stall_report: Duration,
    /// Set to stop the workers.
    pub stop: AtomicBool,
    /// Coarse clock in seconds, advanced by the control plane (no syscall on the fast path).
    pub clock: AtomicU32,
    /// The forwarding database.
    pub fdb: Fdb,
    /// Per-worker counters.
    pub counters: Vec<Arc<WorkerCounters>>,
}

impl Shared {
    /// State for `workers` PMD workers, starting from `dataplane`, with an FDB of
    /// `fdb_capacity` entries.
    pub fn new(workers: usize, dataplane: Dataplane, fdb_capacity: usize) -> Shared {
        Shared {
            current: ArcSwap::from_pointee(dataplane),
            generation: AtomicU64::new(0),
            seen: (0..workers).map(|_| Padded::default()).collect(),
            stalls: (0..workers).map(|_| Padded::default()).collect(),
            stall_report: STALL_REPORT,
            stop: AtomicBool::new(false),
            clock: AtomicU32::new(0),
            fdb: Fdb::new(fdb_capacity),
            counters: (0..workers)
                .map(|_| Arc::new(WorkerCounters::new()))
                .collect(),
        }
    }

    /// Starts a new generation and returns it. Once every worker has reached it
    /// ([`Shared::passed`]), none can still hold anything it loaded before this call.
    pub fn advance(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Worker side, at the top of each poll iteration: the generation to pick up when it moved
    /// since `seen`. The worker then reloads what it holds and [`Shared::acknowledge`]s it.
    #[inline]
    pub fn moved(&self, seen: u64) -> Option<u64> {
        let generation = self.generation.load(Ordering::Acquire);
        (generation != seen).then_some(generation)
    }

    /// Worker side: worker `worker` holds nothing it loaded before `generation` (`u64::MAX`:
    /// it stopped and holds nothing at all).
    #[inline]
    pub fn acknowledge(&self, worker: usize, generation: u64) {
        self.seen[worker].0.store(generation, Ordering::Release);
    }

    /// True when every worker has picked up `generation` (or has stopped: its `seen` is then
    /// `u64::MAX`).
    pub fn passed(&self, generation: u64) -> bool {
        self.seen
            .iter()
            .all(|s| s.0.load(Ordering::Acquire) >= generation)
    }

    /// The workers that have not picked up `generation` yet.
    pub fn behind(&self, generation: u64) -> Vec<usize> {
        (0..self.seen.len())
            .filter(|&w| self.seen[w].0.load(Ordering::Acquire) < generation)
            .collect()
    }

    /// Waits up to `timeout` for every worker to pick up `generation`; true when they did.
    pub fn wait_for(&self, generation: u64, timeout: Duration) -> bool {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if self.passed(generation) {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            back_off(&mut spins);
        }
    }

    /// Counts one stall for each worker behind `generation` and returns them.
    pub fn count_stall(&self, generation: u64) -> Vec<usize> {
        let behind = self.behind(generation);
        for &w in &behind {
            self.stalls[w].0.fetch_add(1, Ordering::Relaxed);
        }
        behind
    }

    /// Waits until every running worker has started a poll iteration after this call
    /// (RCU's `synchronize`): nothing they loaded before it can still be in use. Workers
    /// that have stopped count as quiescent. Never gives up: a worker stuck in a burst is
    /// reported every `stall_report` (a warning naming it) and counted once in `stalls`,
    /// and the wait goes on, because what the caller frees next may be in that worker's hands.
    pub fn synchronize(&self) {
        self.synchronize_unless(&AtomicBool::new(false));
    }

    /// As [`Shared::synchronize`], but also returns as soon as `unreachable` is set: the
    /// caller's objects were taken out of every worker's reach another way (the port was
    /// withdrawn from the configuration and every worker passed that generation).
    pub fn synchronize_unless(&self, unreachable: &AtomicBool) {
        let generation = self.advance();
        let start = Instant::now();
        let mut next_report = self.stall_report;
        let mut counted = false;
        let mut spins = 0u32;
        while !self.passed(generation) {
            if unreachable.load(Ordering::Acquire) {
                return;
            }
            let waited = start.elapsed();
            if waited >= next_report {
                let behind = if counted {
                    self.behind(generation)
                } else {
                    counted = true;
                    self.count_stall(generation)
                };
                tracing::warn!(
                    workers = ?behind,
                    generation,
                    waited_ms = waited.as_millis() as u64,
                    "PMD worker(s) {behind:?} have not finished their burst: still waiting before freeing what they may hold"
                );
                next_report += self.stall_report;
            }
            // A worker finishes a burst in microseconds: spin briefly, then sleep so that a
            // stalled one does not cost the waiting thread a CPU.
            back_off(&mut spins);
        }
    }
}

/// Runs one PMD worker until `shared.stop` is set. Returns 0 (the lcore's exit code).
pub fn run(worker: usize, shared: Arc<Shared>, pool: Arc<Mempool>, jumbo: Arc<Mempool>) -> i32 {
    let counters = shared.counters[worker].clone();
    let mut state: Box<WorkerState<Mbuf>> = Box::new(WorkerState::new(counters.clone()));
    let mut dp = shared.current.load_full();
    let mut io = DpdkIo::with_jumbo(dp.paths[worker].clone(), pool, jumbo);
    let mut seen = u64::MAX;
    let mut burst: Burst<Mbuf> = Burst::new();
    let pmd = &counters.pmd;
    loop {
        if let Some(generation) = shared.moved(seen) {
            dp = shared.current.load_full();
            io.set_paths(dp.paths[worker].clone());
            seen = generation;
            shared.acknowledge(worker, generation);
        }
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let now = shared.clock.load(Ordering::Relaxed);
        let start = tsc();
        let mut packets = 0u64;
        for &(port, queue) in &dp.rx[worker] {
            io.rx_burst(port, queue, &mut burst);
            if burst.is_empty() {
                continue;
            }
            packets += burst.len() as u64;
            state.forward(&dp.switch, &shared.fdb, now, &mut io, port, &mut burst);
        }
        state.flush(&mut io);
        let cycles = tsc().wrapping_sub(start);
        pmd.record(cycles, packets);
    }
    // Drop the snapshot before acknowledging the stop, so the control plane can close ports.
    drop(io);
    drop(dp);
    shared.acknowledge(worker, u64::MAX);
    0
}
