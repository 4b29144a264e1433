//! The loopback harness's rounds file: one tab-separated line per slot, appended (and
//! flushed) as soon as the slot ends, so an error or a kill later in the run loses nothing;
//! `loopback --from FILE` turns any such file back into the report.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context, Result};

/// Column names, the file's first non-comment line.
pub const HEADER: &str = "round\ttransport\tworkload\tpods\tsize\tswitch\torder\tattempt\tstatus\tunix_s\twindow_s\tgen_tx\tgen_rx\tgen_drops\tswitch_drops\tmpps\tcycles_per_packet\tbusy_pct\tload1\tsteal_pct\tfeatures\tnote";

/// How a slot ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Measured with no drop anywhere in the window: used in the table.
    Ok,
    /// Measured, but the generator or the switch dropped frames in the window: repeated,
    /// and left out of the table.
    Dropped,
    /// The slot failed (the note says why): left out of the table.
    Error,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Dropped => "dropped",
            Status::Error => "error",
        })
    }
}

impl FromStr for Status {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Status> {
        Ok(match s {
            "ok" => Status::Ok,
            "dropped" => Status::Dropped,
            "error" => Status::Error,
            _ => bail!("status {s:?}: ok, dropped or error"),
        })
    }
}

/// One switch's slot in one round.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub round: usize,
    /// `vhost` or `memif`.
    pub transport: String,
    /// `best` (static FDB hits, access to access) or `trunk` (access to trunk and back).
    pub workload: String,
    pub pods: usize,
    pub size: u32,
    /// The switch's key (`heddle-native`, `ovs-vhost`, ...).
    pub switch: String,
    /// Position in the round's order (rotated every round).
    pub order: usize,
    /// 0 for the first try of this slot, then 1, 2 after drops.
    pub attempt: usize,
    pub status: Status,
    /// Wall-clock start of the window (Unix seconds).
    pub unix_s: f64,
    /// Window length in seconds, between the two generator reads.
    pub window_s: f64,
    /// Frames the generators sent and received in the window.
    pub gen_tx: u64,
    pub gen_rx: u64,
    /// Frames the generators dropped in the window (RX missed, TX refused).
    pub gen_drops: u64,
    /// Frames the switch counted as dropped in the window, if it counts them.
    pub switch_drops: Option<u64>,
    /// Frames forwarded back to the generators per second, millions.
    pub mpps: f64,
    /// TSC Hz x window / frames forwarded: the switch core's cost, the same for every switch.
    pub cycles_per_packet: f64,
    /// Share of the switch core's cycles spent on packets, where the switch says.
    pub busy_pct: Option<f64>,
    /// 1-minute load average at the end of the window.
    pub load1: f64,
    /// Steal time over the window, percent of all CPU time (`/proc/stat`).
    pub steal_pct: f64,
    /// The virtio features the generator's ports negotiated with the switch (hex), `-` for memif.
    pub features: String,
    /// Free text: the error of a failed slot.
    pub note: String,
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

