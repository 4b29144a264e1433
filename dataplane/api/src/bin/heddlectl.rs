//! `heddlectl`: read and change a running heddle-switch through its control socket.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use heddle_api::{parse_mac, Client, PortMode, PortSpec, StatsReply, VlanRange, DEFAULT_SOCKET};

#[derive(Parser)]
#[command(
    name = "heddlectl",
    version,
    about = "Inspect and drive a heddle-switch node daemon"
)]
struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET, env = "HEDDLE_SOCKET")]
    socket: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List ports.
    Ports,
    /// Add a port (idempotent for the same spec).
    AddPort {
        /// Port name.
        name: String,
        /// DPDK devargs, e.g. net_vhost0,iface=/run/heddle/a.sock
        #[arg(long)]
        devargs: String,
        /// Access port on this VLAN.
        #[arg(long, conflicts_with = "trunk")]
        vlan: Option<u16>,
        /// Trunk port carrying these VLANs, e.g. 100,200-210.
        #[arg(long, value_delimiter = ',')]
        trunk: Vec<String>,
        /// Native (untagged) VLAN of a trunk.
        #[arg(long, requires = "trunk")]
        native_vlan: Option<u16>,
        /// MAC of the device behind the port (static FDB entry).
        #[arg(long)]
        mac: Option<String>,
        /// RX queues.
        #[arg(long)]
        queues: Option<u16>,
        /// MTU: largest frame without its Ethernet header and VLAN tag (default 1500, at
        /// most 9216).
        #[arg(long)]
        mtu: Option<u16>,
    },
    /// Replace the VLANs a trunk port carries.
    SetTrunk {
        /// Port name.
        name: String,
        /// VLANs, e.g. 100,200-210.
        #[arg(long, value_delimiter = ',', required = true)]
        vlans: Vec<String>,
        /// Native (untagged) VLAN.
        #[arg(long)]
        native_vlan: Option<u16>,
    },
    /// Remove a port (succeeds when it is already gone).
    DelPort {
        /// Port name.
        name: String,
    },
    /// Port counters, drops by reason, and PMD worker cycles.
    Stats {
        /// Repeat every N seconds, with rates.
        #[arg(long)]
        watch: Option<u64>,
        /// Stop watching after this many rounds.
        #[arg(long)]
        count: Option<u64>,
    },
    /// PMD worker accounting (like ovs-appctl dpif-netdev/pmd-stats-show).
    PmdStats,
    /// The forwarding database.
    Fdb,
    /// Hugepage pools and mounts as the daemon sees them.
    Hugepages,
    /// Is the daemon ready?
    Health,
    /// Prometheus metrics text.
    Metrics,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heddlectl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("API types serialise")
    );
}

fn vlan_list(items: &[String]) -> Result<Vec<VlanRange>, String> {
    items
        .iter()
        .map(|s| serde_json::from_value::<VlanRange>(serde_json::Value::String(s.clone())))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("VLAN list: {e}"))
}

