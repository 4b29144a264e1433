//! Request and response bodies of the node daemon API (JSON), shared by the daemon,
//! `heddlectl` and `heddle-cni`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A VLAN or an inclusive range of VLANs, written `100` or `"100-199"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VlanRange {
    /// One VLAN.
    One(u16),
    /// `"first-last"`, or a single number as a string.
    Range(#[serde(with = "range_text")] (u16, u16)),
}

mod range_text {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(r: &(u16, u16), s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}-{}", r.0, r.1))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(u16, u16), D::Error> {
        let text = String::deserialize(d)?;
        let parse = |t: &str| {
            t.trim()
                .parse::<u16>()
                .map_err(|_| D::Error::custom(format!("{text:?} is not a VLAN range like 100-199")))
        };
        match text.split_once('-') {
            Some((a, b)) => Ok((parse(a)?, parse(b)?)),
            None => {
                let v = parse(&text)?;
                Ok((v, v))
            }
        }
    }
}

impl VlanRange {
    /// First and last VLAN.
    pub fn bounds(&self) -> (u16, u16) {
        match *self {
            VlanRange::One(v) => (v, v),
            VlanRange::Range(r) => r,
        }
    }
}

/// How a port treats VLANs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMode {
    /// Untagged at the port, all traffic on one VLAN (pods).
    Access {
        /// The port's VLAN, 1-4094.
        vlan: u16,
    },
    /// 802.1Q-tagged at the port (uplinks).
    Trunk {
        /// VLANs the trunk carries.
        vlans: Vec<VlanRange>,
        /// VLAN carried untagged, if any.
        native_vlan: Option<u16>,
    },
}

/// A port to create: the key is `name`; every field is part of its identity, so adding the
/// same spec twice is a no-op and adding another spec under a taken name is refused.
///
/// On the wire (JSON and the YAML config) the mode is flat:
/// `{name, devargs, mode: access, vlan}` or `{name, devargs, mode: trunk, vlans, native_vlan}`;
/// unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WirePortSpec", into = "WirePortSpec")]
pub struct PortSpec {
    /// Unique port name (the CNI uses `<container id>/<ifname>`-derived names).
    pub name: String,
    /// DPDK devargs: a PCI address or a vdev, e.g. `net_vhost0,iface=/run/heddle/a.sock`.
    pub devargs: String,
    /// Access or trunk.
    pub mode: PortMode,
    /// MAC of the device behind this port (e.g. the pod's virtio-user MAC), installed as a
    /// static FDB entry on the access VLAN.
    pub mac: Option<String>,
    /// RX queues to poll (spread across PMD workers); default 1.
    pub queues: Option<u16>,
    /// Largest frame the port takes and sends, without its Ethernet header and 802.1Q tag
    /// (an IP MTU); default 1500, at most 9216. Frames above it are dropped and counted
    /// (`drops.mtu`).
    pub mtu: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireMode {
    Access,
    Trunk,
}

/// The flat wire form of [`PortSpec`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePortSpec {
    name: String,
    devargs: String,
    mode: WireMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vlan: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vlans: Option<Vec<VlanRange>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    native_vlan: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    queues: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mtu: Option<u16>,
}

impl TryFrom<WirePortSpec> for PortSpec {
    type Error = String;

    fn try_from(w: WirePortSpec) -> Result<Self, String> {
        let mode = match w.mode {
            WireMode::Access => {
                if w.vlans.is_some() || w.native_vlan.is_some() {
                    return Err(format!(
                        "port {:?}: vlans and native_vlan belong to trunk ports; an access port takes vlan",
                        w.name
                    ));
                }
                let vlan = w
                    .vlan
                    .ok_or_else(|| format!("port {:?}: an access port needs vlan", w.name))?;
                PortMode::Access { vlan }
            }
            WireMode::Trunk => {
                if w.vlan.is_some() {
                    return Err(format!(
                        "port {:?}: a trunk port takes vlans (a list), not vlan",
                        w.name
                    ));
                }
                let vlans = w
                    .vlans
                    .ok_or_else(|| format!("port {:?}: a trunk port needs vlans", w.name))?;
                PortMode::Trunk {
                    vlans,
                    native_vlan: w.native_vlan,
                }
            }
        };
        Ok(PortSpec {
            name: w.name,
            devargs: w.devargs,
            mode,
            mac: w.mac,
            queues: w.queues,
            mtu: w.mtu,
        })
    }
}

