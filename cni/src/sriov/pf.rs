//! PF-side VF settings applied through the kernel: [`PfControl`] (rtnetlink `IFLA_VFINFO_LIST`
//! in [`NetlinkPf`], a double in unit tests), so a unit test sees what would be sent and
//! restored. The settings themselves are [`super::settings::VfSettings`].

pub use super::settings::VfSettings;
use crate::error::CniError;

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

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::link::{VfInfo, VfInfoRate, VfInfoSpoofCheck, VfInfoVlan};
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
        let attr = crate::netlink::vf_set_attribute(info.clone());
        let mut buf = vec![0u8; attr.buffer_len()];
        attr.emit(&mut buf);
        assert_eq!(attr.kind(), 22, "IFLA_VFINFO_LIST");
        assert_eq!(VfSettings::from_vf_list(&[info], 7), Some(s));
        assert_eq!(VfSettings::from_vf_list(&[], 7), None);
        assert!(VfSettings::default().to_vf_info(0).0.is_empty());
    }
}
