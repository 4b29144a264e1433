//! The control side of the switch: the port table, how ports are created and removed
//! under running workers, and the read-outs (stats, FDB) the API serves.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use heddle_api::{
    parse_mac, FdbEntry, FdbStats, MacText, PmdStats, PortMode as ApiMode, PortOrigin, PortSpec,
    PortStats, PortStatus, StatsReply, TrunkVlans,
};

use super::state::PortStore;
use super::worker::{Dataplane, Shared};
use crate::dpdk::io::{empty_paths, PortPath};
use crate::dpdk::{DpdkError, Eal, EthPort, Mempool, PortInfo, QueueConfig};
use heddle_core::memif::port::{MemifConfig, MemifError, MemifPort};
use heddle_core::switch::config::{
    PortMode, Snapshot, SwitchPort, DEFAULT_MTU, ETH_HLEN, VLAN_HLEN,
};
use heddle_core::switch::counters::PortTotals;
use heddle_core::switch::io::{PortIndex, TxLock, MAX_PORTS};
use heddle_core::switch::vlan::{Vlan, VlanSet};
use heddle_core::vhost::port::{
    clear_stale_socket, VhostConfig, VhostError, VhostPort, MAX_SOCKET_PATH,
};

/// Why a port request was refused. The HTTP layer maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The spec is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The name or device is taken by a different port.
    #[error("{0}")]
    Conflict(String),
    /// DPDK refused the device.
    #[error(transparent)]
    Device(#[from] DpdkError),
    /// A native vhost-user port's devargs were refused, or its socket could not be set up.
    #[error(transparent)]
    Vhost(#[from] VhostError),
    /// A native memif port's devargs were refused, or its socket could not be set up.
    #[error(transparent)]
    Memif(#[from] MemifError),
    /// No port by that name.
    #[error("{0}")]
    NotFound(String),
    /// No room for another port; the sentence says which limit.
    #[error("{0}")]
    Full(String),
    /// Saving the port table failed (the change was rolled back).
    #[error("cannot save the port table: {0}")]
    Store(#[source] std::io::Error),
}

/// What moves a port's packets.
enum Device {
    /// A DPDK ethdev (NIC, VF, `net_vhost`, `net_memif`, `net_af_packet`, ...).
    Eth {
        info: PortInfo,
        queues: QueueConfig,
        tx_lock: Option<Arc<TxLock>>,
        eth: EthPort,
    },
    /// A native vhost-user port (not an ethdev).
    Vhost(VhostPort),
    /// A native memif port (not an ethdev).
    Memif(MemifPort),
}

impl Device {
    fn rx_queues(&self) -> u16 {
        match self {
            Device::Eth { queues, .. } => queues.rx_queues,
            Device::Vhost(v) => v.config().pairs,
            Device::Memif(m) => m.config().pairs,
        }
    }

    fn is_ethdev(&self) -> bool {
        matches!(self, Device::Eth { .. })
    }
}

struct PortEntry {
    spec: PortSpec,
    origin: PortOrigin,
    index: PortIndex,
    /// (worker, rx queue) pairs.
    rx_assign: Vec<(usize, u16)>,
    /// Set once every worker has passed a generation without this port: from then on no
    /// worker can reach its device, and its vhost-user thread stops waiting for them.
    unreachable: Arc<AtomicBool>,
    /// Declared after everything the workers might still use; dropped last.
    device: Device,
}

/// How long a port removal waits for the workers before it returns and leaves the port to
/// the retire list (a worker finishes a burst in microseconds; only a stalled one takes this).
const REMOVE_WAIT: Duration = Duration::from_millis(200);

/// Work that must wait until every worker has passed `generation`: a removed port to close
/// (`entry`), or the FDB entries of port `index` to flush (a trunk whose VLANs changed).
struct Retired {
    generation: u64,
    name: String,
    index: PortIndex,
    entry: Option<PortEntry>,
    last_report: Instant,
}

/// A PMD worker's placement.
#[derive(Debug, Clone, Copy)]
pub struct WorkerPlace {
    /// EAL lcore id.
    pub lcore: u32,
    /// CPU.
    pub cpu: u32,
}

/// The switch as the control plane holds it.
pub struct SwitchCtl {
    shared: Arc<Shared>,
    eal: &'static Eal,
    pool: Arc<Mempool>,
    /// Jumbo buffers: RX of ethdev ports whose frames do not fit `pool`'s.
    jumbo: Arc<Mempool>,
    workers: Vec<WorkerPlace>,
    ports: BTreeMap<String, PortEntry>,
    /// Removed ports (and FDB flushes) a stalled worker may still hold up, oldest first.
    /// Their memory, rings and devices stay until every worker passed; see `reap`.
    retired: Vec<Retired>,
    /// The most ports held at once (config `max_ports`, at most `MAX_PORTS`).
    max_ports: usize,
    /// Persisted ports that failed to come back; kept so they are not lost.
    unrestored: Vec<PortSpec>,
    store: PortStore,
    rings: (u16, u16),
    ageing: u32,
    started: Instant,
    cores: heddle_api::CorePlacement,
    /// Counters of ports removed since start, folded in before their slots were zeroed.
    removed_totals: PortTotals,
}

fn to_vlan(v: u16) -> Result<Vlan, PortError> {
    Vlan::new(v).ok_or_else(|| {
        PortError::Invalid(format!(
            "VLAN {v} is outside 1-4094: pick a VLAN between 1 and 4094"
        ))
    })
}

/// The bridge's view of a port spec's VLAN mode (the spec is validated first).
pub(crate) fn switch_mode(spec: &PortSpec) -> Result<PortMode, PortError> {
    Ok(match &spec.mode {
        ApiMode::Access { vlan } => PortMode::Access {
            vlan: to_vlan(*vlan)?,
        },
        ApiMode::Trunk { vlans, native_vlan } => {
            let mut allowed = VlanSet::new();
            for r in vlans {
                let (a, b) = r.bounds();
                for v in a..=b {
                    allowed.insert(to_vlan(v)?);
                }
            }
            let native = native_vlan.map(to_vlan).transpose()?;
            if let Some(n) = native {
                allowed.insert(n);
            }
            PortMode::Trunk { allowed, native }
        }
    })
}

/// A `net_vhost` server socket left behind by a switch that was killed makes DPDK's bind
/// fail. Removes it when nothing listens on it; refuses when something does.
fn clear_stale_vhost_socket(devargs: &str) -> Result<(), PortError> {
    let mut parts = devargs.split(',');
    let device = parts.next().unwrap_or_default();
    if !device.starts_with("net_vhost") && !device.starts_with("eth_vhost") {
        return Ok(());
    }
    let mut iface = None;
    let mut client = false;
    for kv in parts {
        match kv.split_once('=') {
            Some(("iface", v)) => iface = Some(std::path::PathBuf::from(v)),
            Some(("client", v)) => client = v.trim() == "1",
            _ => {}
        }
    }
    let Some(path) = iface.filter(|_| !client) else {
        return Ok(());
    };
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(PortError::Invalid(format!(
            "vhost-user socket path {:?} is {} bytes, over the {MAX_SOCKET_PATH}-byte limit of a Unix socket path: use a shorter directory",
            path,
            path.as_os_str().len()
        )));
    }
    Ok(clear_stale_socket(&path)?)
}

fn memif_stats(m: &MemifPort) -> heddle_api::MemifStats {
    let r = &m.rings().counters;
    let l = m.link();
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    heddle_api::MemifStats {
        connected: m.is_up(),
        queue_pairs: m.rings().pairs_in_use.load(Ordering::Relaxed),
        queue_pairs_offered: m.config().pairs,
        connects: get(&l.connects),
        disconnects: get(&l.disconnects),
        protocol_errors: get(&l.protocol_errors),
        busy_refusals: get(&l.busy_refusals),
        bad_descs: get(&r.bad_descs),
        oversize: get(&r.oversize),
        no_mbufs: get(&r.no_mbufs),
        no_peer_buffers: get(&r.no_peer_buffers),
        broken_rings: get(&r.broken_rings),
    }
}

fn vhost_stats(v: &VhostPort) -> heddle_api::VhostStats {
    let r = &v.rings().counters;
    let l = v.link();
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    heddle_api::VhostStats {
        connected: l.connected.load(Ordering::Relaxed),
        queue_pairs: v.rings().pairs_in_use.load(Ordering::Relaxed),
        queue_pairs_offered: v.config().pairs,
        connects: get(&l.connects),
        disconnects: get(&l.disconnects),
        protocol_errors: get(&l.protocol_errors),
        bad_chains: get(&r.bad_chains),
        oversize: get(&r.oversize),
        no_mbufs: get(&r.no_mbufs),
        no_guest_buffers: get(&r.no_guest_buffers),
        interrupts: get(&r.interrupts),
        broken_rings: get(&r.broken_rings),
        queue_pair_mismatches: get(&l.queue_pair_mismatches),
        packed: v.rings().packed.load(Ordering::Relaxed),
        frontend_mtu: l.frontend_mtu.load(Ordering::Relaxed),
    }
}

impl SwitchCtl {
    /// A switch with no ports, whose workers are not yet launched. `pools` are the main
    /// mbuf pool and the jumbo pool (frames above 2 KiB).
    pub fn new(
        shared: Arc<Shared>,
        eal: &'static Eal,
        (pool, jumbo): (Arc<Mempool>, Arc<Mempool>),
        workers: Vec<WorkerPlace>,
        store: PortStore,
        rings: (u16, u16),
        ageing: u32,
    ) -> SwitchCtl {
        SwitchCtl {
            shared,
            eal,
            pool,
            jumbo,
            workers,
            ports: BTreeMap::new(),
            retired: Vec::new(),
            max_ports: MAX_PORTS,
            unrestored: Vec::new(),
            store,
            rings,
            ageing,
            started: Instant::now(),
            cores: heddle_api::CorePlacement::default(),
            removed_totals: PortTotals::default(),
        }
    }

    /// Records where the threads run and how the PMD CPUs were chosen (reported in stats).
    pub fn set_cores(&mut self, cores: heddle_api::CorePlacement) {
        self.cores = cores;
    }

    /// The empty configuration workers start from.
    pub fn empty_dataplane(workers: usize) -> Dataplane {
        Dataplane {
            switch: Snapshot::build(std::iter::empty()),
            paths: (0..workers).map(|_| Arc::new(empty_paths())).collect(),
            rx: vec![Vec::new(); workers],
        }
    }

    /// Shared state (for the worker launcher).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Number of ports.
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// Sets the most ports held at once (clamped to 1..=`MAX_PORTS`).
    pub fn set_max_ports(&mut self, max: usize) {
        self.max_ports = max.clamp(1, MAX_PORTS);
    }

    /// The most ports held at once.
    pub fn max_ports(&self) -> usize {
        self.max_ports
    }

    /// Number of PMD workers.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Creates a port, or returns the existing one when the same spec is already there.
    pub fn add_port(
        &mut self,
        spec: PortSpec,
        origin: PortOrigin,
    ) -> Result<PortStatus, PortError> {
        super::config::validate_port(&spec).map_err(PortError::Invalid)?;
        let mode = switch_mode(&spec)?;
        if let Some(existing) = self.ports.get(&spec.name) {
            if existing.spec == spec {
                return Ok(self.status(existing));
            }
            return Err(PortError::Conflict(format!(
                "duplicate port {:?}: a port with that name exists with another spec; remove it first (heddlectl del-port {})",
                spec.name, spec.name
            )));
        }
        self.reap();
        let device = EthPort::device_name(&spec.devargs);
        if let Some(r) = self.retired.iter().find(|r| {
            r.entry.as_ref().is_some_and(|e| {
                e.spec.name == spec.name || EthPort::device_name(&e.spec.devargs) == device
            })
        }) {
            return Err(PortError::Conflict(format!(
                "port {:?} (device {device:?}) is still being removed: PMD worker(s) {:?} have not finished their burst; retry once they do (heddlectl stats shows pmd stalls)",
                r.name,
                self.shared.behind(r.generation)
            )));
        }
        if let Some(other) = self
            .ports
            .values()
            .find(|p| EthPort::device_name(&p.spec.devargs) == device)
        {
            return Err(PortError::Conflict(format!(
                "duplicate port device {device:?}: port {:?} already uses it; give each port its own device name (e.g. net_vhost1)",
                other.spec.name
            )));
        }
        if self.ports.len() >= self.max_ports {
            return Err(PortError::Full(format!(
                "the switch holds {} ports, its max_ports: remove a port first, or raise max_ports in the switch config (at most {MAX_PORTS})",
                self.ports.len()
            )));
        }
        let index = (0..MAX_PORTS as PortIndex)
            .find(|i| {
                !self.ports.values().any(|p| p.index == *i)
                    && !self
                        .retired
                        .iter()
                        .any(|r| r.entry.is_some() && r.index == *i)
            })
            .ok_or_else(|| {
                PortError::Full(format!(
                    "the switch holds {MAX_PORTS} ports already: remove one first"
                ))
            })?;
        let unreachable = Arc::new(AtomicBool::new(false));
        let device = if VhostConfig::is_native(&spec.devargs) {
            let mut config = VhostConfig::parse(&spec.devargs, spec.queues)?;
            config.mtu = spec.mtu.unwrap_or(DEFAULT_MTU);
            let shared = self.shared.clone();
            let unreachable = unreachable.clone();
            let port = VhostPort::start(
                &spec.name,
                config,
                self.workers.len(),
                Arc::new(move || shared.synchronize_unless(&unreachable)),
            )?;
            Device::Vhost(port)
        } else if MemifConfig::is_native(&spec.devargs) {
            let config = MemifConfig::parse(&spec.devargs, spec.queues)?;
            let shared = self.shared.clone();
            let unreachable = unreachable.clone();
            let port = MemifPort::start(
                &spec.name,
                config,
                self.workers.len(),
                Arc::new(move || shared.synchronize_unless(&unreachable)),
            )?;
            Device::Memif(port)
        } else {
            self.start_ethdev(&spec)?
        };

        // Spread RX queues over the least-loaded workers.
        let mut load: Vec<usize> = (0..self.workers.len())
            .map(|w| {
                self.ports
                    .values()
                    .map(|p| p.rx_assign.iter().filter(|(x, _)| *x == w).count())
                    .sum()
            })
            .collect();
        let mut rx_assign = Vec::new();
        for q in 0..device.rx_queues() {
            let w = (0..load.len()).min_by_key(|w| load[*w]).unwrap_or(0);
            load[w] += 1;
            rx_assign.push((w, q));
        }
        let entry = PortEntry {
            spec: spec.clone(),
            origin,
            index,
            rx_assign,
            unreachable,
            device,
        };
        let status = self.status(&entry);
        if let (Some(mac), PortMode::Access { vlan }) =
            (spec.mac.as_deref().and_then(parse_mac), &mode)
        {
            self.shared.fdb.add_static(*vlan, mac, index);
        }
        self.ports.insert(spec.name.clone(), entry);
        // Nothing is freed: no need to wait for the workers.
        self.publish();
        if origin == PortOrigin::Api {
            if let Err(e) = self.persist() {
                // Roll back: the caller is told it failed, so it must not exist.
                self.remove_entry(&spec.name);
                return Err(PortError::Store(e));
            }
        }
        tracing::info!(port = %spec.name, index, devargs = %spec.devargs, "port added");
        Ok(status)
    }

    /// Probes and starts a DPDK ethdev port.
    fn start_ethdev(&self, spec: &PortSpec) -> Result<Device, PortError> {
        // This DPDK build has a fixed ethdev table.
        let ethdev_limit = dpdk_sys::RTE_MAX_ETHPORTS as usize;
        if self.ports.values().filter(|p| p.device.is_ethdev()).count() >= ethdev_limit {
            return Err(PortError::Full(format!(
                "this DPDK build allows {ethdev_limit} ethdev ports (RTE_MAX_ETHPORTS) and all are in use: remove a port first, or use native vhost-user ports (devargs vhost-user...), which are not ethdevs"
            )));
        }
        clear_stale_vhost_socket(&spec.devargs)?;
        let mut eth = EthPort::probe(&spec.devargs)?;
        let info = eth.info()?;
        let nworkers = self.workers.len() as u16;
        let queues = QueueConfig {
            rx_queues: spec.queues.unwrap_or(1).min(info.max_rx_queues.max(1)),
            tx_queues: nworkers.min(info.max_tx_queues.max(1)),
            rx_ring: self.rings.0,
            tx_ring: self.rings.1,
        };
        let mtu = spec.mtu.unwrap_or(DEFAULT_MTU);
        if mtu > info.max_mtu {
            return Err(PortError::Invalid(format!(
                "port {:?}: device {} (driver {}) takes an MTU of at most {}: set mtu to {} or less",
                spec.name,
                eth.name(),
                info.driver,
                info.max_mtu,
                info.max_mtu
            )));
        }
        // Frames stay in one buffer (no scattered RX, no multi-segment TX): when the MTU's
        // frames do not fit the main pool's buffers, the port receives into jumbo buffers.
        let frame = usize::from(mtu) + ETH_HLEN + VLAN_HLEN;
        let room = usize::from(self.pool.data_room()) - dpdk_sys::RTE_PKTMBUF_HEADROOM as usize;
        let rx_pool = if frame > room {
            &self.jumbo
        } else {
            &self.pool
        };
        eth.start(queues, rx_pool, mtu)?;
        let tx_lock = (queues.tx_queues < nworkers).then(|| Arc::new(TxLock::default()));
        Ok(Device::Eth {
            info,
            queues,
            tx_lock,
            eth,
        })
    }

    /// Replaces the VLAN set of a trunk port under running traffic. Entries the port had
    /// learned are flushed (they relearn at once on the VLANs it still carries).
    pub fn set_trunk_vlans(
        &mut self,
        name: &str,
        vlans: TrunkVlans,
    ) -> Result<PortStatus, PortError> {
        let Some(entry) = self.ports.get(name) else {
            return Err(PortError::NotFound(format!(
                "no port named {name:?}: heddlectl ports lists them"
            )));
        };
        if !matches!(entry.spec.mode, ApiMode::Trunk { .. }) {
            return Err(PortError::Invalid(format!(
                "port {name:?} is an access port: only a trunk's VLANs can be changed (remove and re-add an access port)"
            )));
        }
        let mut spec = entry.spec.clone();
        spec.mode = ApiMode::Trunk {
            vlans: vlans.vlans,
            native_vlan: vlans.native_vlan,
        };
        super::config::validate_port(&spec).map_err(PortError::Invalid)?;
        switch_mode(&spec)?;
        let (index, origin) = (entry.index, entry.origin);
        let old = std::mem::replace(
            &mut self.ports.get_mut(name).expect("checked above").spec,
            spec,
        );
        self.reap();
        let generation = self.publish();
        // Flush now, and once more when every worker has left the old VLAN set behind (a
        // worker still on it could learn again in between).
        self.shared.fdb.flush_port(index);
        self.retire(generation, name, index, None);
        if origin == PortOrigin::Api {
            if let Err(e) = self.persist() {
                self.ports.get_mut(name).expect("checked above").spec = old;
                self.publish();
                return Err(PortError::Store(e));
            }
        }
        tracing::info!(port = %name, "trunk VLANs changed");
        Ok(self.status(&self.ports[name]))
    }

    /// Removes a port; `Ok(false)` when there was none by that name.
    pub fn remove_port(&mut self, name: &str) -> Result<bool, PortError> {
        let Some(origin) = self.ports.get(name).map(|p| p.origin) else {
            let before = self.unrestored.len();
            self.unrestored.retain(|s| s.name != name);
            if before != self.unrestored.len() {
                self.persist().map_err(PortError::Store)?;
                return Ok(true);
            }
            return Ok(false);
        };
        self.remove_entry(name);
        if origin == PortOrigin::Api {
            self.persist().map_err(PortError::Store)?;
        }
        tracing::info!(port = %name, "port removed");
        Ok(true)
    }

    fn remove_entry(&mut self, name: &str) {
        self.reap();
        let Some(entry) = self.ports.remove(name) else {
            return;
        };
        // Workers stop using the port once they pick up the new generation; only then is it
        // stopped and closed and its FDB entries and counters cleared (`finish`).
        let generation = self.publish();
        let index = entry.index;
        self.retire(generation, name, index, Some(entry));
    }

    /// Finishes `work` once every worker has passed `generation`: at once when they do
    /// within `REMOVE_WAIT`, else later (`reap`, on every tick and control call), so a
    /// stalled worker holds up neither the control API nor its own safety.
    fn retire(&mut self, generation: u64, name: &str, index: PortIndex, entry: Option<PortEntry>) {
        let r = Retired {
            generation,
            name: name.to_owned(),
            index,
            entry,
            last_report: Instant::now(),
        };
        if self.shared.wait_for(generation, REMOVE_WAIT) {
            self.finish(r);
            return;
        }
        let behind = self.shared.count_stall(generation);
        tracing::warn!(
            port = %name,
            workers = ?behind,
            generation,
            "PMD worker(s) {behind:?} have not finished their burst: port {name:?} is removed from forwarding, its device and memory are freed once they do"
        );
        self.retired.push(r);
    }

    /// Frees what retired work was waiting for, for every item all workers have passed;
    /// reports the others every `stall_report`.
    fn reap(&mut self) {
        if self.retired.is_empty() {
            return;
        }
        let (done, mut waiting): (Vec<Retired>, Vec<Retired>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|r| self.shared.passed(r.generation));
        for r in &mut waiting {
            if r.last_report.elapsed() >= self.shared.stall_report {
                r.last_report = Instant::now();
                let behind = self.shared.behind(r.generation);
                tracing::warn!(
                    port = %r.name,
                    workers = ?behind,
                    generation = r.generation,
                    "PMD worker(s) {behind:?} still have not finished their burst: port {:?} stays retired, its memory mapped",
                    r.name
                );
            }
        }
        self.retired = waiting;
        for r in done {
            self.finish(r);
        }
    }

    /// Every worker has passed `r.generation`: none can reach the retired port any more.
    fn finish(&mut self, r: Retired) {
        self.shared.fdb.flush_port(r.index);
        let Some(entry) = r.entry else {
            return;
        };
        // Kept in the switch's life totals (`StatsReply::totals`) before the slot is zeroed.
        self.removed_totals.add(&crate::switch::counters::sum_port(
            &self.shared.counters,
            entry.index,
        ));
        for c in &self.shared.counters {
            c.reset_port(entry.index);
        }
        // The vhost-user thread (stopped when `entry` drops) takes its rings out of their
        // slots; it need not wait for the workers any more.
        entry.unreachable.store(true, Ordering::Release);
        drop(entry);
        tracing::debug!(port = %r.name, "retired port closed");
    }

    /// Names of ports removed from forwarding whose device waits for a stalled worker.
    pub fn removing(&self) -> Vec<String> {
        self.retired
            .iter()
            .filter(|r| r.entry.is_some())
            .map(|r| r.name.clone())
            .collect()
    }

    /// Remembers persisted ports that could not be restored, so they are saved again.
    pub fn keep_unrestored(&mut self, spec: PortSpec) {
        self.unrestored.push(spec);
    }

    fn persist(&self) -> std::io::Result<()> {
        let mut specs: Vec<PortSpec> = self
            .ports
            .values()
            .filter(|p| p.origin == PortOrigin::Api)
            .map(|p| p.spec.clone())
            .collect();
        specs.extend(self.unrestored.iter().cloned());
        self.store.save(&specs)
    }

    /// Builds and swaps in a new configuration and returns its generation. Nothing the old
    /// one referred to may be freed before every worker has passed that generation
    /// (`Shared::passed`; `retire` does it).
    fn publish(&self) -> u64 {
        let mut ports = Vec::new();
        let nworkers = self.workers.len();
        let mut paths: Vec<Box<[Option<PortPath>]>> =
            (0..nworkers).map(|_| empty_paths()).collect();
        let mut rx = vec![Vec::new(); nworkers];
        for p in self.ports.values() {
            ports.push(SwitchPort {
                index: p.index,
                name: p.spec.name.clone(),
                mode: switch_mode(&p.spec).expect("validated when the port was added"),
                mtu: p.spec.mtu.unwrap_or(DEFAULT_MTU),
            });
            for (w, table) in paths.iter_mut().enumerate() {
                table[p.index as usize] = Some(match &p.device {
                    Device::Eth {
                        eth,
                        queues,
                        tx_lock,
                        ..
                    } => PortPath::Eth {
                        eth: eth.id(),
                        txq: (w as u16) % queues.tx_queues,
                        tx_lock: tx_lock.clone(),
                    },
                    Device::Vhost(v) => PortPath::Vhost {
                        rings: v.rings().clone(),
                        pair: (w as u16) % v.config().pairs,
                    },
                    Device::Memif(m) => PortPath::Memif {
                        rings: m.rings().clone(),
                        queue: (w as u16) % m.config().pairs,
                    },
                });
            }
            for &(w, q) in &p.rx_assign {
                rx[w].push((p.index, q));
            }
        }
        let dp = Dataplane {
            switch: Snapshot::build(ports),
            paths: paths.into_iter().map(Arc::new).collect(),
            rx,
        };
        self.shared.current.store(Arc::new(dp));
        self.shared.advance()
    }

    fn status(&self, p: &PortEntry) -> PortStatus {
        match &p.device {
            Device::Eth {
                info, queues, eth, ..
            } => PortStatus {
                spec: p.spec.clone(),
                index: p.index,
                dpdk_port: Some(eth.id()),
                driver: info.driver.clone(),
                link_up: eth.link().up,
                rx_queues: queues.rx_queues,
                tx_queues: queues.tx_queues,
                origin: p.origin,
            },
            Device::Vhost(v) => PortStatus {
                spec: p.spec.clone(),
                index: p.index,
                dpdk_port: None,
                driver: "vhost-user".to_owned(),
                link_up: v.is_up(),
                rx_queues: v.config().pairs,
                tx_queues: v.config().pairs,
                origin: p.origin,
            },
            Device::Memif(m) => PortStatus {
                spec: p.spec.clone(),
                index: p.index,
                dpdk_port: None,
                driver: "memif".to_owned(),
                link_up: m.is_up(),
                rx_queues: m.config().pairs,
                tx_queues: m.config().pairs,
                origin: p.origin,
            },
        }
    }

    /// All ports.
    pub fn ports(&self) -> Vec<PortStatus> {
        self.ports.values().map(|p| self.status(p)).collect()
    }

    /// One port.
    pub fn port(&self, name: &str) -> Option<PortStatus> {
        self.ports.get(name).map(|p| self.status(p))
    }

    /// Advances the coarse clock and ages the FDB. Called once a second.
    pub fn tick(&mut self) {
        self.reap();
        let now = self.started.elapsed().as_secs() as u32;
        self.shared.clock.store(now, Ordering::Relaxed);
        self.shared.fdb.age(now, self.ageing);
    }

    /// Counters for the API and metrics.
    pub fn stats(&self) -> StatsReply {
        let mut ports = Vec::new();
        for p in self.ports.values() {
            let sum = heddle_core::switch::counters::sum_port(&self.shared.counters, p.index);
            let mut memif = None;
            let (device, vhost) = match &p.device {
                Device::Eth { eth, .. } => {
                    let dev = eth.stats().unwrap_or_default();
                    (
                        heddle_api::DeviceStats {
                            ipackets: dev.ipackets,
                            opackets: dev.opackets,
                            imissed: dev.imissed,
                            ierrors: dev.ierrors,
                            oerrors: dev.oerrors,
                            rx_nombuf: dev.rx_nombuf,
                        },
                        None,
                    )
                }
                Device::Vhost(v) => {
                    let st = vhost_stats(v);
                    (
                        heddle_api::DeviceStats {
                            ipackets: sum.rx_packets,
                            opackets: sum.tx_packets,
                            imissed: st.no_mbufs,
                            ierrors: st.bad_chains + st.oversize,
                            oerrors: st.no_guest_buffers,
                            rx_nombuf: st.no_mbufs,
                        },
                        Some(st),
                    )
                }
                Device::Memif(m) => {
                    let st = memif_stats(m);
                    memif = Some(st);
                    (
                        heddle_api::DeviceStats {
                            ipackets: sum.rx_packets,
                            opackets: sum.tx_packets,
                            imissed: st.no_mbufs,
                            ierrors: st.bad_descs + st.oversize,
                            oerrors: st.no_peer_buffers,
                            rx_nombuf: st.no_mbufs,
                        },
                        None,
                    )
                }
            };
            ports.push(PortStats {
                name: p.spec.name.clone(),
                rx_packets: sum.rx_packets,
                rx_bytes: sum.rx_bytes,
                tx_packets: sum.tx_packets,
                tx_bytes: sum.tx_bytes,
                drops: sum
                    .drops_by_name()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
                device,
                vhost,
                memif,
            });
        }
        let pmd = self
            .workers
            .iter()
            .enumerate()
            .map(|(w, place)| {
                let c = self.shared.counters[w].pmd.snapshot();
                let busy_iters = c.iterations.saturating_sub(c.idle_iterations);
                let total = (c.busy_cycles + c.idle_cycles).max(1) as f64;
                PmdStats {
                    worker: w as u32,
                    lcore: place.lcore,
                    cpu: place.cpu,
                    iterations: c.iterations,
                    idle_iterations: c.idle_iterations,
                    busy_cycles: c.busy_cycles,
                    idle_cycles: c.idle_cycles,
                    packets: c.packets,
                    cycles_per_packet: if c.packets == 0 {
                        0.0
                    } else {
                        c.busy_cycles as f64 / c.packets as f64
                    },
                    busy_percent: c.busy_cycles as f64 * 100.0 / total,
                    packets_per_burst: if busy_iters == 0 {
                        0.0
                    } else {
                        c.packets as f64 / busy_iters as f64
                    },
                    stalls: self.shared.stalls[w].0.load(Ordering::Relaxed),
                }
            })
            .collect();
        let f = heddle_core::switch::counters::sum_fdb(&self.shared.counters);
        StatsReply {
            cores: self.cores.clone(),
            ports,
            pmd,
            fdb: FdbStats {
                entries: self.shared.fdb.len() as u64,
                capacity: self.shared.fdb.capacity() as u64,
                learned: f.learned,
                moves: f.moves,
                full: f.full,
                aged: self.shared.fdb.aged_total(),
            },
            tsc_hz: self.eal.tsc_hz(),
            removing: self.removing(),
            totals: self.totals(),
            resources: self.resources(),
        }
    }

    /// Frames over the switch's life: removed ports plus every port slot now (slots of
    /// removed ports are zero once their counters were folded into `removed_totals`).
    fn totals(&self) -> heddle_api::TrafficTotals {
        let mut t = self.removed_totals;
        for i in 0..MAX_PORTS {
            t.add(&crate::switch::counters::sum_port(
                &self.shared.counters,
                i as PortIndex,
            ));
        }
        heddle_api::TrafficTotals {
            rx_packets: t.rx_packets,
            tx_packets: t.tx_packets,
            rx_bytes: t.rx_bytes,
            tx_bytes: t.tx_bytes,
            flood_copies: t.copies,
            drops: t.drops_by_name().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }

    /// The process's resources (mbufs, fds, threads, memory).
    fn resources(&self) -> heddle_api::ResourceStats {
        // Both pools: a jumbo buffer leaked counts as much as a small one.
        let total = u64::from(self.pool.size()) + u64::from(self.jumbo.size());
        let free = u64::from(self.pool.available()) + u64::from(self.jumbo.available());
        let mut r = super::resources::read_self();
        r.mbufs_total = total;
        r.mbufs_in_use = total.saturating_sub(free);
        r
    }

    /// The FDB with port names.
    pub fn fdb(&self) -> Vec<FdbEntry> {
        let now = self.shared.clock.load(Ordering::Relaxed);
        let names: BTreeMap<PortIndex, &str> = self
            .ports
            .values()
            .map(|p| (p.index, p.spec.name.as_str()))
            .collect();
        let mut out: Vec<FdbEntry> = self
            .shared
            .fdb
            .entries()
            .into_iter()
            .map(|e| FdbEntry {
                vlan: e.vlan.get(),
                mac: MacText(e.mac).to_string(),
                port: names
                    .get(&e.port)
                    .map_or_else(|| format!("#{}", e.port), |n| (*n).to_owned()),
                is_static: e.is_static,
                age_seconds: if e.is_static {
                    0
                } else {
                    now.saturating_sub(e.last_seen)
                },
            })
            .collect();
        out.sort_by(|a, b| (a.vlan, &a.mac).cmp(&(b.vlan, &b.mac)));
        out
    }

    /// Stops the workers and closes every port (in that order).
    pub fn shutdown(&mut self, lcores: &[u32]) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for &l in lcores {
            self.eal.wait(l);
        }
        let names: Vec<String> = self.ports.keys().cloned().collect();
        for n in names {
            if let Some(e) = self.ports.remove(&n) {
                drop(e);
            }
        }
        // Every worker has stopped: whatever was retired can go.
        for r in std::mem::take(&mut self.retired) {
            self.finish(r);
        }
    }
}
