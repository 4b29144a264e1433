//! PF-side VF settings (`ip link set <pf> vf <n> vlan/mac/spoofchk/trust/rate`): what is
//! asked, what was there before, and the rtnetlink requests (`IFLA_VFINFO_LIST` /
//! `IFLA_VF_INFO`) behind [`PfControl`], so a unit test sees what would be sent and restored.

use rtnetlink::packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkVfInfo, VfInfo, VfInfoMac, VfInfoRate, VfInfoSpoofCheck,
    VfInfoTrust, VfInfoVlan,
};
use rtnetlink::packet_route::AddressFamily;
use serde::{Deserialize, Serialize};

use crate::error::CniError;

/// VF settings held by the PF. `None` means "not asked" (in a request) or "not changed" (in
/// the saved originals): only what the config asks for is touched and restored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VfSettings {
    /// VLAN the PF tags the VF's traffic with (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// 802.1p priority of that VLAN (sent with `vlan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<u8>,
    /// Administrative MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<[u8; 6]>,
    /// MAC/VLAN anti-spoofing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spoofchk: Option<bool>,
    /// Trusted VF (may change its MAC, go promiscuous).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<bool>,
    /// Minimum TX rate, Mbit/s (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tx_rate: Option<u32>,
    /// Maximum TX rate, Mbit/s (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tx_rate: Option<u32>,
}

impl VfSettings {
    /// Nothing asked: the PF is left alone (and need not be an SR-IOV PF at all).
    pub fn is_empty(&self) -> bool {
        *self == VfSettings::default()
    }

    /// What must be saved before applying `self` over `current`: the current value of every
    /// field `self` asks for. A rate is set as a pair, so asking for one saves both, and the
    /// request gets the other from `current` (see [`VfSettings::completed_from`]).
    pub fn originals_in(&self, current: &VfSettings) -> VfSettings {
        let rate = self.min_tx_rate.is_some() || self.max_tx_rate.is_some();
        let vlan = self.vlan.is_some() || self.qos.is_some();
        VfSettings {
            vlan: current.vlan.filter(|_| vlan).or(vlan.then_some(0)),
            qos: current.qos.filter(|_| vlan).or(vlan.then_some(0)),
            mac: current.mac.filter(|_| self.mac.is_some()),
            // A kernel that does not report one of these had it at the driver default.
            spoofchk: self.spoofchk.map(|_| current.spoofchk.unwrap_or(true)),
            trust: self.trust.map(|_| current.trust.unwrap_or(false)),
            min_tx_rate: current.min_tx_rate.filter(|_| rate).or(rate.then_some(0)),
            max_tx_rate: current.max_tx_rate.filter(|_| rate).or(rate.then_some(0)),
        }
    }

    /// `self`, with `other`'s value wherever `self` has none.
    pub fn overriding(&self, other: &VfSettings) -> VfSettings {
        VfSettings {
            vlan: self.vlan.or(other.vlan),
            qos: self.qos.or(other.qos),
            mac: self.mac.or(other.mac),
            spoofchk: self.spoofchk.or(other.spoofchk),
            trust: self.trust.or(other.trust),
            min_tx_rate: self.min_tx_rate.or(other.min_tx_rate),
            max_tx_rate: self.max_tx_rate.or(other.max_tx_rate),
        }
    }

    /// `self` with the half of a pair it does not ask for (rate min/max, VLAN/QoS) taken
    /// from `current`, so applying it changes only what was asked.
    pub fn completed_from(&self, current: &VfSettings) -> VfSettings {
        let mut s = *self;
        if s.min_tx_rate.is_some() || s.max_tx_rate.is_some() {
            s.min_tx_rate = s.min_tx_rate.or(current.min_tx_rate).or(Some(0));
            s.max_tx_rate = s.max_tx_rate.or(current.max_tx_rate).or(Some(0));
        }
        if s.vlan.is_some() || s.qos.is_some() {
            s.vlan = s.vlan.or(current.vlan).or(Some(0));
            s.qos = s.qos.or(Some(0));
        }
        s
    }

    /// The `IFLA_VF_INFO` that applies these settings to VF `vf`, one attribute per field set.
    pub fn to_vf_info(&self, vf: u32) -> LinkVfInfo {
        let mut out = Vec::new();
        if let Some(mac) = self.mac {
            out.push(VfInfo::Mac(VfInfoMac::new(vf, &mac)));
        }
        if let Some(vlan) = self.vlan {
            out.push(VfInfo::Vlan(VfInfoVlan::new(
                vf,
                u32::from(vlan),
                u32::from(self.qos.unwrap_or(0)),
            )));
        }
        if let (Some(min), Some(max)) = (self.min_tx_rate, self.max_tx_rate) {
            out.push(VfInfo::Rate(VfInfoRate::new(vf, min, max)));
        }
        if let Some(on) = self.spoofchk {
            out.push(VfInfo::SpoofCheck(VfInfoSpoofCheck::new(vf, on)));
        }
        if let Some(on) = self.trust {
            out.push(VfInfo::Trust(VfInfoTrust::new(vf, on)));
        }
        LinkVfInfo(out)
    }

