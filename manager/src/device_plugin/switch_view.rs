//! What the device plugin knows of the node's switch: is it up, is it full, and on which NUMA
//! nodes its PMD cores sit. Polled over the switch's control API about once a second
//! ([`poll`]); a vhost-user or memif device is healthy only while the switch can take another
//! port ([`SwitchView::takes_ports`]).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use heddle_api::Client;
use tokio::sync::watch;

/// The switch as last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwitchView {
    /// The control API answered and the daemon said it is ready.
    pub up: bool,
    /// Ports the switch holds.
    pub ports: u32,
    /// The most it holds (0: the daemon does not say).
    pub max_ports: u32,
    /// PMD workers.
    pub workers: u32,
    /// NUMA nodes of the PMD workers' CPUs (empty while unknown).
    pub pmd_numa_nodes: BTreeSet<i64>,
    /// Why the switch cannot take ports, when it cannot (for logs).
    pub reason: Option<String>,
}

impl SwitchView {
    /// True when the port limit is reached.
    pub fn full(&self) -> bool {
        self.max_ports > 0 && self.ports >= self.max_ports
    }

    /// True when the switch is up and can take another port: the rule for a vhost-user or
    /// memif device to be healthy.
    pub fn takes_ports(&self) -> bool {
        self.up && !self.full()
    }
}

/// The NUMA node of `cpu`, from the `node<M>` entry of `<sys>/devices/system/cpu/cpu<N>/`.
pub fn cpu_numa_node(sys: &Path, cpu: u32) -> Option<i64> {
    let dir = sys.join(format!("devices/system/cpu/cpu{cpu}"));
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        e.file_name()
            .to_str()?
            .strip_prefix("node")?
            .parse::<i64>()
            .ok()
    })
}

/// The NUMA nodes of `cpus` (CPUs sysfs does not place are left out).
pub fn numa_nodes(sys: &Path, cpus: impl IntoIterator<Item = u32>) -> BTreeSet<i64> {
    cpus.into_iter()
        .filter_map(|c| cpu_numa_node(sys, c))
        .collect()
}

/// Reads the switch once (blocking). `previous` supplies the PMD NUMA nodes when the
/// switch's worker count did not change, so the PMD stats are read only when it comes up or
/// its workers change.
pub fn read(client: &Client, sys: &Path, previous: &SwitchView) -> SwitchView {
    let health = match client.health() {
        Ok(h) => h,
        Err(e) => {
            return SwitchView {
                reason: Some(format!("the switch does not answer: {e}")),
                ..SwitchView::default()
            }
        }
    };
    let mut view = SwitchView {
        up: health.ready,
        ports: health.ports,
        max_ports: health.max_ports,
        workers: health.workers,
        pmd_numa_nodes: BTreeSet::new(),
        reason: None,
    };
    if previous.up && previous.workers == view.workers && !previous.pmd_numa_nodes.is_empty() {
        view.pmd_numa_nodes = previous.pmd_numa_nodes.clone();
    } else if let Ok(stats) = client.stats() {
        view.pmd_numa_nodes = numa_nodes(sys, stats.pmd.iter().map(|p| p.cpu));
    }
    if !view.up {
        view.reason = Some("the switch says it is not ready".into());
    } else if view.full() {
        view.reason = Some(format!(
            "the switch holds {} ports, its max_ports",
            view.ports
        ));
    }
    view
}

/// Polls the switch every `interval` and publishes the view when it changes (and only
/// then). Runs until every receiver is gone.
pub async fn poll(
    client: Client,
    sys: std::path::PathBuf,
    interval: Duration,
    tx: watch::Sender<SwitchView>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if tx.is_closed() {
            return;
        }
        let previous = tx.borrow().clone();
        let (client, sys) = (client.clone(), sys.clone());
        let Ok(view) = tokio::task::spawn_blocking(move || read(&client, &sys, &previous)).await
        else {
            continue;
        };
        tx.send_if_modified(|cur| {
            if *cur == view {
                return false;
            }
            match (&view.reason, view.takes_ports()) {
                (_, true) => tracing::info!(
                    ports = view.ports,
                    max_ports = view.max_ports,
                    numa = ?view.pmd_numa_nodes,
                    "the switch takes ports: devices healthy"
                ),
                (Some(why), false) => tracing::warn!(%why, "devices unhealthy"),
                (None, false) => {}
            }
            *cur = view;
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_numa_nodes_come_from_sysfs_node_links() {
        let sys = tempfile::tempdir().unwrap();
        for (cpu, node) in [(0, 0), (1, 0), (2, 1), (3, 1)] {
            let d = sys.path().join(format!("devices/system/cpu/cpu{cpu}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("online"), "1").unwrap();
            std::fs::create_dir(d.join(format!("node{node}"))).unwrap();
        }
        std::fs::create_dir_all(sys.path().join("devices/system/cpu/cpu4")).unwrap();
        assert_eq!(cpu_numa_node(sys.path(), 2), Some(1));
        assert_eq!(cpu_numa_node(sys.path(), 4), None);
        assert_eq!(cpu_numa_node(sys.path(), 9), None);
        assert_eq!(numa_nodes(sys.path(), [1, 3, 4]), BTreeSet::from([0, 1]));
    }

    #[test]
    fn full_and_down_switches_take_no_ports() {
        let up = SwitchView {
            up: true,
            ports: 3,
            max_ports: 4,
            ..SwitchView::default()
        };
        assert!(up.takes_ports());
        assert!(!SwitchView {
            ports: 4,
            ..up.clone()
        }
        .takes_ports());
        // A daemon that does not report its limit is never "full".
        assert!(SwitchView {
            max_ports: 0,
            ports: 300,
            ..up.clone()
        }
        .takes_ports());
        assert!(!SwitchView::default().takes_ports());
    }

    #[test]
    fn an_absent_switch_reads_as_down_with_the_reason() {
        let v = read(
            &Client::new("/nonexistent/heddle-switch.sock"),
            Path::new("/sys"),
            &SwitchView::default(),
        );
        assert!(!v.up);
        assert!(v.reason.unwrap().contains("does not answer"));
    }
}
