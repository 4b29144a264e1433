//! The 60-second churn soak (`benches/churn.sh` runs it for ten minutes): traffic through
//! native vhost-user, memif and kernel pods while pods come and go every 100 ms through the
//! real heddle-cni, then every resource of the switch back to its baseline and its counters
//! adding up. What runs where: `heddle_tests::soak`.
//!
//! Needs root, dpdk-testpmd, ping, Debian's containernetworking-plugins (host-local), about
//! 900 MiB of free 2 MiB hugepages, and the binaries built (`cargo build --workspace --bins`).

use std::time::Duration;

use anyhow::{ensure, Result};
use heddle_tests::soak::{run, SoakConfig};

#[test]
fn sixty_seconds_of_churn_under_traffic_leak_nothing_and_counters_add_up() -> Result<()> {
    let report = run(SoakConfig::for_duration(Duration::from_secs(60)))?;
    eprint!("{}", report.table());
    let problems = report.problems();
    ensure!(problems.is_empty(), "{problems:#?}\n{}", report.table());
    // The churn really happened, under traffic of every kind. One call every 100 ms is the
    // aim; on a loaded 2-CPU machine a heddle-cni call takes up to a second, so at least
    // one ADD a second is required.
    ensure!(
        report.adds >= 60 && report.dels == report.adds,
        "{} ADD / {} DEL",
        report.adds,
        report.dels
    );
    ensure!(report.connected_cycles >= 3, "{}", report.table());
    ensure!(
        report.steady_rx.len() == 4 && report.steady_rx.values().all(|&n| n > 100_000),
        "steady pods: {:?}",
        report.steady_rx
    );
    ensure!(
        report.kernel_rx > 1_000,
        "kernel pods: {}",
        report.kernel_rx
    );
    Ok(())
}
