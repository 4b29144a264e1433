//! VLAN ids, VLAN sets, 802.1Q parsing and in-place tag push/pop.
//!
//! Only TPID 0x8100 is a VLAN tag here; an 802.1ad (0x88a8) outer tag is treated as an
//! untagged frame's payload and switched on the port's access or native VLAN.

use super::io::Packet;

/// 802.1Q TPID.
pub const TPID_8021Q: u16 = 0x8100;
/// Ethernet header without a tag.
pub const ETH_HEADER: usize = 14;
/// Size of an 802.1Q tag.
pub const TAG_LEN: usize = 4;

/// A VLAN id in 1..=4094.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vlan(u16);

impl Vlan {
    /// A VLAN, or `None` outside 1..=4094 (0 means "priority tag", 4095 is reserved).
    pub const fn new(id: u16) -> Option<Vlan> {
        if id >= 1 && id <= 4094 {
            Some(Vlan(id))
        } else {
            None
        }
    }

    /// The id.
    pub const fn get(self) -> u16 {
        self.0
    }
}

/// A set of VLANs: a 4096-bit bitmap, no allocation.
#[derive(Clone, PartialEq, Eq)]
pub struct VlanSet([u64; 64]);

impl Default for VlanSet {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for VlanSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter().map(Vlan::get)).finish()
    }
}

impl VlanSet {
    /// The empty set.
    pub const fn new() -> VlanSet {
        VlanSet([0; 64])
    }

    /// Adds `v`.
    pub fn insert(&mut self, v: Vlan) {
        self.0[(v.0 >> 6) as usize] |= 1 << (v.0 & 63);
    }

    /// Adds every VLAN in `first..=last` (clamped to 1..=4094; empty when `first > last`).
    pub fn insert_range(&mut self, first: u16, last: u16) {
        for id in first.max(1)..=last.min(4094) {
            self.insert(Vlan(id));
        }
    }

    /// The set of every VLAN in the inclusive ranges (each clamped to 1..=4094), e.g.
    /// `VlanSet::from_ranges([(100, 199), (300, 300)])`.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u16, u16)>) -> VlanSet {
        let mut s = VlanSet::new();
        for (first, last) in ranges {
            s.insert_range(first, last);
        }
        s
    }

    /// Removes `v`.
    pub fn remove(&mut self, v: Vlan) {
        self.0[(v.0 >> 6) as usize] &= !(1 << (v.0 & 63));
    }

    /// True when `v` is in the set.
    #[inline(always)]
    pub fn contains(&self, v: Vlan) -> bool {
        self.0[(v.0 >> 6) as usize] & (1 << (v.0 & 63)) != 0
    }

    /// The VLANs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = Vlan> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &bits)| {
            let mut bits = bits;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros() as u16;
                bits &= bits - 1;
                Some(Vlan((w as u16) << 6 | b))
            })
        })
    }

    /// Number of VLANs in the set.
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

impl FromIterator<Vlan> for VlanSet {
    fn from_iter<I: IntoIterator<Item = Vlan>>(iter: I) -> VlanSet {
        let mut s = VlanSet::new();
        s.extend(iter);
        s
    }
}

impl Extend<Vlan> for VlanSet {
    fn extend<I: IntoIterator<Item = Vlan>>(&mut self, iter: I) {
        for v in iter {
            self.insert(v);
        }
    }
}

/// The Ethernet and 802.1Q facts the bridge needs from a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Header {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// The 802.1Q TCI when the frame carries a tag (PCP, DEI, VID).
    pub tci: Option<u16>,
}

impl L2Header {
    /// Parses the first bytes of a frame; `None` for a runt (shorter than a header, or a
    /// tagged frame shorter than header plus tag).
    #[inline(always)]
    pub fn parse(frame: &[u8]) -> Option<L2Header> {
        if frame.len() < ETH_HEADER {
            return None;
        }
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&frame[0..6]);
        src.copy_from_slice(&frame[6..12]);
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let tci = if ethertype == TPID_8021Q {
            if frame.len() < ETH_HEADER + TAG_LEN {
                return None;
            }
            Some(u16::from_be_bytes([frame[14], frame[15]]))
        } else {
            None
        };
        Some(L2Header { dst, src, tci })
    }

    /// The tag's VLAN id (0 = priority tag), if tagged.
    #[inline(always)]
    pub fn vid(&self) -> Option<u16> {
        self.tci.map(|t| t & 0x0fff)
    }

    /// The tag's priority code point (0..=7), if tagged.
    pub fn pcp(&self) -> Option<u8> {
        self.tci.map(|t| (t >> 13) as u8)
    }
}