fn run(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::new(&cli.socket);
    match &cli.cmd {
        Cmd::Ports => {
            let ports = client.ports()?;
            if cli.json {
                print_json(&ports);
            } else {
                println!(
                    "{:<20} {:>5} {:>5} {:<12} {:<16} {:<18} {:<5} DEVARGS",
                    "NAME", "INDEX", "DPDK", "DRIVER", "VLANS", "MAC", "LINK"
                );
                for p in ports {
                    println!(
                        "{:<20} {:>5} {:>5} {:<12} {:<16} {:<18} {:<5} {}",
                        p.spec.name,
                        p.index,
                        p.dpdk_port
                            .map_or_else(|| "-".to_owned(), |d| d.to_string()),
                        p.driver,
                        mode_text(&p.spec.mode),
                        p.spec.mac.as_deref().unwrap_or("-"),
                        if p.link_up { "up" } else { "down" },
                        p.spec.devargs
                    );
                }
            }
        }
        Cmd::AddPort {
            name,
            devargs,
            vlan,
            trunk,
            native_vlan,
            mac,
            queues,
            mtu,
        } => {
            let mode = match vlan {
                Some(vlan) => PortMode::Access { vlan: *vlan },
                None if !trunk.is_empty() => PortMode::Trunk {
                    vlans: vlan_list(trunk)?,
                    native_vlan: *native_vlan,
                },
                None => {
                    return Err("give --vlan N (access port) or --trunk LIST (trunk port)".into())
                }
            };
            if let Some(m) = mac {
                parse_mac(m)
                    .ok_or_else(|| format!("--mac {m:?} is not a MAC like 02:00:00:00:00:01"))?;
            }
            let spec = PortSpec {
                name: name.clone(),
                devargs: devargs.clone(),
                mode,
                mac: mac.clone(),
                queues: *queues,
                mtu: *mtu,
            };
            let st = client.add_port(&spec)?;
            if cli.json {
                print_json(&st);
            } else {
                println!(
                    "port {} ready (index {}, {})",
                    st.spec.name,
                    st.index,
                    match st.dpdk_port {
                        Some(d) => format!("dpdk port {d}, {}", st.driver),
                        None => st.driver.clone(),
                    }
                );
            }
        }
        Cmd::SetTrunk {
            name,
            vlans,
            native_vlan,
        } => {
            let body = heddle_api::TrunkVlans {
                vlans: vlan_list(vlans)?,
                native_vlan: *native_vlan,
            };
            let st = client.set_trunk_vlans(name, &body)?;
            if cli.json {
                print_json(&st);
            } else {
                println!("port {} now {}", st.spec.name, mode_text(&st.spec.mode));
            }
        }
        Cmd::DelPort { name } => {
            let r = client.remove_port(name)?;
            if cli.json {
                print_json(&r);
            } else if r.removed {
                println!("port {name} removed");
            } else {
                println!("port {name} was not there");
            }
        }
        Cmd::Stats { watch, count } => match watch {
            None => {
                let s = client.stats()?;
                if cli.json {
                    print_json(&s);
                } else {
                    print_stats(&s, None);
                    println!();
                    print_pmd(&s);
                }
            }
            Some(secs) => {
                let period = Duration::from_secs((*secs).max(1));
                let mut prev: Option<(StatsReply, Instant)> = None;
                let mut round = 0;
                loop {
                    let s = client.stats()?;
                    let now = Instant::now();
                    if cli.json {
                        println!("{}", serde_json::to_string(&s)?);
                    } else {
                        println!("--- {} ---", round + 1);
                        print_stats(
                            &s,
                            prev.as_ref()
                                .map(|(p, t)| (p, now.duration_since(*t).as_secs_f64())),
                        );
                        print_pmd(&s);
                    }
                    prev = Some((s, now));
                    round += 1;
                    if count.is_some_and(|c| round >= c) {
                        break;
                    }
                    std::thread::sleep(period);
                }
            }
        },
        Cmd::PmdStats => {
            let s = client.stats()?;
            if cli.json {
                print_json(&s.pmd);
            } else {
                print_pmd(&s);
            }
        }
        Cmd::Fdb => {
            let f = client.fdb()?;
            if cli.json {
                print_json(&f);
            } else {
                println!(
                    "{:>5} {:<18} {:<20} {:<8} {:>4}",
                    "VLAN", "MAC", "PORT", "TYPE", "AGE"
                );
                for e in f {
                    println!(
                        "{:>5} {:<18} {:<20} {:<8} {:>4}",
                        e.vlan,
                        e.mac,
                        e.port,
                        if e.is_static { "static" } else { "learned" },
                        e.age_seconds
                    );
                }
            }
        }
        Cmd::Hugepages => {
            let inv = client.hugepages()?;
            if cli.json {
                print_json(&inv);
            } else {
                println!(
                    "{:<10} {:<6} {:>8} {:>8} {:>9} {:>8}",
                    "PAGE", "NUMA", "TOTAL", "FREE", "RESERVED", "SURPLUS"
                );
                for p in &inv.pools {
                    println!(
                        "{:<10} {:<6} {:>8} {:>8} {:>9} {:>8}",
                        size_text(p.page_size_kb),
                        p.numa_node.map_or("-".to_string(), |n| n.to_string()),
                        p.total,
                        p.free,
                        p.reserved,
                        p.surplus
                    );
                }
                for m in &inv.mounts {
                    println!(
                        "hugetlbfs {} ({} pages)",
                        m.path.display(),
                        size_text(m.page_size_kb)
                    );
                }
                if inv.mounts.is_empty() {
                    println!("no hugetlbfs mount");
                }
            }
        }
        Cmd::Health => {
            let h = client.health()?;
            if cli.json {
                print_json(&h);
            } else {
                println!(
                    "ready={} version={} workers={} ports={}/{}",
                    h.ready, h.version, h.workers, h.ports, h.max_ports
                );
            }
        }
        Cmd::Metrics => print!("{}", client.metrics()?),
    }
    Ok(())
}

fn size_text(kb: u64) -> String {
    if kb >= 1024 * 1024 {
        format!("{}G", kb / (1024 * 1024))
    } else if kb >= 1024 {
        format!("{}M", kb / 1024)
    } else {
        format!("{kb}k")
    }
}

fn mode_text(m: &PortMode) -> String {
    match m {
        PortMode::Access { vlan } => format!("access {vlan}"),
        PortMode::Trunk { vlans, native_vlan } => {
            let list: Vec<String> = vlans
                .iter()
                .map(|r| match r.bounds() {
                    (a, b) if a == b => a.to_string(),
                    (a, b) => format!("{a}-{b}"),
                })
                .collect();
            match native_vlan {
                Some(n) => format!("trunk {} n{n}", list.join(",")),
                None => format!("trunk {}", list.join(",")),
            }
        }
    }
}

