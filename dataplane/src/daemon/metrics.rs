//! Prometheus text exposition of the switch counters.

use std::fmt::Write;

use heddle_api::StatsReply;

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders `stats` in the Prometheus text format (version 0.0.4).
pub fn render(stats: &StatsReply) -> String {
    let mut out = String::new();
    let mut family = |name: &str, help: &str, kind: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    };
    let per_port = |f: &dyn Fn(&heddle_api::PortStats) -> u64| {
        stats
            .ports
            .iter()
            .map(|p| (format!("port=\"{}\"", label(&p.name)), f(p) as f64))
            .collect::<Vec<_>>()
    };
    family(
        "heddle_port_rx_packets_total",
        "Frames received by the switch on the port.",
        "counter",
        per_port(&|p| p.rx_packets),
    );
    family(
        "heddle_port_rx_bytes_total",
        "Bytes received by the switch on the port.",
        "counter",
        per_port(&|p| p.rx_bytes),
    );
    family(
        "heddle_port_tx_packets_total",
        "Frames sent by the switch out of the port.",
        "counter",
        per_port(&|p| p.tx_packets),
    );
    family(
        "heddle_port_tx_bytes_total",
        "Bytes sent by the switch out of the port.",
        "counter",
        per_port(&|p| p.tx_bytes),
    );
    family(
        "heddle_port_rx_missed_total",
        "Frames the device dropped for lack of RX descriptors.",
        "counter",
        per_port(&|p| p.device.imissed),
    );
    let drops = stats
        .ports
        .iter()
        .flat_map(|p| {
            p.drops.iter().map(move |(r, v)| {
                (
                    format!("port=\"{}\",reason=\"{}\"", label(&p.name), r),
                    *v as f64,
                )
            })
        })
        .collect();
    family(
        "heddle_port_drops_total",
        "Frames dropped by the switch, by reason.",
        "counter",
        drops,
    );
    let pmd = |f: &dyn Fn(&heddle_api::PmdStats) -> f64| {
        stats
            .pmd
            .iter()
            .map(|w| (format!("worker=\"{}\",cpu=\"{}\"", w.worker, w.cpu), f(w)))
            .collect::<Vec<_>>()
    };
    family(
        "heddle_pmd_busy_cycles_total",
        "TSC cycles spent in iterations that moved packets.",
        "counter",
        pmd(&|w| w.busy_cycles as f64),
    );
    family(
        "heddle_pmd_idle_cycles_total",
        "TSC cycles spent polling empty queues.",
        "counter",
        pmd(&|w| w.idle_cycles as f64),
    );
    family(
        "heddle_pmd_packets_total",
        "Packets processed by the worker.",
        "counter",
        pmd(&|w| w.packets as f64),
    );
    family(
        "heddle_pmd_cycles_per_packet",
        "Busy cycles per packet since start.",
        "gauge",
        pmd(&|w| w.cycles_per_packet),
    );
    family(
        "heddle_pmd_stalls_total",
        "Times the control plane waited over a second for the worker to finish a burst before freeing what it might hold.",
        "counter",
        pmd(&|w| w.stalls as f64),
    );
    family(
        "heddle_ports_removing",
        "Ports removed from forwarding whose device and memory wait for a stalled PMD worker.",
        "gauge",
        vec![(String::new(), stats.removing.len() as f64)],
    );
    let vhost = |f: &dyn Fn(&heddle_api::VhostStats) -> u64| {
        stats
            .ports
            .iter()
            .filter_map(|p| {
                p.vhost
                    .as_ref()
                    .map(|v| (format!("port=\"{}\"", label(&p.name)), f(v) as f64))
            })
            .collect::<Vec<_>>()
    };
    family(
        "heddle_vhost_connects_total",
        "vhost-user frontend connections made or accepted.",
        "counter",
        vhost(&|v| v.connects),
    );
    family(
        "heddle_vhost_queue_pair_mismatches_total",
        "vhost-user connections the frontend ended because the port offers fewer queue pairs than it wants.",
        "counter",
        vhost(&|v| v.queue_pair_mismatches),
    );
    let c = &stats.cores;
    let mut cores = vec![(
        format!(
            "role=\"control\",cpu=\"{}\",source=\"{}\"",
            c.control_cpu, c.source
        ),
        1.0,
    )];
    cores.extend(c.pmd_cpus.iter().enumerate().map(|(w, cpu)| {
        (
            format!(
                "role=\"pmd\",worker=\"{w}\",cpu=\"{cpu}\",source=\"{}\"",
                c.source
            ),
            1.0,
        )
    }));
    family(
        "heddle_core_info",
        "The CPUs the switch runs on (source: list = cores.pmd as given, count/auto = from the affinity mask).",
        "gauge",
        cores,
    );
    family(
        "heddle_fdb_entries",
        "Entries in the forwarding database.",
        "gauge",
        vec![(String::new(), stats.fdb.entries as f64)],
    );
    family(
        "heddle_fdb_learned_total",
        "MACs learned.",
        "counter",
        vec![(String::new(), stats.fdb.learned as f64)],
    );
    let r = &stats.resources;
    for (name, help, v) in [
        (
            "heddle_mbufs_in_use",
            "Mbufs taken from the switch's pool.",
            r.mbufs_in_use,
        ),
        ("heddle_mbufs", "Mbufs in the switch's pool.", r.mbufs_total),
        (
            "heddle_process_open_fds",
            "Open file descriptors of the switch.",
            r.open_fds,
        ),
        (
            "heddle_process_threads",
            "Threads of the switch.",
            r.threads,
        ),
        (
            "heddle_process_resident_memory_bytes",
            "Resident memory of the switch.",
            r.rss_bytes,
        ),
        (
            "heddle_process_hugepage_bytes",
            "Hugepage memory the switch maps (its pool and vhost-user guest memory).",
            r.hugepage_bytes,
        ),
    ] {
        family(name, help, "gauge", vec![(String::new(), v as f64)]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_escaped_and_one_sample_per_port() {
        let mut s = StatsReply::default();
        s.ports.push(heddle_api::PortStats {
            name: "a\"b".into(),
            rx_packets: 7,
            ..Default::default()
        });
        s.ports[0].drops.insert("tx_full".into(), 3);
        let text = render(&s);
        assert!(
            text.contains("heddle_port_rx_packets_total{port=\"a\\\"b\"} 7"),
            "{text}"
        );
        assert!(text.contains("heddle_port_drops_total{port=\"a\\\"b\",reason=\"tx_full\"} 3"));
        assert!(text.contains("# TYPE heddle_fdb_entries gauge"));
    }
}
