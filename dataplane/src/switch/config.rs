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
}

/// Ports and per-VLAN flood lists.
pub struct Snapshot {
    ports: Box<[Option<SwitchPort>]>,
    /// Index = VLAN id; the ports carrying that VLAN, ascending.
    flood: Box<[Box<[PortIndex]>]>,
}

impl Snapshot {
    /// Builds a snapshot. Ports with an index of `MAX_PORTS` or more are ignored (the
    /// control plane never hands those out).
    pub fn build(ports: impl IntoIterator<Item = SwitchPort>) -> Snapshot {
        let mut table: Vec<Option<SwitchPort>> = vec![None; MAX_PORTS];
        for p in ports {
            if let Some(slot) = table.get_mut(p.index as usize) {
                *slot = Some(p);
            }
        }
        let mut flood: Vec<Vec<PortIndex>> = vec![Vec::new(); 4096];
        for p in table.iter().flatten() {
            match &p.mode {
                PortMode::Access { vlan } => flood[vlan.get() as usize].push(p.index),
                PortMode::Trunk { allowed, native } => {
                    for v in allowed.iter() {
                        flood[v.get() as usize].push(p.index);
                    }
                    if let Some(n) = native {
                        if !allowed.contains(*n) {
                            flood[n.get() as usize].push(p.index);
                        }
                    }
                }
            }
        }
        Snapshot {
            ports: table.into_boxed_slice(),
            flood: flood.into_iter().map(Vec::into_boxed_slice).collect(),
        }
    }

    /// The port at `index`.
    #[inline(always)]
    pub fn port(&self, index: PortIndex) -> Option<&SwitchPort> {
        self.ports.get(index as usize).and_then(Option::as_ref)
    }

    /// Ports that carry `vlan`.
    #[inline(always)]
    pub fn flood(&self, vlan: Vlan) -> &[PortIndex] {
        &self.flood[vlan.get() as usize]
    }

    /// Every port.
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
                index: 0,
                name: "a".into(),
                mode: PortMode::Access { vlan: v(100) },
            },
            SwitchPort {
                index: 3,
                name: "t".into(),
                mode: PortMode::Trunk {
                    allowed,
                    native: Some(v(7)),
                },
            },
            SwitchPort {
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
}