impl From<PortSpec> for WirePortSpec {
    fn from(p: PortSpec) -> Self {
        let (mode, vlan, vlans, native_vlan) = match p.mode {
            PortMode::Access { vlan } => (WireMode::Access, Some(vlan), None, None),
            PortMode::Trunk { vlans, native_vlan } => {
                (WireMode::Trunk, None, Some(vlans), native_vlan)
            }
        };
        WirePortSpec {
            name: p.name,
            devargs: p.devargs,
            mode,
            vlan,
            vlans,
            native_vlan,
            mac: p.mac,
            queues: p.queues,
            mtu: p.mtu,
        }
    }
}

/// Where a port came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortOrigin {
    /// The daemon's YAML config.
    Config,
    /// The control API (persisted in the state directory).
    Api,
}

/// A port as the daemon holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortStatus {
    /// What was asked for.
    pub spec: PortSpec,
    /// Index in the switch's port table.
    pub index: u16,
    /// DPDK ethdev port id; none for native vhost-user ports, which are not ethdevs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpdk_port: Option<u16>,
    /// Driver name.
    pub driver: String,
    /// Link up.
    pub link_up: bool,
    /// RX queues polled.
    pub rx_queues: u16,
    /// TX queues (one per worker when the device has enough).
    pub tx_queues: u16,
    /// Config file or API.
    pub origin: PortOrigin,
}

/// Counters of one port, summed over PMD workers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PortStats {
    /// Port name.
    pub name: String,
    /// Frames the switch received on the port.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames the switch sent out of the port.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames dropped, by reason (`vlan_not_allowed`, `tx_full`, ...), counted on the port
    /// where the decision was made.
    pub drops: BTreeMap<String, u64>,
    /// The device's own counters (`rte_eth_stats`): misses and errors below the switch.
    pub device: DeviceStats,
    /// Native vhost-user ports: the connection and the rings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<VhostStats>,
    /// Native memif ports: the connection and the rings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memif: Option<MemifStats>,
}

/// What a native memif port saw of its peer (the pod's memif client).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemifStats {
    /// A peer is connected and its rings run.
    pub connected: bool,
    /// Queue pairs running.
    pub queue_pairs: u16,
    /// Queue pairs the port offers.
    pub queue_pairs_offered: u16,
    /// Connections accepted.
    pub connects: u64,
    /// Connections ended.
    pub disconnects: u64,
    /// Connections refused or ended for a malformed or out-of-order message, or a region
    /// or ring the port does not accept.
    pub protocol_errors: u64,
    /// Connections refused because a peer was already connected.
    pub busy_refusals: u64,
    /// Descriptors naming memory outside their region (their frame dropped).
    pub bad_descs: u64,
    /// Peer frames larger than a switch buffer (dropped).
    pub oversize: u64,
    /// Times receiving stopped because the buffer pool was empty.
    pub no_mbufs: u64,
    /// Frames the peer had no buffers for.
    pub no_peer_buffers: u64,
    /// Rings the switch stopped using because the peer broke them (a `head` more than the
    /// ring size ahead).
    pub broken_rings: u64,
}

/// What a native vhost-user port saw of its frontend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostStats {
    /// A frontend is connected now.
    pub connected: bool,
    /// Queue pairs in use: both vrings of the pair run.
    pub queue_pairs: u16,
    /// Queue pairs the port offers (its `queues`).
    #[serde(default)]
    pub queue_pairs_offered: u16,
    /// Connections made or accepted.
    pub connects: u64,
    /// Connections ended.
    pub disconnects: u64,
    /// Protocol messages refused or malformed.
    pub protocol_errors: u64,
    /// Descriptor chains returned with length 0 because they were malformed.
    pub bad_chains: u64,
    /// Guest frames larger than a switch buffer.
    pub oversize: u64,
    /// Guest frames left waiting because the buffer pool was empty.
    pub no_mbufs: u64,
    /// Frames the guest had no receive buffers for.
    pub no_guest_buffers: u64,
    /// Interrupts sent to the guest.
    pub interrupts: u64,
    /// Rings the switch stopped using because the guest broke them.
    pub broken_rings: u64,
    /// Connections the frontend ended because the port offers fewer queue pairs than it
    /// wants (it left right after reading the count, or set up a vring beyond it).
    #[serde(default)]
    pub queue_pair_mismatches: u64,
    /// The frontend negotiated packed virtqueues (virtio 1.1 `VIRTIO_F_RING_PACKED`) and
    /// its vrings run in that layout; false for split rings or when nothing runs.
    #[serde(default)]
    pub packed: bool,
    /// The MTU the frontend set with `VHOST_USER_NET_SET_MTU` (QEMU's `host_mtu`), 0 when
    /// it did not.
    #[serde(default)]
    pub frontend_mtu: u16,
}

