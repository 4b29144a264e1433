//! Statistics of the paired loopback harness: per-round ratios, their median, a bootstrap
//! 95% interval of that median, and the verdict read from the interval alone.
//!
//! Each round runs every switch of a cell once, back to back, so a ratio taken inside one
//! round compares two switches under (nearly) the same machine state; drift between rounds
//! cancels in the ratio. The interval is a percentile bootstrap of the median over rounds
//! with a fixed seed, so the same rounds file always gives the same table.

use crate::rounds::{Slot, Status};

/// Median of `v` (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `q` quantile (0..=1) of sorted `v`, linear between order statistics.
fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// splitmix64: the resampling indexes of the bootstrap. Hand-written (six lines) because the
/// interval must be reproducible from the rounds file across toolchains and crate versions,
/// which a general-purpose RNG crate does not promise for its seeded generators.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        // n is a handful of rounds: the modulo bias (n / 2^64) is nil.
        (self.next() % n as u64) as usize
    }
}

/// Resamples drawn for the interval.
pub const RESAMPLES: usize = 4000;

/// Percentile bootstrap 95% interval of the median of `v` ([`RESAMPLES`] resamples, fixed
/// seed). None with fewer than 3 values: too few rounds to say anything.
pub fn bootstrap_median_ci(v: &[f64]) -> Option<(f64, f64)> {
    let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.len() < 3 {
        return None;
    }
    let mut rng = SplitMix(0x4865_6464_6c65); // "Heddle"
    let mut meds = Vec::with_capacity(RESAMPLES);
    let mut sample = vec![0.0; v.len()];
    for _ in 0..RESAMPLES {
        for s in sample.iter_mut() {
            *s = v[rng.below(v.len())];
        }
        meds.push(median(&sample));
    }
    meds.sort_by(f64::total_cmp);
    Some((quantile_sorted(&meds, 0.025), quantile_sorted(&meds, 0.975)))
}

/// What the interval of a cost ratio (heddle / peer, cycles per packet) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The whole interval is below 1: heddle spends fewer cycles per packet.
    Ahead,
    /// The whole interval is above 1.
    Behind,
    /// The interval contains 1, or there are too few rounds for one.
    NotSeparable,
}

impl Verdict {
    /// From the 95% interval of a cost ratio; never from the median alone.
    pub fn from_interval(ci: Option<(f64, f64)>) -> Verdict {
        match ci {
            Some((_, hi)) if hi < 1.0 => Verdict::Ahead,
            Some((lo, _)) if lo > 1.0 => Verdict::Behind,
            _ => Verdict::NotSeparable,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ahead => "ahead",
            Verdict::Behind => "behind",
            Verdict::NotSeparable => "not separable",
        }
    }
}

/// A paired comparison: the per-round ratios and what they say.
#[derive(Clone, Debug, PartialEq)]
pub struct Paired {
    pub rounds: usize,
    pub median: f64,
    pub ci: Option<(f64, f64)>,
    pub verdict: Verdict,
}

impl Paired {
    pub fn of(ratios: &[f64]) -> Paired {
        let ci = bootstrap_median_ci(ratios);
        Paired {
            rounds: ratios.iter().filter(|x| x.is_finite()).count(),
            median: median(ratios),
            ci,
            verdict: Verdict::from_interval(ci),
        }
    }
}

/// A cell of the table: what every switch in one round of it is measured on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cell {
    pub transport: String,
    pub workload: String,
    pub pods: usize,
    pub size: u32,
}

impl Cell {
    pub fn of(s: &Slot) -> Cell {
        Cell {
            transport: s.transport.clone(),
            workload: s.workload.clone(),
            pods: s.pods,
            size: s.size,
        }
    }
}

/// The slot of `switch` in `cell` that round `round` keeps: its last `ok` attempt.
fn kept<'a>(slots: &'a [Slot], cell: &Cell, switch: &str, round: usize) -> Option<&'a Slot> {
    slots
        .iter()
        .filter(|s| s.round == round && s.switch == switch && s.status == Status::Ok)
        .filter(|s| Cell::of(s) == *cell)
        .max_by_key(|s| s.attempt)
}

/// Per round of `cell` in which both switches have a kept slot: `subject`'s cycles per
/// packet over `peer`'s.
pub fn round_ratios(slots: &[Slot], cell: &Cell, subject: &str, peer: &str) -> Vec<f64> {
    let mut rounds: Vec<usize> = slots.iter().map(|s| s.round).collect();
    rounds.sort_unstable();
    rounds.dedup();
    rounds
        .into_iter()
        .filter_map(|r| {
            let a = kept(slots, cell, subject, r)?;
            let b = kept(slots, cell, peer, r)?;
            (b.cycles_per_packet > 0.0).then(|| a.cycles_per_packet / b.cycles_per_packet)
        })
        .collect()
}