impl Slot {
    /// The slot as one line of the rounds file (no newline).
    pub fn line(&self) -> String {
        let clean = |s: &str| {
            let s = s.replace(['\t', '\n', '\r'], " ");
            if s.is_empty() {
                "-".to_owned()
            } else {
                s
            }
        };
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.3}\t{:.4}\t{}\t{}\t{}\t{}\t{:.4}\t{:.2}\t{}\t{:.2}\t{:.2}\t{}\t{}",
            self.round,
            self.transport,
            self.workload,
            self.pods,
            self.size,
            self.switch,
            self.order,
            self.attempt,
            self.status,
            self.unix_s,
            self.window_s,
            self.gen_tx,
            self.gen_rx,
            self.gen_drops,
            opt(&self.switch_drops),
            self.mpps,
            self.cycles_per_packet,
            opt(&self.busy_pct.map(|b| format!("{b:.1}"))),
            self.load1,
            self.steal_pct,
            clean(&self.features),
            clean(&self.note),
        )
    }

    /// Parses [`Slot::line`]'s output.
    pub fn parse(line: &str) -> Result<Slot> {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != HEADER.split('\t').count() {
            bail!(
                "{} columns, expected {} ({HEADER:?})",
                f.len(),
                HEADER.split('\t').count()
            );
        }
        fn num<T: FromStr>(f: &[&str], i: usize) -> Result<T>
        where
            T::Err: std::error::Error + Send + Sync + 'static,
        {
            let name = HEADER.split('\t').nth(i).unwrap_or("?");
            f[i].parse()
                .with_context(|| format!("column {name}: {:?}", f[i]))
        }
        fn maybe<T: FromStr>(f: &[&str], i: usize) -> Result<Option<T>>
        where
            T::Err: std::error::Error + Send + Sync + 'static,
        {
            if f[i] == "-" {
                Ok(None)
            } else {
                num(f, i).map(Some)
            }
        }
        Ok(Slot {
            round: num(&f, 0)?,
            transport: f[1].to_owned(),
            workload: f[2].to_owned(),
            pods: num(&f, 3)?,
            size: num(&f, 4)?,
            switch: f[5].to_owned(),
            order: num(&f, 6)?,
            attempt: num(&f, 7)?,
            status: f[8].parse()?,
            unix_s: num(&f, 9)?,
            window_s: num(&f, 10)?,
            gen_tx: num(&f, 11)?,
            gen_rx: num(&f, 12)?,
            gen_drops: num(&f, 13)?,
            switch_drops: maybe(&f, 14)?,
            mpps: num(&f, 15)?,
            cycles_per_packet: num(&f, 16)?,
            busy_pct: maybe(&f, 17)?,
            load1: num(&f, 18)?,
            steal_pct: num(&f, 19)?,
            features: f[20].to_owned(),
            note: f[21].to_owned(),
        })
    }
}

/// Every slot of a rounds file (comments and the header skipped); a bad line is an error
/// naming its number.
pub fn parse_file(text: &str) -> Result<Vec<Slot>> {
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.starts_with('#') || l.trim().is_empty() || l == HEADER {
            continue;
        }
        out.push(Slot::parse(l).with_context(|| format!("line {}", i + 1))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> Slot {
        Slot {
            round: 3,
            transport: "vhost".into(),
            workload: "trunk".into(),
            pods: 16,
            size: 64,
            switch: "heddle-native".into(),
            order: 2,
            attempt: 1,
            status: Status::Dropped,
            unix_s: 1_765_000_000.25,
            window_s: 1.0012,
            gen_tx: 12_000_000,
            gen_rx: 11_999_990,
            gen_drops: 0,
            switch_drops: Some(10),
            mpps: 11.9877,
            cycles_per_packet: 200.5,
            busy_pct: Some(99.9),
            load1: 2.5,
            steal_pct: 0.25,
            features: "0x150208000".into(),
            note: String::new(),
        }
    }

    #[test]
    fn a_line_parses_back_to_the_slot() {
        let s = slot();
        let back = Slot::parse(&s.line()).unwrap();
        assert_eq!(back.note, "-");
        assert_eq!(
            Slot {
                note: String::new(),
                ..back
            },
            s
        );
        let none = Slot {
            switch_drops: None,
            busy_pct: None,
            status: Status::Error,
            note: "gen\tfailed\nbadly".into(),
            ..slot()
        };
        let back = Slot::parse(&none.line()).unwrap();
        assert_eq!(back.switch_drops, None);
        assert_eq!(back.busy_pct, None);
        assert_eq!(back.note, "gen failed badly");
    }

    #[test]
    fn a_file_skips_comments_and_header_and_names_a_bad_line() {
        let text = format!("# run\n{HEADER}\n{}\n", slot().line());
        assert_eq!(parse_file(&text).unwrap().len(), 1);
        let bad = format!("{text}1\tvhost\n");
        let e = format!("{:#}", parse_file(&bad).unwrap_err());
        assert!(e.contains("line 4"), "{e}");
    }
}