fn print_stats(s: &StatsReply, prev: Option<(&StatsReply, f64)>) {
    println!(
        "{:<20} {:>14} {:>14} {:>12} {:>12} {:>10} {:>10}  DROPS",
        "PORT", "RX-PKTS", "TX-PKTS", "RX-PPS", "TX-PPS", "RX-MISSED", "TX-ERR"
    );
    for p in &s.ports {
        let (rx_pps, tx_pps) = match prev
            .and_then(|(ps, dt)| ps.ports.iter().find(|q| q.name == p.name).map(|q| (q, dt)))
        {
            Some((q, dt)) if dt > 0.0 => (
                format!(
                    "{:.0}",
                    p.rx_packets.saturating_sub(q.rx_packets) as f64 / dt
                ),
                format!(
                    "{:.0}",
                    p.tx_packets.saturating_sub(q.tx_packets) as f64 / dt
                ),
            ),
            _ => ("-".into(), "-".into()),
        };
        let drops: Vec<String> = p
            .drops
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "{:<20} {:>14} {:>14} {:>12} {:>12} {:>10} {:>10}  {}",
            p.name,
            p.rx_packets,
            p.tx_packets,
            rx_pps,
            tx_pps,
            p.device.imissed,
            p.device.oerrors,
            if drops.is_empty() {
                "-".to_string()
            } else {
                drops.join(" ")
            }
        );
    }
    let t = &s.totals;
    let rate = match prev {
        Some((ps, dt)) if dt > 0.0 => {
            let pkts = t.tx_packets.saturating_sub(ps.totals.tx_packets) as f64 / dt;
            let bytes = t.tx_bytes.saturating_sub(ps.totals.tx_bytes) as f64 / dt;
            format!(
                ", now {:.2} Mpps / {:.2} Gbit/s of frames",
                pkts / 1e6,
                bytes * 8.0 / 1e9
            )
        }
        _ => String::new(),
    };
    println!(
        "switch: sent {} frames ({} bytes){rate}; received {}, flood copies {}, dropped {}",
        t.tx_packets,
        t.tx_bytes,
        t.rx_packets,
        t.flood_copies,
        t.dropped()
    );
    let r = &s.resources;
    println!(
        "process: mbufs {} of {} in use, {} fds, {} threads, RSS {} MiB, hugepages mapped {} MiB",
        r.mbufs_in_use,
        r.mbufs_total,
        r.open_fds,
        r.threads,
        r.rss_bytes >> 20,
        r.hugepage_bytes >> 20
    );
    println!(
        "fdb: {} entries of {}, learned {}, moves {}, full {}, aged {}",
        s.fdb.entries, s.fdb.capacity, s.fdb.learned, s.fdb.moves, s.fdb.full, s.fdb.aged
    );
    for p in &s.ports {
        if let Some(m) = &p.memif {
            println!(
                "{}: memif {}, {} of {} queue pair(s), connects {}, protocol errors {}, bad descriptors {}, broken rings {}, no peer buffers {}",
                p.name,
                if m.connected { "connected" } else { "waiting for its peer" },
                m.queue_pairs,
                m.queue_pairs_offered,
                m.connects,
                m.protocol_errors,
                m.bad_descs,
                m.broken_rings,
                m.no_peer_buffers
            );
        }
        if let Some(v) = &p.vhost {
            if v.queue_pair_mismatches > 0 {
                println!(
                    "{}: the frontend wanted more queue pairs than the {} offered {} time(s): see the switch log for the fix",
                    p.name, v.queue_pairs_offered, v.queue_pair_mismatches
                );
            }
        }
    }
    if !s.removing.is_empty() {
        println!(
            "removing (waiting for a stalled PMD worker): {}",
            s.removing.join(", ")
        );
    }
}

fn print_pmd(s: &StatsReply) {
    let c = &s.cores;
    if !c.source.is_empty() {
        let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        println!(
            "PMD cores {} ({}; affinity mask {}), control core {}",
            list(&c.pmd_cpus),
            match c.source.as_str() {
                "list" => "as listed in cores.pmd",
                "count" => "count from the affinity mask",
                _ => "auto: all of the affinity mask",
            },
            list(&c.usable_cpus),
            c.control_cpu
        );
    }
    for w in &s.pmd {
        println!(
            "pmd thread worker {} lcore {} cpu {}:",
            w.worker, w.lcore, w.cpu
        );
        println!("  packets received: {}", w.packets);
        println!(
            "  iterations: {} ({} idle)",
            w.iterations, w.idle_iterations
        );
        let total = (w.busy_cycles + w.idle_cycles).max(1) as f64;
        println!(
            "  idle cycles: {} ({:.2}%)",
            w.idle_cycles,
            w.idle_cycles as f64 * 100.0 / total
        );
        println!(
            "  processing cycles: {} ({:.2}%)",
            w.busy_cycles, w.busy_percent
        );
        println!(
            "  avg processing cycles per packet: {:.2}",
            w.cycles_per_packet
        );
        println!("  avg packets per burst: {:.2}", w.packets_per_burst);
        if w.stalls > 0 {
            println!("  stalls (waits over 1 s for a burst to end): {}", w.stalls);
        }
    }
}