/// Kept slots of `switch` in `cell`, one per round.
pub fn kept_slots<'a>(slots: &'a [Slot], cell: &Cell, switch: &str) -> Vec<&'a Slot> {
    let mut rounds: Vec<usize> = slots.iter().map(|s| s.round).collect();
    rounds.sort_unstable();
    rounds.dedup();
    rounds
        .into_iter()
        .filter_map(|r| kept(slots, cell, switch, r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
    }

    #[test]
    fn interval_of_identical_ratios_is_that_value() {
        assert_eq!(bootstrap_median_ci(&[0.8; 10]), Some((0.8, 0.8)));
    }

    #[test]
    fn interval_lies_within_the_data_and_holds_the_median() {
        let v = [0.61, 0.72, 0.65, 0.70, 0.58, 0.66, 0.69, 0.63, 0.74, 0.60];
        let (lo, hi) = bootstrap_median_ci(&v).unwrap();
        let m = median(&v);
        assert!(lo >= 0.58 && hi <= 0.74, "({lo}, {hi})");
        assert!(lo <= m && m <= hi, "{m} outside ({lo}, {hi})");
        assert!(
            hi - lo > 0.01,
            "a spread sample gives a non-trivial interval"
        );
        // Deterministic: the same rounds give the same interval.
        assert_eq!(bootstrap_median_ci(&v), Some((lo, hi)));
    }

    #[test]
    fn too_few_rounds_give_no_interval_and_no_verdict() {
        assert_eq!(bootstrap_median_ci(&[0.5, 0.5]), None);
        let p = Paired::of(&[0.5, 0.5]);
        assert_eq!(p.verdict, Verdict::NotSeparable);
        assert_eq!(p.rounds, 2);
    }

    #[test]
    fn verdict_comes_from_the_interval() {
        assert_eq!(Verdict::from_interval(Some((0.5, 0.99))), Verdict::Ahead);
        assert_eq!(Verdict::from_interval(Some((1.01, 1.3))), Verdict::Behind);
        assert_eq!(
            Verdict::from_interval(Some((0.9, 1.1))),
            Verdict::NotSeparable
        );
        assert_eq!(Verdict::from_interval(None), Verdict::NotSeparable);
    }

    #[test]
    fn a_median_below_one_with_a_wide_interval_is_not_separable() {
        // Median 0.9, but one round in three is at 1.3: the interval reaches past 1.
        let v = [0.9, 0.85, 1.3, 0.92, 1.25, 0.88, 1.35];
        let p = Paired::of(&v);
        assert!(p.median < 1.0);
        assert_eq!(p.verdict, Verdict::NotSeparable, "{p:?}");
        // The same centre with little spread is ahead.
        let p = Paired::of(&[0.9, 0.91, 0.89, 0.9, 0.92, 0.88, 0.9]);
        assert_eq!(p.verdict, Verdict::Ahead, "{p:?}");
    }

    fn slot(round: usize, switch: &str, attempt: usize, status: Status, cycles: f64) -> Slot {
        Slot {
            round,
            transport: "vhost".into(),
            workload: "best".into(),
            pods: 2,
            size: 64,
            switch: switch.into(),
            order: 0,
            attempt,
            status,
            unix_s: 0.0,
            window_s: 1.0,
            gen_tx: 1,
            gen_rx: 1,
            gen_drops: 0,
            switch_drops: None,
            mpps: 1.0,
            cycles_per_packet: cycles,
            busy_pct: None,
            load1: 0.0,
            steal_pct: 0.0,
            features: "-".into(),
            note: "-".into(),
        }
    }

    #[test]
    fn ratios_pair_slots_of_one_round_and_skip_dropped_ones() {
        let slots = vec![
            slot(0, "a", 0, Status::Ok, 100.0),
            slot(0, "b", 0, Status::Ok, 200.0),
            // Round 1: a's first try dropped, its repeat is kept.
            slot(1, "a", 0, Status::Dropped, 10.0),
            slot(1, "a", 1, Status::Ok, 150.0),
            slot(1, "b", 0, Status::Ok, 100.0),
            // Round 2: b failed: no pair, no ratio.
            slot(2, "a", 0, Status::Ok, 100.0),
            slot(2, "b", 0, Status::Error, 0.0),
        ];
        let cell = Cell::of(&slots[0]);
        assert_eq!(round_ratios(&slots, &cell, "a", "b"), vec![0.5, 1.5]);
        assert_eq!(kept_slots(&slots, &cell, "a").len(), 3);
        let other = Cell { pods: 16, ..cell };
        assert!(round_ratios(&slots, &other, "a", "b").is_empty());
    }
}