/// `rte_eth_stats` of a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStats {
    /// Packets received by the device.
    pub ipackets: u64,
    /// Packets sent by the device.
    pub opackets: u64,
    /// RX drops because no descriptor was free.
    pub imissed: u64,
    /// RX errors.
    pub ierrors: u64,
    /// TX errors.
    pub oerrors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// One PMD worker's accounting, as OVS's `pmd-stats-show` reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PmdStats {
    /// Worker number.
    pub worker: u32,
    /// DPDK lcore id.
    pub lcore: u32,
    /// CPU the worker is pinned to.
    pub cpu: u32,
    /// Poll-loop iterations.
    pub iterations: u64,
    /// Iterations that found no packet.
    pub idle_iterations: u64,
    /// Cycles spent in iterations that moved packets.
    pub busy_cycles: u64,
    /// Cycles spent polling empty queues.
    pub idle_cycles: u64,
    /// Packets received and processed.
    pub packets: u64,
    /// busy_cycles / packets.
    pub cycles_per_packet: f64,
    /// Share of cycles that were busy, in percent.
    pub busy_percent: f64,
    /// packets / busy iterations.
    pub packets_per_burst: f64,
    /// Times the control plane waited longer than the stall report interval (1 s) for this
    /// worker to finish a burst before freeing what it might hold.
    #[serde(default)]
    pub stalls: u64,
}

/// Switch-wide FDB counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbStats {
    /// Entries now in the table.
    pub entries: u64,
    /// Capacity.
    pub capacity: u64,
    /// MACs learned.
    pub learned: u64,
    /// MACs seen moving to another port.
    pub moves: u64,
    /// Learning attempts that found no free slot.
    pub full: u64,
    /// Entries removed by ageing.
    pub aged: u64,
}

/// Where the switch's threads run, and how its PMD CPUs were chosen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorePlacement {
    /// The control thread's CPU (EAL main lcore).
    pub control_cpu: u32,
    /// The PMD workers' CPUs, worker 0 first.
    pub pmd_cpus: Vec<u32>,
    /// How `cores.pmd` was given: `list` (CPU ids), `count` or `auto` (both taken from the
    /// process's affinity mask, which the kubelet's static CPU manager sets).
    pub source: String,
    /// CPUs the switch could use at start: online and in its affinity mask.
    pub usable_cpus: Vec<u32>,
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    /// CPU placement (absent from switches older than this field).
    #[serde(default)]
    pub cores: CorePlacement,
    /// Per port.
    pub ports: Vec<PortStats>,
    /// Per PMD worker.
    pub pmd: Vec<PmdStats>,
    /// The FDB.
    pub fdb: FdbStats,
    /// TSC frequency, to turn cycles into time.
    pub tsc_hz: u64,
    /// Ports removed from forwarding whose device and memory wait for a stalled PMD worker.
    #[serde(default)]
    pub removing: Vec<String>,
    /// Frames over the switch's life, removed ports included (absent from older switches).
    #[serde(default)]
    pub totals: TrafficTotals,
    /// What the switch process holds: what a leak would grow (absent from older switches).
    #[serde(default)]
    pub resources: ResourceStats,
}

/// Frame counters over the switch's whole life, ports removed since included. Every frame
/// received is sent or dropped with a reason, and so is every flood copy made of one: when
/// the switch is idle, `rx_packets + flood_copies == tx_packets + dropped`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficTotals {
    /// Frames received, all ports.
    pub rx_packets: u64,
    /// Frames sent, all ports.
    pub tx_packets: u64,
    /// Bytes received, all ports.
    #[serde(default)]
    pub rx_bytes: u64,
    /// Bytes sent, all ports.
    #[serde(default)]
    pub tx_bytes: u64,
    /// Extra copies made to flood a frame to more than one port.
    pub flood_copies: u64,
    /// Frames dropped, all ports, by reason.
    pub drops: BTreeMap<String, u64>,
}

