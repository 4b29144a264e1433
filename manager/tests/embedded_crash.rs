//! Crash test of the embedded store (a `harness = false` test: `main` below). The binary
//! re-executes itself as a child (when `HEDDLE_CRASH_DIR` is set) that
//! allocates and releases as fast as it can, is killed with SIGKILL at a random moment, and
//! the store is reopened and checked against what the child had acknowledged.
//!
//! The child prints `BEGIN <op>` before each operation and `ACK <op> <addresses>` once the
//! store call returned (after `fdatasync`). After the kill, the store must equal the model of
//! acknowledged operations, with the one operation in flight (BEGIN without ACK) either fully
//! applied or not at all: no acknowledged allocation lost, no release undone, no address held
//! twice.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use heddle_manager::embedded::{EmbeddedConfig, EmbeddedStore};

const CONFIG: &str = r#"
providers:
  uplink0:
    interface: eth1
    vlanPool: [{start: 100, end: 110}]
networks:
  n3:
    kind: vhost-user
    provider: uplink0
    ipv4: {cidr: 10.3.0.0/26, gateway: 10.3.0.1}
    ipv6: {cidr: "fd00:3::/122"}
"#;

/// Small, so compactions (snapshot + rename + truncate) happen often and get killed too.
const COMPACT_EVERY: u64 = 16;

fn config() -> EmbeddedConfig {
    serde_yaml::from_str(CONFIG).unwrap()
}

/// A tiny deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn main() {
    match std::env::var("HEDDLE_CRASH_DIR") {
        Ok(dir) => crash_child(&dir),
        Err(_) => {
            crash_at_random_points_loses_nothing();
            println!("test crash_at_random_points_loses_nothing ... ok");
        }
    }
}

/// The child: churn until killed.
fn crash_child(dir: &str) {
    let round: u64 = std::env::var("HEDDLE_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let mut store = EmbeddedStore::open_with(dir, config(), COMPACT_EVERY).unwrap();
    let mut held: Vec<String> = store.leases("n3").unwrap().keys().cloned().collect();
    let mut rng = Rng(round * 7919 + 17);
    let out = std::io::stdout();
    let mut out = out.lock();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    for i in 0.. {
        let release = !held.is_empty() && (held.len() > 40 || rng.below(3) == 0);
        if release {
            let owner = held.swap_remove(rng.below(held.len() as u64) as usize);
            writeln!(out, "BEGIN R {owner}").unwrap();
            out.flush().unwrap();
            store.release("n3", &owner).unwrap();
            writeln!(out, "ACK R {owner}").unwrap();
        } else {
            let owner = format!("r{round}-c{i}/eth1");
            writeln!(out, "BEGIN A {owner}").unwrap();
            out.flush().unwrap();
            let addrs = store.allocate("n3", &owner, &[]).unwrap();
            let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            writeln!(out, "ACK A {owner} {}", addrs.join(",")).unwrap();
            held.push(owner);
        }
        out.flush().unwrap();
    }
}

fn crash_at_random_points_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut model: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let mut rng = Rng(0x5EED);
    let started = Instant::now();
    let mut rounds = 0;
    let (mut in_flight_applied, mut in_flight_not_applied, mut acked_total) = (0, 0, 0);
    while rounds < 150 && started.elapsed() < Duration::from_secs(12) {
        rounds += 1;
        let mut child = Command::new(&exe)
            .env("HEDDLE_CRASH_DIR", dir.path())
            .env("HEDDLE_CRASH_ROUND", rounds.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.ends_with("READY") {
                    let _ = ready_tx.send(());
                }
                lines.push(line);
            }
            lines
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("child opened the store");
        // Kill at a random moment: 0-25 ms into the churn.
        std::thread::sleep(Duration::from_micros(rng.below(25_000)));
        // SIGKILL: no destructor, no flush, no chance to finish a write.
        child.kill().unwrap();
        child.wait().unwrap();
        let lines = handle.join().unwrap();

        let mut in_flight: Option<(char, String)> = None;
        for line in &lines {
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("BEGIN"), Some(op), Some(owner)) => {
                    in_flight = Some((op.chars().next().unwrap(), owner.to_string()));
                }
                (Some("ACK"), Some("A"), Some(owner)) => {
                    let addrs = parts
                        .next()
                        .unwrap()
                        .split(',')
                        .map(|a| a.parse().unwrap())
                        .collect();
                    assert!(
                        model.insert(owner.to_string(), addrs).is_none(),
                        "owner {owner} twice"
                    );
                    in_flight = None;
                    acked_total += 1;
                }
                (Some("ACK"), Some("R"), Some(owner)) => {
                    assert!(
                        model.remove(owner).is_some(),
                        "released {owner} that was not held"
                    );
                    in_flight = None;
                    acked_total += 1;
                }
                _ => {}
            }
        }

        let store = EmbeddedStore::open_with(dir.path(), config(), COMPACT_EVERY).unwrap();
        store
            .check_invariants()
            .unwrap_or_else(|e| panic!("round {rounds}: {e}"));
        assert_eq!(
            store.vlan("n3"),
            Some(100),
            "round {rounds}: VLAN must be stable"
        );
        let leases = store.leases("n3").unwrap().clone();
        if leases != model {
            // Only the operation in flight may differ, and only as a whole.
            let (op, owner) = in_flight
                .clone()
                .unwrap_or_else(|| panic!("round {rounds}: store differs with nothing in flight\nstore {leases:?}\nmodel {model:?}"));
            let mut applied = model.clone();
            match op {
                'A' => {
                    let addrs = leases
                        .get(&owner)
                        .unwrap_or_else(|| panic!("round {rounds}: store differs: {owner}"));
                    applied.insert(owner.clone(), addrs.clone());
                }
                _ => {
                    applied.remove(&owner);
                }
            }
            assert_eq!(
                leases, applied,
                "round {rounds}: in-flight {op} {owner} half applied"
            );
            model = applied;
            in_flight_applied += 1;
        } else if in_flight.is_some() {
            in_flight_not_applied += 1;
        }
    }
    eprintln!(
        "crash test: {rounds} kills, {acked_total} acknowledged operations, in-flight operation \
         found applied {in_flight_applied} times, not applied {in_flight_not_applied} times, {} leases at the end",
        model.len()
    );
    assert!(rounds >= 10, "only {rounds} rounds ran");
    assert!(
        acked_total > rounds,
        "the child barely ran: {acked_total} operations"
    );
}
