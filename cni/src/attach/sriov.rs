//! `kind: sriov`: an SR-IOV VF handed over by the device plugin; its netdev moved into the
//! pod (or, bound to vfio-pci, reported by `pciID`), PF-side settings applied and restored.
//! The VF work itself is [`crate::sriov`].

use super::addresses;
use super::kind::{self, Add, Attachment, Context};
use crate::config::{Kind, NetConf};
use crate::error::CniError;
use crate::invocation::Invocation;
use crate::plan::{Basis, Plan, VfPlan};
use crate::record::Record;
use crate::result::{CniResult, Interface};
use crate::sriov::{self, conf::device_candidates};

/// The SR-IOV VF kind.
pub struct Sriov;

impl Attachment for Sriov {
    fn plan(
        &self,
        conf: &NetConf,
        inv: &Invocation,
        basis: Basis,
        _device: Option<&str>,
    ) -> Result<Plan, CniError> {
        let Kind::Sriov(sriov) = &conf.kind else {
            unreachable!("attach::of gives Sriov only sriov configs")
        };
        Ok(Plan {
            vf: Some(VfPlan {
                candidates: device_candidates(
                    conf.runtime.device_id.as_deref(),
                    conf.device_id.as_deref(),
                    sriov.resource_name.as_deref(),
                    &inv.pci_devices,
                )?,
                mac: basis.asked_mac,
            }),
            ..Plan::bare(&basis)
        })
    }

    fn apply(
        &self,
        cx: &Context<'_>,
        add: &Add<'_>,
        result: &mut CniResult,
    ) -> Result<(), CniError> {
        let (conf, inv, plan) = (add.conf, add.inv, add.plan);
        let Kind::Sriov(sriov_conf) = &conf.kind else {
            unreachable!("attach::of gives Sriov only sriov configs")
        };
        let netns = add.netns("an sriov")?;
        let pci = add
            .vf_pci
            .expect("sriov ADDs pick a VF before their effects");
        let vf_plan = plan.vf.as_ref().expect("sriov plans have a VF plan");
        let idx = result.push_interface(Interface {
            name: inv.ifname.clone(),
            mtu: conf.mtu,
            sandbox: Some(netns.display().to_string()),
            pci_id: Some(pci.to_owned()),
            ..Default::default()
        });
        addresses::assign(conf, inv, result, idx)?;
        let (addresses, routes) = addresses::for_netlink(result, idx);
        let attached = sriov::attach(
            cx.state_dir,
            cx.sysfs_root,
            pci,
            &sriov::AttachRequest {
                key: &plan.key,
                netns: &netns,
                conf: sriov_conf,
                mac: vf_plan.mac,
                mtu: conf.mtu,
                addresses,
                routes,
            },
            cx.host.pf,
        )?;
        let iface = &mut result.interfaces[idx];
        iface.mac = attached.mac.map(|m| heddle_api::MacText(m).to_string());
        iface.mtu = attached.mtu;
        kind::write_device_info(conf, &sriov::device_info(&attached.vf))
    }

    fn undo(&self, cx: &Context<'_>, r: &Record, _daemon_required: bool) -> Result<(), CniError> {
        if let Some(pci) = &r.vf_pci {
            sriov::release(
                cx.state_dir,
                cx.sysfs_root,
                pci,
                &r.key(),
                cx.netns,
                cx.host.pf,
            )?;
        }
        Ok(())
    }

    fn check(
        &self,
        cx: &Context<'_>,
        _conf: &NetConf,
        inv: &Invocation,
        r: &Record,
    ) -> Result<Option<String>, CniError> {
        match &r.vf_pci {
            Some(pci) => sriov::check(cx.state_dir, pci, &r.key(), inv.netns.as_deref()),
            None => Ok(None),
        }
    }
}
