//! Loom models of the FDB slot protocol: the real [`Fdb`] (its atomics are loom's in this
//! build, see `crate::sync`), driven by two or three threads doing what workers and the
//! control thread do concurrently. Loom runs every interleaving (up to its preemption bound)
//! and every value a weakly ordered load may return; each model asserts what the module
//! documentation promises. Run with
//! `RUSTFLAGS="--cfg heddle_loom" cargo test -p heddle-dataplane --release --lib loom`.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use loom::sync::Arc;
use loom::thread;

use super::*;

/// Preemptions loom explores per execution (each model is exhaustive within this bound).
const PREEMPTIONS: usize = 3;

/// Runs `f` under loom with the project's bound; prints and returns how many executions
/// (distinct interleavings and load results) it explored.
fn explore(name: &str, f: impl Fn() + Sync + Send + 'static) -> usize {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    RUNS.store(0, Relaxed);
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(PREEMPTIONS);
    model.check(move || {
        RUNS.fetch_add(1, Relaxed);
        f()
    });
    let runs = RUNS.load(Relaxed);
    eprintln!("loom {name}: {runs} executions explored (preemption bound {PREEMPTIONS})");
    runs
}

fn vlan() -> Vlan {
    Vlan::new(1).unwrap()
}

fn mac(n: u32) -> [u8; 6] {
    let b = n.to_be_bytes();
    [2, 0, b[0], b[1], b[2], b[3]]
}

/// Two MACs whose probe windows start at the same slot of an `Fdb::new(8)` (16 slots).
/// Inside a model only (the table's atomics are loom's).
fn colliding() -> ([u8; 6], [u8; 6]) {
    let f = Fdb::new(8);
    let home = |m: &[u8; 6]| f.home(key_of(vlan(), m));
    let a = mac(0);
    let b = (1u32..)
        .map(mac)
        .find(|m| home(m) == home(&a))
        .expect("16 slots: a collision within a few dozen MACs");
    (a, b)
}

/// A worker learns B while the control thread removes A, whose slot B then reuses; a
/// reader looking both up meanwhile gets each key's own port or nothing, never the other's.
#[test]
fn loom_fdb_a_reused_slot_never_answers_another_keys_port() {
    let runs = explore("fdb slot reuse", || {
        let (a, b) = colliding();
        let f = Arc::new(Fdb::new(8));
        assert_eq!(f.learn(vlan(), &a, 1, 0), Learn::Learned);
        let control = {
            let f = f.clone();
            thread::spawn(move || assert!(f.remove(vlan(), a)))
        };
        let worker = {
            let f = f.clone();
            thread::spawn(move || assert_eq!(f.learn(vlan(), &b, 2, 0), Learn::Learned))
        };
        let got_a = f.lookup(vlan(), &a);
        let got_b = f.lookup(vlan(), &b);
        assert!(matches!(got_a, None | Some(1)), "A answered {got_a:?}");
        assert!(matches!(got_b, None | Some(2)), "B answered {got_b:?}");
        control.join().unwrap();
        worker.join().unwrap();
        assert_eq!(f.lookup(vlan(), &a), None);
        assert_eq!(f.lookup(vlan(), &b), Some(2));
        assert_eq!(f.len(), 1);
    });
    assert!(runs > 1);
}

/// Two workers learn the same new MAC at once on different ports: afterwards the table
/// holds it exactly once (the claimers' fence-and-scan removes a duplicate), and a reader
/// meanwhile sees one of the two ports or nothing.
#[test]
fn loom_fdb_racing_claims_of_one_key_leave_one_entry() {
    let runs = explore("fdb racing claims", || {
        let (a, _) = colliding();
        let f = Arc::new(Fdb::new(8));
        let workers: Vec<_> = [1u16, 2]
            .into_iter()
            .map(|port| {
                let f = f.clone();
                thread::spawn(move || f.learn(vlan(), &a, port, 0))
            })
            .collect();
        let seen = f.lookup(vlan(), &a);
        assert!(matches!(seen, None | Some(1) | Some(2)), "{seen:?}");
        for w in workers {
            assert_ne!(w.join().unwrap(), Learn::Full);
        }
        let entries = f.entries();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(f.lookup(vlan(), &a), Some(entries[0].port));
    });
    assert!(runs > 1);
}

/// The control thread installs a static entry while a worker learns the same MAC on
/// another port: the static entry always wins, and the key is held once.
#[test]
fn loom_fdb_a_static_entry_wins_a_race_with_learning() {
    let runs = explore("fdb static vs learned", || {
        let (a, _) = colliding();
        let f = Arc::new(Fdb::new(8));
        let worker = {
            let f = f.clone();
            thread::spawn(move || f.learn(vlan(), &a, 2, 0))
        };
        assert!(f.add_static(vlan(), a, 1));
        worker.join().unwrap();
        let entries = f.entries();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert!(entries[0].is_static);
        assert_eq!(f.lookup(vlan(), &a), Some(1));
    });
    assert!(runs > 1);
}

/// A worker moves A to another port while the control thread removes A and another worker
/// learns B into A's freed slot: the delayed move never lands in B's slot (B keeps its
/// port), and A ends either removed or on its new port.
#[test]
fn loom_fdb_a_delayed_update_never_writes_into_a_reused_slot() {
    let runs = explore("fdb delayed update", || {
        let (a, b) = colliding();
        let f = Arc::new(Fdb::new(8));
        assert_eq!(f.learn(vlan(), &a, 1, 0), Learn::Learned);
        let mover = {
            let f = f.clone();
            thread::spawn(move || f.learn(vlan(), &a, 2, 1))
        };
        let control = {
            let f = f.clone();
            thread::spawn(move || {
                assert!(f.remove(vlan(), a));
                f.learn(vlan(), &b, 3, 1)
            })
        };
        let moved = mover.join().unwrap();
        assert_eq!(control.join().unwrap(), Learn::Learned);
        assert_eq!(f.lookup(vlan(), &b), Some(3));
        let got_a = f.lookup(vlan(), &a);
        assert!(
            matches!(got_a, None | Some(2)),
            "A on {got_a:?} after {moved:?}"
        );
        for e in f.entries() {
            let want = if e.mac == b { 3 } else { 2 };
            assert_eq!(e.port, want, "{e:?}");
        }
    });
    assert!(runs > 1);
}

/// The control thread ages the table while a worker refreshes a stale entry: the entry
/// is never lost (ageing's compare-and-swap fails on the refreshed word, or the worker
/// learns it again).
#[test]
fn loom_fdb_ageing_never_loses_an_entry_refreshed_meanwhile() {
    let runs = explore("fdb ageing vs refresh", || {
        let (a, _) = colliding();
        let f = Arc::new(Fdb::new(8));
        assert_eq!(f.learn(vlan(), &a, 1, 0), Learn::Learned);
        let worker = {
            let f = f.clone();
            thread::spawn(move || f.learn(vlan(), &a, 1, 100))
        };
        let aged = f.age(100, 10);
        let learned = worker.join().unwrap();
        assert_eq!(
            f.lookup(vlan(), &a),
            Some(1),
            "aged {aged}, then {learned:?}"
        );
        assert_eq!(f.entries()[0].last_seen, 100);
    });
    assert!(runs > 1);
}
