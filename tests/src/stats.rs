//! Parsers for dpdk-testpmd 22.11 text output.
//!
//! The port statistics block, printed by `show port stats all` (interactive) and by
//! `--stats-period N` (non-interactive, each round preceded by `ESC[2J ESC[1;1H` and a
//! `Port statistics ====` line), looks like this for every port:
//!
//! ```text
//!   ######################## NIC statistics for port 0  ########################
//!   RX-packets: 5368640    RX-missed: 0          RX-bytes:  343592960
//!   RX-errors: 0
//!   RX-nombuf:  0
//!   TX-packets: 5368896    TX-errors: 0          TX-bytes:  343609344
//!
//!   Throughput (since last show)
//!   Rx-pps:            0          Rx-bps:            0
//!   Tx-pps:            0          Tx-bps:            0
//!   ############################################################################
//! ```
//!
//! A block is complete only when its closing `####...` line has been seen; a block cut off by
//! the end of the text (testpmd still writing) is ignored. The "Throughput" numbers are
//! testpmd's own rate since the previous show (0 on the first show), so prefer computing rates
//! from two counter snapshots.

use std::collections::BTreeMap;

/// Counters of one port from one "NIC statistics for port N" block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// DPDK port id.
    pub port: u16,
    /// `RX-packets`.
    pub rx_packets: u64,
    /// `RX-missed` (imissed).
    pub rx_missed: u64,
    /// `RX-bytes`.
    pub rx_bytes: u64,
    /// `RX-errors` (ierrors).
    pub rx_errors: u64,
    /// `RX-nombuf` (mbuf allocation failures).
    pub rx_nombuf: u64,
    /// `TX-packets`.
    pub tx_packets: u64,
    /// `TX-errors` (oerrors; for vhost/virtio-user ports these are drops on a full ring).
    pub tx_errors: u64,
    /// `TX-bytes`.
    pub tx_bytes: u64,
    /// `Rx-pps` as printed by testpmd (rate since the previous show), if present.
    pub rx_pps: Option<u64>,
    /// `Tx-pps` as printed by testpmd (rate since the previous show), if present.
    pub tx_pps: Option<u64>,
}

const HEADER: &str = "NIC statistics for port";

/// Parses every complete port statistics block in `text`, in the order they appear.
pub fn parse_port_stats_blocks(text: &str) -> Vec<PortStats> {
    let mut out = Vec::new();
    let mut current: Option<PortStats> = None;
    for line in text.lines() {
        let line = line.trim_matches(|c: char| c.is_whitespace() || c == '\r');
        if let Some(idx) = line.find(HEADER) {
            // A new header abandons any unfinished block.
            let rest = &line[idx + HEADER.len()..];
            current = rest
                .split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .map(|port| PortStats {
                    port,
                    ..PortStats::default()
                });
            continue;
        }
        let Some(stats) = current.as_mut() else {
            continue;
        };
        if line.starts_with("####") {
            out.push(*stats);
            current = None;
            continue;
        }
        for (key, value) in key_values(line) {
            match key {
                "RX-packets" => stats.rx_packets = value,
                "RX-missed" => stats.rx_missed = value,
                "RX-bytes" => stats.rx_bytes = value,
                "RX-errors" => stats.rx_errors = value,
                "RX-nombuf" => stats.rx_nombuf = value,
                "TX-packets" => stats.tx_packets = value,
                "TX-errors" => stats.tx_errors = value,
                "TX-bytes" => stats.tx_bytes = value,
                "Rx-pps" => stats.rx_pps = Some(value),
                "Tx-pps" => stats.tx_pps = Some(value),
                _ => {}
            }
        }
    }
    out
}

/// The newest complete statistics block of every port found in `text`, keyed by port id.
pub fn latest_port_stats(text: &str) -> BTreeMap<u16, PortStats> {
    parse_port_stats_blocks(text)
        .into_iter()
        .map(|s| (s.port, s))
        .collect()
}

/// Port MAC addresses from the `Port N: AA:BB:CC:DD:EE:FF` lines testpmd prints when it
/// configures a port, keyed by port id, MACs lower-cased.
pub fn parse_port_macs(text: &str) -> BTreeMap<u16, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("Port ") else {
            continue;
        };
        let Some((id, mac)) = rest.split_once(": ") else {
            continue;
        };
        let mac = mac.trim();
        let is_mac = mac.len() == 17
            && mac
                .split(':')
                .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()));
        if let (Ok(id), true) = (id.parse::<u16>(), is_mac) {
            out.insert(id, mac.to_ascii_lowercase());
        }
    }
    out
}

/// `KEY: VALUE` pairs on one line, where VALUE is an unsigned integer.
fn key_values(line: &str) -> impl Iterator<Item = (&str, u64)> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let mut pairs = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if let Some(key) = tokens[i].strip_suffix(':') {
            if let Some(value) = tokens.get(i + 1).and_then(|v| v.parse::<u64>().ok()) {
                pairs.push((key, value));
                i += 2;
                continue;
            }
        }
        i += 1;
    }
    pairs.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from `show port stats all` on an interactive generator (stdbuf -oL), including
    /// the echoed command with its trailing CR.
    const INTERACTIVE: &str = include_str!("testdata/interactive-port-stats.txt");
    /// Recorded from a `--stats-period 1` run: two rounds, the second one cut off mid-block.
    const PERIODIC: &str = include_str!("testdata/stats-period.txt");

    #[test]
    fn parses_interactive_show_port_stats() {
        let blocks = parse_port_stats_blocks(INTERACTIVE);
        assert_eq!(blocks.len(), 2);
        assert_eq!(
            blocks[0],
            PortStats {
                port: 0,
                rx_packets: 5_368_640,
                rx_missed: 0,
                rx_bytes: 343_592_960,
                rx_errors: 0,
                rx_nombuf: 0,
                tx_packets: 5_368_896,
                tx_errors: 0,
                tx_bytes: 343_609_344,
                rx_pps: Some(0),
                tx_pps: Some(0),
            }
        );
        assert_eq!(blocks[1].port, 1);
        assert_eq!(blocks[1].rx_packets, 5_368_896);
        assert_eq!(blocks[1].tx_packets, 5_368_672);
    }

    #[test]
    fn periodic_output_keeps_latest_complete_block_per_port() {
        let latest = latest_port_stats(PERIODIC);
        assert_eq!(latest.len(), 2);
        // Port 0 comes from the second round, port 1's second block is incomplete.
        assert_eq!(latest[&0].rx_packets, 14_208_416);
        assert_eq!(latest[&0].rx_pps, Some(7_084_669));
        assert_eq!(latest[&1].rx_packets, 37_568);
        assert_eq!(latest[&1].tx_bytes, 2_406_400);
    }

    #[test]
    fn incomplete_block_is_ignored() {
        let text = "  ######################## NIC statistics for port 3  ########################\n  RX-packets: 12 RX-missed: 0 RX-bytes: 768\n";
        assert!(parse_port_stats_blocks(text).is_empty());
    }

    #[test]
    fn parses_port_macs() {
        let text = "Configuring Port 0 (socket 0)\nPort 0: 56:48:4F:53:54:00\nPort 1: 02:00:00:00:00:02\nPort 0 is closed\n";
        let macs = parse_port_macs(text);
        assert_eq!(macs.len(), 2);
        assert_eq!(macs[&0], "56:48:4f:53:54:00");
        assert_eq!(macs[&1], "02:00:00:00:00:02");
    }
}
