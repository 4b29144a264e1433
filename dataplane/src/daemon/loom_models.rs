//! Loom model of the vring hand-over: the real vhost-user device installs a guest TX ring
//! and later stops it (`GET_VRING_BASE`: take it from the slot, wait for every worker's
//! quiescent state through the real `Shared::synchronize`, read the ring's next avail index,
//! free it), while a worker runs the real worker protocol (`Shared::moved` /
//! `Shared::acknowledge`, then `PortRings::rx_burst`). The ring's `Access` marker makes loom
//! check that every worker access comes after the ring was built and before it was freed;
//! the model checks the base handed back to the frontend counts exactly the frames the worker
//! took. Run with `RUSTFLAGS="--cfg heddle_loom" cargo test -p heddle-dataplane --release --lib loom`.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserMemoryRegion, VhostUserVringAddrFlags};
use vhost::vhost_user::VhostUserBackendReqHandlerMut;

use crate::daemon::switch::SwitchCtl;
use crate::daemon::worker::Shared;
use crate::switch::io::Burst;
use crate::vhost::device::{Quiesce, VhostDevice};
use crate::vhost::ring::PortRings;
use crate::vhost::testing::{Driver, TxLayout, VecPacket, VecPool};
use crate::vhost::virtq::feature;

/// Preemptions loom explores per execution (exhaustive within this bound).
const PREEMPTIONS: usize = 3;

/// Poll iterations the modelled worker runs before it stops.
const ITERATIONS: usize = 3;

#[test]
fn loom_vring_handover_never_frees_a_ring_a_worker_holds() {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(PREEMPTIONS);
    model.check(|| {
        RUNS.fetch_add(1, Relaxed);
        let mut shared = Shared::new(1, SwitchCtl::empty_dataplane(1), 8);
        // No stall reports: they read the wall clock, which loom cannot replay.
        shared.stall_report = Duration::MAX;
        let shared = loom::sync::Arc::new(shared);
        let rings = std::sync::Arc::new(PortRings::new(1, 1));
        let quiesce: Quiesce = {
            let shared = shared.clone();
            std::sync::Arc::new(move || shared.synchronize())
        };
        let mut device = VhostDevice::new("p".into(), rings.clone(), quiesce);

        // The frontend's guest TX ring (vring 1) in a memfd, with two frames posted.
        let mut driver = Driver::new(8, feature::VERSION_1);
        let (spec, file) = driver.region();
        let a = driver.addrs();
        device.set_features(feature::VERSION_1).unwrap();
        let region = VhostUserMemoryRegion::new(
            spec.guest_phys_addr,
            spec.size,
            spec.user_addr,
            spec.mmap_offset,
        );
        device.set_mem_table(&[region], vec![file], None).unwrap();
        device.set_vring_num(1, 8).unwrap();
        device
            .set_vring_addr(
                1,
                VhostUserVringAddrFlags::empty(),
                a.desc_uva,
                a.used_uva,
                a.avail_uva,
                0,
            )
            .unwrap();
        device.set_vring_base(1, 0).unwrap();
        for _ in 0..2 {
            driver.post_tx(&[0xab; 60], TxLayout::Joined).unwrap();
        }

        // A worker, as `worker::run` does it: pick up the generation, then poll.
        let worker = {
            let (shared, rings) = (shared.clone(), rings.clone());
            loom::thread::spawn(move || {
                let mut pool = VecPool::new(2048, 8);
                let mut burst: Burst<VecPacket> = Burst::new();
                let mut seen = u64::MAX;
                let mut frames = 0;
                for _ in 0..ITERATIONS {
                    if let Some(generation) = shared.moved(seen) {
                        seen = generation;
                        shared.acknowledge(0, generation);
                    }
                    rings.rx_burst(0, &mut pool, &mut burst);
                    frames += burst.len();
                    pool.give_back(burst.drain());
                }
                shared.acknowledge(0, u64::MAX);
                frames
            })
        };

        // Control: start the ring (the kick installs it), then stop it.
        device.set_vring_kick(1, None).unwrap();
        let base = device.get_vring_base(1).unwrap();
        assert!(!rings.slot(1).unwrap().is_active());
        let frames = worker.join().unwrap();
        assert_eq!(
            base.num as usize, frames,
            "the base handed back counts the frames the worker took"
        );
    });
    let runs = RUNS.load(Relaxed);
    eprintln!("loom vring hand-over: {runs} executions explored (preemption bound {PREEMPTIONS})");
    assert!(runs > 1);
}