/// True for a multicast or broadcast MAC (I/G bit set).
#[inline(always)]
pub fn is_multicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// Removes the 802.1Q tag in place (moves the two MACs forward over it). The frame must
/// be tagged. Returns false, changing nothing, if the packet refuses.
#[inline]
pub fn pop_tag<P: Packet>(pkt: &mut P) -> bool {
    let data = pkt.data_mut();
    if data.len() < ETH_HEADER + TAG_LEN {
        return false;
    }
    data.copy_within(0..12, TAG_LEN);
    pkt.trim_front(TAG_LEN)
}

/// Inserts an 802.1Q tag with `tci` after the MACs. Returns false, changing nothing, when
/// the packet has no headroom for it.
#[inline]
pub fn push_tag<P: Packet>(pkt: &mut P, tci: u16) -> bool {
    if pkt.data().len() < 12 || !pkt.prepend(TAG_LEN) {
        return false;
    }
    let data = pkt.data_mut();
    data.copy_within(TAG_LEN..TAG_LEN + 12, 0);
    data[12..14].copy_from_slice(&TPID_8021Q.to_be_bytes());
    data[14..16].copy_from_slice(&tci.to_be_bytes());
    true
}

/// Rewrites the VID of a tagged frame in place, keeping PCP and DEI.
#[inline]
pub fn set_vid<P: Packet>(pkt: &mut P, vid: u16) {
    let data = pkt.data_mut();
    if data.len() >= ETH_HEADER + TAG_LEN {
        let tci = u16::from_be_bytes([data[14], data[15]]);
        data[14..16].copy_from_slice(&((tci & 0xf000) | (vid & 0x0fff)).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::testing::{frame, TestPacket};

    #[test]
    fn vlan_bounds() {
        assert!(Vlan::new(0).is_none());
        assert!(Vlan::new(4095).is_none());
        assert_eq!(Vlan::new(4094).map(Vlan::get), Some(4094));
    }

    #[test]
    fn set_membership_and_ranges() {
        let mut s = VlanSet::new();
        s.insert_range(100, 102);
        s.insert(Vlan::new(4094).unwrap());
        assert_eq!(
            s.iter().map(Vlan::get).collect::<Vec<_>>(),
            vec![100, 101, 102, 4094]
        );
        assert!(!s.contains(Vlan::new(99).unwrap()));
        assert_eq!(s.len(), 4);
        s.remove(Vlan::new(101).unwrap());
        assert!(!s.contains(Vlan::new(101).unwrap()));
        let r = VlanSet::from_ranges([(0, 2), (4000, 5000), (9, 8)]);
        assert_eq!(r.len(), 2 + 95);
        assert_eq!(r.iter().next().map(Vlan::get), Some(1));
        assert_eq!(r.iter().last().map(Vlan::get), Some(4094));
        let c: VlanSet = [7, 3, 7].iter().map(|&n| Vlan::new(n).unwrap()).collect();
        assert_eq!(c.iter().map(Vlan::get).collect::<Vec<_>>(), vec![3, 7]);
        assert!(VlanSet::new().is_empty());
    }

    #[test]
    fn push_then_pop_restores_the_frame_and_keeps_pcp() {
        let original = frame([0xff; 6], [2, 0, 0, 0, 0, 1], None, 64);
        let mut p = TestPacket::new(&original);
        assert!(push_tag(&mut p, (5 << 13) | 300));
        let h = L2Header::parse(p.data()).unwrap();
        assert_eq!(h.vid(), Some(300));
        assert_eq!(h.pcp(), Some(5));
        assert_eq!(h.src, [2, 0, 0, 0, 0, 1]);
        assert_eq!(p.len(), 68);
        set_vid(&mut p, 7);
        let h = L2Header::parse(p.data()).unwrap();
        assert_eq!((h.vid(), h.tci.unwrap() >> 13), (Some(7), 5));
        assert!(pop_tag(&mut p));
        assert_eq!(p.data(), &original[..]);
    }

    #[test]
    fn runts_do_not_parse() {
        assert!(L2Header::parse(&[0u8; 13]).is_none());
        let mut tagged = vec![0u8; 18];
        tagged[12] = 0x81;
        assert!(L2Header::parse(&tagged[..17]).is_none());
        assert!(L2Header::parse(&tagged).is_some());
    }

    #[test]
    fn push_without_headroom_changes_nothing() {
        let original = frame([0xff; 6], [2, 0, 0, 0, 0, 1], None, 64);
        let mut p = TestPacket::with_headroom(&original, 2);
        assert!(!push_tag(&mut p, 100));
        assert_eq!(p.data(), &original[..]);
    }
}