impl TrafficTotals {
    /// All drops.
    pub fn dropped(&self) -> u64 {
        self.drops.values().sum()
    }

    /// Frames (and flood copies) neither sent nor counted as dropped: 0 when the counters add
    /// up (read while no frame is in flight). Negative when more left than came in.
    pub fn unaccounted(&self) -> i128 {
        i128::from(self.rx_packets) + i128::from(self.flood_copies)
            - i128::from(self.tx_packets)
            - i128::from(self.dropped())
    }
}

/// The switch process's resources, read from DPDK and `/proc/self`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStats {
    /// Mbufs in the switch's pool.
    pub mbufs_total: u64,
    /// Mbufs taken from the pool (in rings, in flight or held; per-core caches count as free).
    pub mbufs_in_use: u64,
    /// Open file descriptors (`/proc/self/fd`).
    pub open_fds: u64,
    /// Threads (`/proc/self/task`).
    pub threads: u64,
    /// Resident memory, bytes (`VmRSS`).
    pub rss_bytes: u64,
    /// Hugepage memory mapped, bytes: the switch's own pool and the guest memory of connected
    /// vhost-user frontends (`Shared_Hugetlb + Private_Hugetlb` of `/proc/self/smaps_rollup`).
    pub hugepage_bytes: u64,
}

/// One FDB entry, `GET /v1/fdb`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbEntry {
    /// VLAN.
    pub vlan: u16,
    /// MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Port name.
    pub port: String,
    /// Static (from a port's `mac`) rather than learned.
    #[serde(rename = "static")]
    pub is_static: bool,
    /// Seconds since last seen (0 for static entries).
    pub age_seconds: u32,
}

/// `PUT /v1/ports/{name}/vlans`: the VLANs a trunk carries, replaced as a whole (the
/// manager's node agent sets what the networks on this node need).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkVlans {
    /// VLANs the trunk carries.
    pub vlans: Vec<VlanRange>,
    /// VLAN carried untagged, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_vlan: Option<u16>,
}

/// `DELETE /v1/ports/{name}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveReply {
    /// False when the port did not exist (the call still succeeds: DEL is idempotent).
    pub removed: bool,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// True when the daemon takes port requests.
    pub ready: bool,
    /// Daemon version.
    pub version: String,
    /// PMD workers running.
    pub workers: u32,
    /// Ports held.
    pub ports: u32,
    /// The most ports the switch holds (its config's `max_ports`); 0 from a daemon that
    /// predates the field. `ports >= max_ports` means the switch is full.
    #[serde(default)]
    pub max_ports: u32,
}

/// Body of every error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// One sentence naming the problem and the fix.
    pub error: String,
}

/// `aa:bb:cc:dd:ee:ff` text for a MAC.
pub struct MacText(pub [u8; 6]);

impl fmt::Display for MacText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (or `-` separated).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_spec_yaml_shape_round_trips_through_json() {
        let json = r#"{"name":"up","devargs":"net_null0","mode":"trunk","vlans":[100,"200-210"],"native_vlan":5}"#;
        let spec: PortSpec = serde_json::from_str(json).unwrap();
        assert_eq!(
            spec.mode,
            PortMode::Trunk {
                vlans: vec![VlanRange::One(100), VlanRange::Range((200, 210))],
                native_vlan: Some(5)
            }
        );
        let back: PortSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn unknown_fields_and_bad_ranges_are_refused() {
        assert!(serde_json::from_str::<PortSpec>(
            r#"{"name":"a","devargs":"x","mode":"access","vlan":1,"colour":"red"}"#
        )
        .is_err());
        assert!(serde_json::from_str::<PortSpec>(
            r#"{"name":"a","devargs":"x","mode":"trunk","vlans":["1-x"]}"#
        )
        .is_err());
    }

    #[test]
    fn mac_parse_and_print() {
        assert_eq!(
            parse_mac("02:00:00:aa:bb:0c"),
            Some([2, 0, 0, 0xaa, 0xbb, 0x0c])
        );
        assert_eq!(parse_mac("02:00:00:aa:bb"), None);
        assert_eq!(parse_mac("02:00:00:aa:bb:0c:01"), None);
        assert_eq!(parse_mac("zz:00:00:aa:bb:0c"), None);
        assert_eq!(
            MacText([2, 0, 0, 0xaa, 0xbb, 0x0c]).to_string(),
            "02:00:00:aa:bb:0c"
        );
    }
}
