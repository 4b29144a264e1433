//! The configuration PMD workers forward by: an immutable snapshot built by the control
//! plane on every change and swapped in atomically.

use super::io::{PortIndex, MAX_PORTS};
use super::vlan::{Vlan, VlanSet};

/// How a port treats VLANs.
// The 512-byte VLAN bitmap stays inline: a snapshot holds at most MAX_PORTS of these, and
// the fast path checks trunk membership without chasing a pointer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMode {
    /// Untagged at the port, one VLAN.
    Access {
        /// The port's VLAN.
        vlan: Vlan,
    },
    /// 802.1Q-tagged at the port.
    Trunk {
        /// VLANs carried (the native VLAN included).
        allowed: VlanSet,
        /// VLAN carried untagged, if any.
        native: Option<Vlan>,
    },
}

impl PortMode {
    /// True when the port carries `vlan`.
    #[inline(always)]
    pub fn carries(&self, vlan: Vlan) -> bool {
        match self {
            PortMode::Access { vlan: v } => *v == vlan,
            PortMode::Trunk { allowed, native } => allowed.contains(vlan) || *native == Some(vlan),
        }
    }
}

/// One port as workers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchPort {
    /// Index in the port table.
    pub index: PortIndex,
    /// Name (for the control plane; workers never read it).
    pub name: String,
    /// VLAN handling.
    pub mode: PortMode,
    /// Largest frame the port takes or sends, counted without the Ethernet header and
    /// 802.1Q tag (an IP MTU, as on a Linux interface): frames above it are dropped and
    /// counted ([`super::counters::DropReason::Mtu`]).
    pub mtu: u16,
}

/// The MTU of a port that does not name one.
pub const DEFAULT_MTU: u16 = 1500;
/// The largest MTU a port takes: frames of up to 9216 bytes after the Ethernet header.
pub const MAX_MTU: u16 = 9216;
/// The smallest MTU a port takes (IPv4's minimum).
pub const MIN_MTU: u16 = 68;
/// Bytes of Ethernet header outside the MTU.
pub const ETH_HLEN: usize = 14;
/// Bytes of an 802.1Q tag.
pub const VLAN_HLEN: usize = 4;
/// The longest frame, Ethernet header and one 802.1Q tag included, a port of MTU
/// [`MAX_MTU`] passes.
pub const MAX_FRAME: usize = MAX_MTU as usize + ETH_HLEN + VLAN_HLEN;

/// Ports and per-VLAN flood lists, immutable once built. Workers read it through a
/// shared reference; the control plane builds a new one on every change and swaps it in.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Indexed by [`PortIndex`]; `MAX_PORTS` long.
    ports: Box<[Option<SwitchPort>]>,
    /// Flood lists in one array: VLAN `v`'s members are
    /// `flood_ports[flood_start[v]..flood_start[v + 1]]`, ascending.
    flood_start: Box<[u32]>,
    flood_ports: Box<[PortIndex]>,
    generation: u64,
}

/// VLAN ids an index into the flood table can take (0..=4095).
const VLAN_IDS: usize = 4096;

impl PortMode {
    /// For a frame of `vlan` leaving a port of this mode: `None` when the port does not
    /// carry the VLAN, else whether it leaves tagged (trunk, not the native VLAN).
    #[inline(always)]
    pub fn egress_tagged(&self, vlan: Vlan) -> Option<bool> {
        match self {
            PortMode::Access { vlan: v } => (*v == vlan).then_some(false),
            PortMode::Trunk { allowed, native } => {
                if *native == Some(vlan) {
                    Some(false)
                } else {
                    allowed.contains(vlan).then_some(true)
                }
            }
        }
    }
}

impl Snapshot {
    /// Builds a snapshot of generation 0 (see [`Snapshot::with_generation`]). Ports with
    /// an index of `MAX_PORTS` or more are ignored (the control plane never hands those
    /// out); of two ports with one index, the later wins. A trunk's native VLAN is carried
    /// (untagged) even when it is not in the allowed set.
    pub fn build(ports: impl IntoIterator<Item = SwitchPort>) -> Snapshot {
        let mut table: Vec<Option<SwitchPort>> = vec![None; MAX_PORTS];
        for p in ports {
            if let Some(slot) = table.get_mut(p.index as usize) {
                *slot = Some(p);
            }
        }
        // Counting pass, then fill: one allocation for every list.
        let mut count = vec![0u32; VLAN_IDS];
        let each_member = |f: &mut dyn FnMut(Vlan, PortIndex)| {
            for p in table.iter().flatten() {
                match &p.mode {
                    PortMode::Access { vlan } => f(*vlan, p.index),
                    PortMode::Trunk { allowed, native } => {
                        for v in allowed.iter() {
                            f(v, p.index);
                        }
                        if let Some(n) = native {
                            if !allowed.contains(*n) {
                                f(*n, p.index);
                            }
                        }
                    }
                }
            }
        };
        each_member(&mut |v, _| count[v.get() as usize] += 1);
        let mut flood_start = vec![0u32; VLAN_IDS + 1];
        for v in 0..VLAN_IDS {
            flood_start[v + 1] = flood_start[v] + count[v];
        }
        let mut fill = flood_start.clone();
        let mut flood_ports = vec![0 as PortIndex; flood_start[VLAN_IDS] as usize];
        // Ports are visited in ascending index order, so every list comes out ascending.
        each_member(&mut |v, port| {
            let at = &mut fill[v.get() as usize];
            flood_ports[*at as usize] = port;
            *at += 1;
        });
        Snapshot {
            ports: table.into_boxed_slice(),
            flood_start: flood_start.into_boxed_slice(),
            flood_ports: flood_ports.into_boxed_slice(),
            generation: 0,
        }
    }

