//! PMD workers: one busy-polling loop per configured core, run to completion.
//!
//! A worker reads the configuration through [`Shared::current`] only when the generation
//! number moved, then polls its RX queues, forwards each burst through the pipeline and
//! flushes the per-port TX batches. It takes no lock (except a shared TX queue's, see
//! `dpdk::io`), allocates nothing, logs nothing and makes no syscall. It acknowledges each
//! generation in `seen`, which is how the control plane knows an old port is no longer
//! touched and may be stopped (quiescent-state reclamation).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::dpdk::io::{DpdkIo, PortPaths};
use crate::dpdk::{tsc, Mbuf, Mempool};
use crate::switch::config::Snapshot;
use crate::switch::counters::WorkerCounters;
use crate::switch::fdb::Fdb;
use crate::switch::io::{Burst, PacketIo, PortIndex};
use crate::switch::pipeline::WorkerState;

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

/// State shared by the control plane and the workers.
pub struct Shared {
    /// The current configuration.
    pub current: ArcSwap<Dataplane>,
    /// Bumped after every store to `current`.
    pub generation: AtomicU64,
    /// Per worker: the last generation it picked up.
    pub seen: Vec<Padded>,
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
    /// Waits until every running worker has started a poll iteration after this call
    /// (RCU's `synchronize`): nothing they loaded before it can still be in use. Workers
    /// that have stopped, or not started, count as quiescent.
    pub fn synchronize(&self) {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        for (w, seen) in self.seen.iter().enumerate() {
            loop {
                // u64::MAX: the worker has stopped (or not started: it reads the newest
                // generation when it does).
                if seen.0.load(Ordering::Acquire) >= generation {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    tracing::error!(
                        worker = w,
                        generation,
                        "PMD worker did not reach a quiescent state in 5 s"
                    );
                    break;
                }
                std::thread::yield_now();
            }
        }
    }
}

/// Runs one PMD worker until `shared.stop` is set. Returns 0 (the lcore's exit code).
pub fn run(worker: usize, shared: Arc<Shared>, pool: Arc<Mempool>) -> i32 {
    let counters = shared.counters[worker].clone();
    let mut state: Box<WorkerState<Mbuf>> = Box::new(WorkerState::new(counters.clone()));
    let mut dp = shared.current.load_full();
    let mut io = DpdkIo::new(dp.paths[worker].clone(), pool);
    let mut seen = u64::MAX;
    let mut burst: Burst<Mbuf> = Burst::new();
    let pmd = &counters.pmd;
    loop {
        let generation = shared.generation.load(Ordering::Acquire);
        if generation != seen {
            dp = shared.current.load_full();
            io.set_paths(dp.paths[worker].clone());
            seen = generation;
            shared.seen[worker].0.store(generation, Ordering::Release);
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
    shared.seen[worker].0.store(u64::MAX, Ordering::Release);
    0
}
