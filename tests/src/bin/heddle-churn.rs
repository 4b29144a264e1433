//! `heddle-churn [SECONDS]`: the churn soak (see `heddle_tests::soak`) for SECONDS (default
//! 600), printing the baseline and final figures; exits 1 when something leaked or the
//! switch's counters do not add up. `benches/churn.sh` builds and runs it.

use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let secs: u64 = match std::env::args().nth(1) {
        None => 600,
        Some(s) => s.parse().map_err(|_| {
            anyhow::anyhow!("usage: heddle-churn [SECONDS]: {s:?} is not a number of seconds")
        })?,
    };
    let report = heddle_tests::soak::run(heddle_tests::soak::SoakConfig::for_duration(
        Duration::from_secs(secs),
    ))?;
    print!("{}", report.table());
    let problems = report.problems();
    if problems.is_empty() {
        println!("OK: every resource back to its baseline, counters add up");
        Ok(())
    } else {
        for p in &problems {
            println!("LEAK OR MISMATCH: {p}");
        }
        std::process::exit(1);
    }
}
