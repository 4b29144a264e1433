//! heddle-cni ADD/DEL latency against the reference `bridge` plugin (with host-local IPAM),
//! on the same machine in one run, interleaved call by call: p50 and p99 over N runs.
//!
//! `benches/cni-latency.sh [runs]` builds release binaries and runs this. A timing figure,
//! not a test: the suite checks behaviour, this measures.

use std::time::Duration;

use anyhow::{ensure, Result};
use clap::Parser;
use heddle_tests::cni::{percentile_ms, require_reference_plugin, CniPlugin};
use heddle_tests::{require_dpdk_peers, require_root, Netns, SwitchProcess};
use serde_json::json;

/// heddle-cni ADD/DEL latency against the reference `bridge` plugin (host-local IPAM),
/// interleaved call by call; prints p50 and p99 per call. Needs root, DPDK peers and the
/// reference plugins.
#[derive(Parser, Debug)]
#[command(name = "benches/cni-latency.sh", version)]
struct Args {
    /// ADD/DEL pairs per plugin.
    #[arg(default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

fn main() -> Result<()> {
    let runs = Args::parse().runs as usize;
    require_root()?;
    require_dpdk_peers(300)?;
    require_reference_plugin("bridge")?;
    require_reference_plugin("host-local")?;
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start_with_ports(dir.path(), "  []")?;
    let heddle = CniPlugin::heddle()?;
    let bridge = CniPlugin::reference("bridge")?;
    let ns = Netns::unique("cni-lat")?;
    let nsp = ns.path().display().to_string();
    let hc = json!({
        "cniVersion": "1.1.0", "name": "n3", "type": "heddle-cni", "kind": "vhost-user", "vlan": 400,
        "socketDir": dir.path().join("pods"), "stateDir": dir.path().join("cni-state"),
        "switchSocket": switch.socket(),
    });
    let br_name = heddle_tests::unique_name("hdbr", 15);
    let bc = json!({
        "cniVersion": "1.0.0", "name": "latency-bridge", "type": "bridge", "bridge": br_name,
        "ipam": {"type": "host-local", "subnet": "10.79.0.0/16", "dataDir": dir.path().join("ipam")}
    });
    let mut samples: [Vec<Duration>; 4] = Default::default();
    for i in 0..runs {
        let id = format!("lat-{i}");
        for (k, (plugin, ifname, conf, cmd)) in [
            (&heddle, "net1", &hc, "ADD"),
            (&heddle, "net1", &hc, "DEL"),
            (&bridge, "eth0", &bc, "ADD"),
            (&bridge, "eth0", &bc, "DEL"),
        ]
        .into_iter()
        .enumerate()
        {
            let r = plugin.call(cmd, &id, ifname, &nsp, conf)?;
            ensure!(r.ok, "{cmd} {id}: {r:?}");
            samples[k].push(r.elapsed);
        }
    }
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &br_name])
        .status();
    println!("| call ({runs} runs, interleaved) | p50 ms | p99 ms |\n|---|---|---|");
    for (name, s) in [
        "heddle-cni vhost-user ADD",
        "heddle-cni vhost-user DEL",
        "bridge + host-local ADD",
        "bridge + host-local DEL",
    ]
    .iter()
    .zip(&samples)
    {
        println!(
            "| {name} | {:.2} | {:.2} |",
            percentile_ms(s, 50.0),
            percentile_ms(s, 99.0)
        );
    }
    println!(
        "\nADD p50 ratio heddle-cni / bridge: {:.2}",
        percentile_ms(&samples[0], 50.0) / percentile_ms(&samples[2], 50.0)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_default_to_200_and_zero_is_refused() {
        assert_eq!(Args::try_parse_from(["cni_latency"]).unwrap().runs, 200);
        assert_eq!(
            Args::try_parse_from(["cni_latency", "50"]).unwrap().runs,
            50
        );
        assert!(Args::try_parse_from(["cni_latency", "0"]).is_err());
        let e = Args::try_parse_from(["cni_latency", "--help"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
    }
}
