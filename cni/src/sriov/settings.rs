//! PF-side VF settings as values (`ip link set <pf> vf <n> vlan/mac/spoofchk/trust/rate`):
//! what is asked, what was there before, and their `IFLA_VF_INFO` encoding. Pure: the config
//! parses into them, [`super::pf`] sends them, [`super::alloc`] saves them.

use rtnetlink::packet_route::link::{
    LinkVfInfo, VfInfo, VfInfoMac, VfInfoRate, VfInfoSpoofCheck, VfInfoTrust, VfInfoVlan,
};
use serde::{Deserialize, Serialize};

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