    /// The settings of VF `vf` in a PF's `IFLA_VFINFO_LIST` (`None` when the list has no
    /// such VF).
    pub fn from_vf_list(list: &[LinkVfInfo], vf: u32) -> Option<VfSettings> {
        let info = list.iter().find(|i| {
            i.0.iter()
                .any(|a| matches!(a, VfInfo::Mac(m) if m.vf_id == vf))
        })?;
        let mut s = VfSettings::default();
        for a in &info.0 {
            match a {
                VfInfo::Mac(m) => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(&m.mac[..6]);
                    s.mac = Some(mac);
                }
                VfInfo::Vlan(v) => {
                    s.vlan = u16::try_from(v.vlan_id).ok();
                    s.qos = u8::try_from(v.qos).ok();
                }
                VfInfo::Rate(r) => {
                    s.min_tx_rate = Some(r.min_tx_rate);
                    s.max_tx_rate = Some(r.max_tx_rate);
                }
                VfInfo::SpoofCheck(c) => s.spoofchk = Some(c.enabled),
                VfInfo::Trust(t) => s.trust = Some(t.enabled),
                _ => {}
            }
        }
        Some(s)
    }
}

/// The PF's VF table, as the kernel exposes it.
pub trait PfControl {
    /// The current settings of VF `vf` of PF netdev `pf`.
    fn read(&self, pf: &str, vf: u32) -> Result<VfSettings, CniError>;
    /// Applies the fields of `settings` that are set to VF `vf` of `pf`.
    fn apply(&self, pf: &str, vf: u32, settings: &VfSettings) -> Result<(), CniError>;
    /// Is the PF netdev still there (a DEL after the PF went away restores nothing)?
    fn has_pf(&self, pf: &str) -> Result<bool, CniError>;
}

/// The error when a PF does not take VF settings (not an SR-IOV PF, no such VF, or the
/// driver refuses one of them).
pub fn refused(pf: &str, cause: impl std::fmt::Display) -> CniError {
    CniError::netlink(
        format!(
            "PF {pf} does not accept VF settings: {cause}; remove vlan, vlanQoS, spoofchk, trust, minTxRate, maxTxRate (and set adminMac to false) or use a PF whose driver supports them"
        ),
        cause,
    )
}

/// For `wanted` on VF `vf` of `pf`: the request to send and the originals to save first
/// (restored on DEL). Nothing is read when `wanted` is empty, so a PF that is no SR-IOV PF
/// at all is fine as long as nothing is asked of it.
pub fn plan(
    pf_ctl: &dyn PfControl,
    pf: &str,
    vf: u32,
    wanted: &VfSettings,
) -> Result<(VfSettings, VfSettings), CniError> {
    if wanted.is_empty() {
        return Ok((VfSettings::default(), VfSettings::default()));
    }
    let current = pf_ctl.read(pf, vf)?;
    Ok((
        wanted.completed_from(&current),
        wanted.originals_in(&current),
    ))
}

/// The real PF: rtnetlink in the host namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetlinkPf;

impl PfControl for NetlinkPf {
    fn read(&self, pf: &str, vf: u32) -> Result<VfSettings, CniError> {
        let list = crate::netlink::vf_list(pf)?
            .ok_or_else(|| refused(pf, format!("no such interface {pf}")))?;
        VfSettings::from_vf_list(&list, vf).ok_or_else(|| {
            refused(
                pf,
                format!(
                    "the kernel lists no VF {vf} on it (IFLA_VFINFO_LIST has {} entries): not an SR-IOV PF, or sriov_numvfs is too small",
                    list.len()
                ),
            )
        })
    }

    fn apply(&self, pf: &str, vf: u32, settings: &VfSettings) -> Result<(), CniError> {
        crate::netlink::set_vf(pf, settings.to_vf_info(vf)).map_err(|e| refused(pf, e.details))
    }

    fn has_pf(&self, pf: &str) -> Result<bool, CniError> {
        Ok(crate::netlink::link_state(pf)?.is_some())
    }
}

/// The attribute and family of the `RTM_GETLINK` that lists a PF's VFs.
pub fn vf_query() -> (AddressFamily, Vec<LinkExtentMask>) {
    (AddressFamily::Unspec, vec![LinkExtentMask::Vf])
}

