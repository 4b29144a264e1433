//! `heddle-churn [SECONDS] [--crash-memif]`: the churn soak (see `heddle_tests::soak`) for
//! SECONDS (default 600), printing the baseline and final figures; exits 1 when something
//! leaked or the switch's counters do not add up. `--crash-memif` also crashes connected
//! memif pods (DPDK 22.11's net_memif then crashes the switch sooner or later:
//! `SoakConfig::crash_memif`). `benches/churn.sh` builds and runs it.

use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let (mut secs, mut crash_memif) = (600u64, false);
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--crash-memif" => crash_memif = true,
            s => {
                secs = s.parse().map_err(|_| {
                    anyhow::anyhow!(
                        "usage: heddle-churn [SECONDS] [--crash-memif]: {s:?} is not a number of seconds"
                    )
                })?
            }
        }
    }
    let mut cfg = heddle_tests::soak::SoakConfig::for_duration(Duration::from_secs(secs));
    cfg.crash_memif = crash_memif;
    let report = heddle_tests::soak::run(cfg)?;
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
