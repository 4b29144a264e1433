//! Removing a port while a PMD worker is stalled in a burst: the control API returns, the
//! port leaves forwarding, and its device (socket, thread, rings) stays alive until the worker
//! comes back; the stall is logged and counted. A real EAL (no hugepages), a real native
//! vhost-user port; the worker is a stand-in that follows the worker protocol (load the
//! configuration, acknowledge its generation) and parks while holding it, as a worker inside
//! a long burst does. One test: the EAL starts once per process.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use heddle_api::{PortMode, PortOrigin, PortSpec};
use heddle_dataplane::daemon::state::PortStore;
use heddle_dataplane::daemon::switch::{PortError, SwitchCtl, WorkerPlace};
use heddle_dataplane::daemon::worker::Shared;
use heddle_dataplane::dpdk::{Eal, Mempool};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[test]
fn removing_a_port_under_a_stalled_worker_returns_and_frees_only_after_the_worker_passes() {
    let args: Vec<String> = [
        "--no-huge",
        "-m",
        "64",
        "--no-pci",
        "--file-prefix",
        "heddle-uaf-test",
        "--lcores",
        "0@0",
        "--log-level",
        "lib.eal:error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let eal = Eal::init(&args).expect("EAL starts without hugepages");
    let pool = Arc::new(Mempool::create("uaf_test", 255, 0, 2176, None).expect("pool"));
    let jumbo = Arc::new(Mempool::create("uaf_jumbo", 63, 0, 9472, None).expect("jumbo pool"));
    let dir = tempfile::tempdir().unwrap();
    let mut shared = Shared::new(1, SwitchCtl::empty_dataplane(1), 64);
    shared.stall_report = Duration::from_millis(50);
    let shared = Arc::new(shared);
    let mut ctl = SwitchCtl::new(
        shared.clone(),
        eal,
        (pool, jumbo),
        vec![WorkerPlace { lcore: 0, cpu: 0 }],
        PortStore::open(&dir.path().join("state")).unwrap(),
        (256, 256),
        300,
    );

    // The stand-in worker: picks up each generation, and on request parks holding the
    // configuration it loaded (so it acknowledges nothing newer) until released.
    let (park_tx, park_rx) = channel::<()>();
    let (parked_tx, parked_rx) = channel::<bool>();
    let (release_tx, release_rx) = channel::<()>();
    let worker = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            let mut dp = shared.current.load_full();
            let mut seen = u64::MAX;
            while !shared.stop.load(Ordering::Relaxed) {
                let g = shared.generation.load(Ordering::Acquire);
                if g != seen {
                    dp = shared.current.load_full();
                    seen = g;
                    shared.seen[0].0.store(g, Ordering::Release);
                }
                if park_rx.try_recv().is_ok() {
                    // In a burst: the port's path (its rings) is in this worker's hands.
                    let holds = dp.paths[0].iter().any(Option::is_some);
                    parked_tx.send(holds).unwrap();
                    release_rx.recv().unwrap();
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            drop(dp);
            shared.seen[0].0.store(u64::MAX, Ordering::Release);
        })
    };

    let sock = dir.path().join("p.sock");
    let spec = PortSpec {
        name: "p".into(),
        devargs: format!("vhost-user0,iface={}", sock.display()),
        mode: PortMode::Access { vlan: 10 },
        mac: None,
        queues: None,
        mtu: None,
    };
    ctl.add_port(spec.clone(), PortOrigin::Api)
        .expect("port added");
    assert!(sock.exists());
    park_tx.send(()).unwrap();
    assert!(
        parked_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        "the parked worker holds the port's path"
    );

    let log = Captured::default();
    let subscriber = {
        let log = log.clone();
        tracing_subscriber::fmt()
            .with_writer(move || log.clone())
            .with_ansi(false)
            .finish()
    };
    let _guard = tracing::subscriber::set_default(subscriber);

    // The removal returns (the API stays responsive) but frees nothing.
    let t = Instant::now();
    assert!(ctl.remove_port("p").unwrap());
    let returned = t.elapsed();
    assert!(returned < Duration::from_secs(1), "{returned:?}");
    assert!(ctl.port("p").is_none(), "the port left forwarding");
    let stats = ctl.stats();
    assert_eq!(stats.removing, vec!["p".to_owned()]);
    assert_eq!(stats.pmd[0].stalls, 1);
    assert!(
        log.text()
            .contains("PMD worker(s) [0] have not finished their burst: port \"p\""),
        "{}",
        log.text()
    );
    // Re-adding it now is refused with the reason, and changes nothing.
    match ctl.add_port(spec.clone(), PortOrigin::Api) {
        Err(PortError::Conflict(m)) => assert!(m.contains("still being removed"), "{m}"),
        other => panic!("re-add under a stalled worker: {other:?}"),
    }
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(60));
        ctl.tick();
    }
    assert!(
        sock.exists(),
        "the port's device was closed under the parked worker"
    );
    assert_eq!(ctl.stats().removing, vec!["p".to_owned()]);
    assert!(
        log.text()
            .matches("still have not finished their burst")
            .count()
            >= 2,
        "reported periodically: {}",
        log.text()
    );

    // Released: the next tick frees the port.
    release_tx.send(()).unwrap();
    let t = Instant::now();
    while !ctl.stats().removing.is_empty() {
        assert!(t.elapsed() < Duration::from_secs(5), "never reaped");
        std::thread::sleep(Duration::from_millis(5));
        ctl.tick();
    }
    assert!(
        !sock.exists(),
        "the port's socket is removed once it is freed"
    );
    assert_eq!(ctl.stats().pmd[0].stalls, 1);
    ctl.add_port(spec, PortOrigin::Api)
        .expect("the name is free again");
    assert!(sock.exists());

    ctl.shutdown(&[]);
    shared.stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    assert!(!sock.exists());
}