/// The attribute of the `RTM_SETLINK` that applies `info`.
pub fn vf_set_attribute(info: LinkVfInfo) -> LinkAttribute {
    LinkAttribute::VfInfoList(vec![info])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A PF with one VF table in memory that records every request.
    struct FakePf {
        vfs: RefCell<Vec<VfSettings>>,
        sent: RefCell<Vec<(u32, VfSettings)>>,
    }

    impl PfControl for FakePf {
        fn read(&self, pf: &str, vf: u32) -> Result<VfSettings, CniError> {
            self.vfs
                .borrow()
                .get(vf as usize)
                .copied()
                .ok_or_else(|| refused(pf, format!("the kernel lists no VF {vf} on it")))
        }
        fn apply(&self, _pf: &str, vf: u32, s: &VfSettings) -> Result<(), CniError> {
            self.sent.borrow_mut().push((vf, *s));
            let mut vfs = self.vfs.borrow_mut();
            let cur = &mut vfs[vf as usize];
            macro_rules! take {
                ($($f:ident),*) => { $( if s.$f.is_some() { cur.$f = s.$f; } )* };
            }
            take!(vlan, qos, mac, spoofchk, trust, min_tx_rate, max_tx_rate);
            Ok(())
        }
        fn has_pf(&self, _pf: &str) -> Result<bool, CniError> {
            Ok(true)
        }
    }

    /// What ADD does with the plan: apply the request, keep the originals.
    fn configure(
        pf_ctl: &FakePf,
        pf: &str,
        vf: u32,
        wanted: &VfSettings,
    ) -> Result<VfSettings, CniError> {
        let (request, originals) = plan(pf_ctl, pf, vf, wanted)?;
        if !request.is_empty() {
            pf_ctl.apply(pf, vf, &request)?;
        }
        Ok(originals)
    }

    fn factory() -> VfSettings {
        VfSettings {
            vlan: Some(0),
            qos: Some(0),
            mac: Some([0; 6]),
            spoofchk: Some(true),
            trust: Some(false),
            min_tx_rate: Some(0),
            max_tx_rate: Some(0),
        }
    }

    #[test]
    fn configure_sends_only_what_is_asked_and_restore_puts_it_back() {
        let pf = FakePf {
            vfs: RefCell::new(vec![factory(), factory()]),
            sent: RefCell::default(),
        };
        let wanted = VfSettings {
            vlan: Some(100),
            mac: Some([2, 0, 0, 0, 0, 9]),
            trust: Some(true),
            max_tx_rate: Some(1000),
            ..Default::default()
        };
        let originals = configure(&pf, "pf0", 1, &wanted).unwrap();
        let sent = pf.sent.borrow()[0];
        assert_eq!(sent.0, 1);
        assert_eq!(sent.1.vlan, Some(100));
        assert_eq!(sent.1.qos, Some(0), "QoS travels with the VLAN");
        assert_eq!(sent.1.min_tx_rate, Some(0), "min rate kept from the VF");
        assert_eq!(sent.1.spoofchk, None, "not asked: not sent");
        assert_eq!(pf.vfs.borrow()[1].vlan, Some(100));
        assert_eq!(pf.vfs.borrow()[0], factory(), "the other VF is untouched");
        assert_eq!(originals.spoofchk, None);
        assert_eq!(originals.mac, Some([0; 6]));
        // DEL applies the originals: the VF is as it was.
        pf.apply("pf0", 1, &originals).unwrap();
        assert_eq!(pf.vfs.borrow()[1], factory());
    }

    #[test]
    fn nothing_asked_touches_nothing_even_on_a_pf_without_vfs() {
        let pf = FakePf {
            vfs: RefCell::default(),
            sent: RefCell::default(),
        };
        assert_eq!(
            configure(&pf, "eth0", 3, &VfSettings::default()).unwrap(),
            VfSettings::default()
        );
        assert!(pf.sent.borrow().is_empty());
        let e = configure(
            &pf,
            "eth0",
            3,
            &VfSettings {
                spoofchk: Some(false),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            e.msg.starts_with("PF eth0 does not accept VF settings: "),
            "{}",
            e.msg
        );
    }

    #[test]
    fn the_netlink_request_carries_one_attribute_per_setting() {
        use rtnetlink::packet_core::{Emitable, Nla};
        let s = VfSettings {
            vlan: Some(42),
            qos: Some(3),
            mac: Some([2, 1, 2, 3, 4, 5]),
            spoofchk: Some(false),
            trust: Some(true),
            min_tx_rate: Some(10),
            max_tx_rate: Some(500),
        };
        let info = s.to_vf_info(7);
        assert_eq!(info.0.len(), 5);
        assert!(info.0.contains(&VfInfo::Vlan(VfInfoVlan::new(7, 42, 3))));
        assert!(info.0.contains(&VfInfo::Rate(VfInfoRate::new(7, 10, 500))));
        assert!(info
            .0
            .contains(&VfInfo::SpoofCheck(VfInfoSpoofCheck::new(7, false))));
        // Round trip through the wire format the kernel sees and sends back.
        let attr = vf_set_attribute(info.clone());
        let mut buf = vec![0u8; attr.buffer_len()];
        attr.emit(&mut buf);
        assert_eq!(attr.kind(), 22, "IFLA_VFINFO_LIST");
        assert_eq!(VfSettings::from_vf_list(&[info], 7), Some(s));
        assert_eq!(VfSettings::from_vf_list(&[], 7), None);
        assert!(VfSettings::default().to_vf_info(0).0.is_empty());
    }
}