    /// The same snapshot, stamped with `generation` (the daemon numbers its snapshots so
    /// workers and the API can tell which one is in force).
    pub fn with_generation(mut self, generation: u64) -> Snapshot {
        self.generation = generation;
        self
    }

    /// The generation this snapshot was stamped with.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The port at `index`.
    #[inline(always)]
    pub fn port(&self, index: PortIndex) -> Option<&SwitchPort> {
        self.ports.get(index as usize).and_then(Option::as_ref)
    }

    /// Ports that carry `vlan`, ascending (the ingress port included: skip it).
    #[inline(always)]
    pub fn flood(&self, vlan: Vlan) -> &[PortIndex] {
        let v = vlan.get() as usize;
        &self.flood_ports[self.flood_start[v] as usize..self.flood_start[v + 1] as usize]
    }

    /// Every port, ascending by index.
    pub fn ports(&self) -> impl Iterator<Item = &SwitchPort> {
        self.ports.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_lists_follow_port_modes() {
        let v = |n| Vlan::new(n).unwrap();
        let mut allowed = VlanSet::new();
        allowed.insert_range(100, 101);
        let snap = Snapshot::build([
            SwitchPort {
                mtu: DEFAULT_MTU,
                index: 0,
                name: "a".into(),
                mode: PortMode::Access { vlan: v(100) },
            },
            SwitchPort {
                mtu: DEFAULT_MTU,
                index: 3,
                name: "t".into(),
                mode: PortMode::Trunk {
                    allowed,
                    native: Some(v(7)),
                },
            },
            SwitchPort {
                mtu: DEFAULT_MTU,
                index: 5,
                name: "c".into(),
                mode: PortMode::Access { vlan: v(200) },
            },
        ]);
        assert_eq!(snap.flood(v(100)), &[0, 3]);
        assert_eq!(snap.flood(v(101)), &[3]);
        assert_eq!(snap.flood(v(7)), &[3]);
        assert_eq!(snap.flood(v(200)), &[5]);
        assert!(snap.flood(v(300)).is_empty());
        assert!(snap.port(1).is_none());
        assert_eq!(snap.port(3).map(|p| p.name.as_str()), Some("t"));
        assert!(snap.port(3).unwrap().mode.carries(v(7)));
        assert!(!snap.port(0).unwrap().mode.carries(v(101)));
    }

    #[test]
    fn generation_index_bounds_and_egress_tagging() {
        let v = |n| Vlan::new(n).unwrap();
        let mut allowed = VlanSet::new();
        allowed.insert(v(10));
        let port = |index, mode| SwitchPort {
            mtu: DEFAULT_MTU,
            index,
            name: format!("p{index}"),
            mode,
        };
        let snap = Snapshot::build([
            port(0, PortMode::Access { vlan: v(10) }),
            port(0, PortMode::Access { vlan: v(20) }), // the later one wins
            port(MAX_PORTS as PortIndex, PortMode::Access { vlan: v(10) }), // ignored
            port(
                9,
                PortMode::Trunk {
                    allowed,
                    native: Some(v(30)),
                },
            ),
        ])
        .with_generation(42);
        assert_eq!(snap.generation(), 42);
        assert_eq!(snap.ports().count(), 2);
        assert!(snap.flood(v(10)).iter().eq([9].iter()));
        assert_eq!(snap.flood(v(20)), &[0]);
        assert_eq!(snap.flood(v(30)), &[9]);
        assert!(snap.flood(v(4094)).is_empty());
        let trunk = &snap.port(9).unwrap().mode;
        assert_eq!(trunk.egress_tagged(v(10)), Some(true));
        assert_eq!(trunk.egress_tagged(v(30)), Some(false));
        assert_eq!(trunk.egress_tagged(v(20)), None);
        let access = &snap.port(0).unwrap().mode;
        assert_eq!(access.egress_tagged(v(20)), Some(false));
        assert_eq!(access.egress_tagged(v(10)), None);
    }

    #[test]
    fn a_trunk_carrying_every_vlan_is_in_every_flood_list() {
        let mut all = VlanSet::new();
        all.insert_range(1, 4094);
        let snap = Snapshot::build((0..3).map(|i| SwitchPort {
            mtu: DEFAULT_MTU,
            index: i * 100,
            name: String::new(),
            mode: PortMode::Trunk {
                allowed: all.clone(),
                native: None,
            },
        }));
        for id in 1..=4094 {
            assert_eq!(snap.flood(Vlan::new(id).unwrap()), &[0, 100, 200]);
        }
    }
}
