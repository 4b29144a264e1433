//! SR-IOV VF attachments (`kind: sriov`). The device plugin hands over a VF by PCI address
//! (`deviceID` in `runtimeConfig` or the config, or a `PCIDEVICE_*` variable); heddle-cni
//! finds it in sysfs ([`sysfs`]), records who holds it and what it looked like before
//! ([`alloc`], under a per-VF lock), applies the PF-side settings ([`pf`]), and moves its
//! netdev into the pod. A VF bound to a userspace driver (vfio-pci: DPDK in the pod) gets
//! only the PF-side settings and is reported by `pciID`. [`release`] undoes all of it, also
//! after the pod's netns is gone, and never touches a VF that another attachment now holds.

pub mod alloc;
pub mod conf;
pub mod pf;
pub mod settings;
pub mod sysfs;

use std::net::IpAddr;
use std::path::Path;

use alloc::{Allocation, Allocations, Holder};
use pf::PfControl;

use crate::error::{code, CniError};
use crate::key::{fnv1a, AttachmentKey};
use crate::netlink::{self, PodSide};
pub use conf::{device_candidates, pcidevice_var, SriovConf};

/// The temporary host name of a VF netdev while it moves (`hv<12 hex of the address>`).
pub fn tmp_name(pci: &str) -> String {
    format!("hv{:012x}", fnv1a(pci.as_bytes()) & 0xffff_ffff_ffff)
}

/// Picks the first of `candidates` that no live attachment holds (a VF held by a pod whose
/// netns is gone is free to take over). Call under the node-wide lock.
pub fn pick(
    state_dir: &Path,
    candidates: &[String],
    key: &AttachmentKey,
) -> Result<String, CniError> {
    let allocs = Allocations::new(state_dir);
    let mut held = vec![];
    for pci in candidates {
        let lock = allocs.lock(pci)?;
        match allocs.read(pci, &lock)? {
            Some(a)
                if !a.holder.is_gone()
                    && (a.holder.container_id != key.container_id
                        || a.holder.ifname != key.ifname) =>
            {
                held.push(format!(
                    "{pci} by {}/{}",
                    a.holder.container_id, a.holder.ifname
                ))
            }
            _ => return Ok(pci.clone()),
        }
    }
    Err(CniError::new(
        code::TRY_AGAIN_LATER,
        "every VF handed over is still held by a pod whose network namespace exists: retry once its DEL has run",
        held.join(", "),
    ))
}

/// What an ADD of a VF needs besides the VF itself.
#[derive(Debug, Clone)]
pub struct AttachRequest<'a> {
    /// The attachment.
    pub key: &'a AttachmentKey,
    /// The pod's netns.
    pub netns: &'a Path,
    /// Network config's sriov part.
    pub conf: &'a SriovConf,
    /// MAC asked for (runtime, `CNI_ARGS`, config); `None` keeps the VF's own.
    pub mac: Option<[u8; 6]>,
    /// MTU asked for.
    pub mtu: Option<u32>,
    /// Addresses for the netdev in the pod.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Routes in the pod.
    pub routes: Vec<(IpAddr, u8, Option<IpAddr>)>,
}

/// What the pod got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The VF.
    pub vf: sysfs::Vf,
    /// The MAC the VF has now, when known.
    pub mac: Option<[u8; 6]>,
    /// Its MTU, when known.
    pub mtu: Option<u32>,
}

/// ADD: takes VF `pci` for `req.key`. The allocation (with the original state) is written
/// before the first change, so a failure part-way is undone by [`release`].
pub fn attach(
    state_dir: &Path,
    sysfs_root: &Path,
    pci: &str,
    req: &AttachRequest<'_>,
    pf_ctl: &dyn PfControl,
) -> Result<Attached, CniError> {
    let vf = sysfs::find(sysfs_root, pci)?;
    let allocs = Allocations::new(state_dir);
    let lock = allocs.lock(pci)?;
    let previous = allocs.read(pci, &lock)?;
    if let Some(a) = &previous {
        let ours =
            a.holder.container_id == req.key.container_id && a.holder.ifname == req.key.ifname;
        if !ours && !a.holder.is_gone() {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "VF {pci} is held by {}/{} whose network namespace still exists: retry once its DEL has run",
                    a.holder.container_id, a.holder.ifname
                ),
                format!("allocation in {}", state_dir.join("sriov").display()),
            ));
        }
    }
    let tmp = tmp_name(pci);
    let netdev = if vf.is_userspace() {
        None
    } else {
        let name = vf.netdev.clone().ok_or_else(|| {
            CniError::config(
                format!(
                    "VF {pci} has no netdev in the host namespace (driver {}): bind it to its kernel driver, or to vfio-pci for a DPDK pod",
                    vf.driver.as_deref().unwrap_or("none")
                ),
                format!("{} lists no net/ entry", sysfs_root.display()),
            )
        })?;
        let now = netlink::link_state(&name)?.ok_or_else(|| {
            CniError::netlink(
                format!("VF {pci}'s netdev {name} is not in the host namespace: is another pod still using it?"),
                "no such link",
            )
        })?;
        Some((name, now))
    };
    let mut wanted = req.conf.settings;
    if req.conf.admin_mac {
        wanted.mac = req.mac;
    }
    let (request, mut originals) = pf::plan(pf_ctl, &vf.pf, vf.index, &wanted)?;
    let mut orig_netdev = netdev.as_ref().map(|(_, s)| s.clone());
    if let Some(a) = previous {
        // Taking over from a pod that is gone: what it saved is the real original.
        orig_netdev = a.netdev.or(orig_netdev);
        originals = a.pf_settings.overriding(&originals);
    }
    allocs.write(
        &Allocation {
            pci: pci.to_owned(),
            pf: vf.pf.clone(),
            vf_index: vf.index,
            holder: Holder {
                container_id: req.key.container_id.clone(),
                ifname: req.key.ifname.clone(),
                netns: Some(req.netns.to_owned()),
            },
            netdev: orig_netdev,
            pf_settings: originals,
            tmp_name: tmp.clone(),
        },
        &lock,
    )?;
    if !request.is_empty() {
        pf_ctl.apply(&vf.pf, vf.index, &request)?;
    }
    let mut mac = req.mac.or(request.mac);
    let mut mtu = req.mtu;
    if let Some((name, now)) = &netdev {
        netlink::move_into_pod(
            name,
            &PodSide {
                netns: req.netns.to_owned(),
                tmp_name: tmp,
                ifname: req.key.ifname.clone(),
                mac: req.mac,
                mtu: req.mtu,
                addresses: req.addresses.clone(),
                routes: req.routes.clone(),
            },
        )?;
        mac = mac.or(Some(now.mac));
        mtu = mtu.or(Some(now.mtu));
    }
    Ok(Attached { vf, mac, mtu })
}

/// DEL (and the undo of a failed ADD): brings the VF's netdev back to the host with its
/// original name, MAC, MTU and up/down state (from the pod's netns, or wherever the kernel
/// put it when the netns went away), restores the PF-side settings and frees the VF. A VF
/// that another attachment holds now is left alone.
pub fn release(
    state_dir: &Path,
    sysfs_root: &Path,
    pci: &str,
    key: &AttachmentKey,
    netns: Option<&Path>,
    pf_ctl: &dyn PfControl,
) -> Result<(), CniError> {
    let allocs = Allocations::new(state_dir);
    let lock = allocs.lock(pci)?;
    let Some(a) = allocs.read(pci, &lock)? else {
        return Ok(());
    };
    if a.holder.container_id != key.container_id || a.holder.ifname != key.ifname {
        eprintln!(
            "heddle-cni: VF {pci} is now held by {}/{}: DEL of {}/{} leaves it alone",
            a.holder.container_id, a.holder.ifname, key.container_id, key.ifname
        );
        return Ok(());
    }
    if let Some(orig) = &a.netdev {
        let netns = netns.or(a.holder.netns.as_deref()).filter(|p| p.exists());
        if let Some(ns) = netns {
            netlink::move_to_host(ns, &key.ifname, &a.tmp_name)?;
        }
        let mut names = vec![a.tmp_name.clone()];
        names.extend(sysfs::netdevs(sysfs_root, pci));
        if !netlink::restore_in_host(&names, orig)? {
            eprintln!(
                "heddle-cni: VF {pci}'s netdev is in neither the pod nor the host namespace (looked for {names:?}); nothing to restore"
            );
        }
    }
    if !a.pf_settings.is_empty() {
        if pf_ctl.has_pf(&a.pf)? {
            pf_ctl.apply(&a.pf, a.vf_index, &a.pf_settings)?;
        } else {
            eprintln!(
                "heddle-cni: PF {} is gone: VF {pci}'s settings not restored",
                a.pf
            );
        }
    }
    allocs.remove(pci, &lock)
}

/// CHECK: the VF is still allocated to `key` and its netdev (if any) is in the pod.
pub fn check(
    state_dir: &Path,
    pci: &str,
    key: &AttachmentKey,
    netns: Option<&Path>,
) -> Result<Option<String>, CniError> {
    let allocs = Allocations::new(state_dir);
    let lock = allocs.lock(pci)?;
    let Some(a) = allocs.read(pci, &lock)? else {
        return Ok(Some(format!("VF {pci} is not allocated")));
    };
    if a.holder.container_id != key.container_id || a.holder.ifname != key.ifname {
        return Ok(Some(format!(
            "VF {pci} is held by {}/{}",
            a.holder.container_id, a.holder.ifname
        )));
    }
    if let (Some(_), Some(ns)) = (&a.netdev, netns) {
        if !netlink::pod_link_exists(ns, &key.ifname)? {
            return Ok(Some(format!(
                "{} is missing in {}",
                key.ifname,
                ns.display()
            )));
        }
    }
    Ok(None)
}

/// The NPWG device-info (1.1.0) of a VF: type `pci`.
pub fn device_info(vf: &sysfs::Vf) -> serde_json::Value {
    serde_json::json!({
        "type": "pci",
        "version": "1.1.0",
        "pci": {
            "pci-address": vf.pci,
            "pf-pci-address": vf.pf_pci,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_names_fit_an_interface_name() {
        assert!(tmp_name("0000:03:02.0").len() <= 15);
    }

    use super::settings::VfSettings;

    #[test]
    fn a_vfio_vf_gets_pf_settings_only_and_a_late_del_leaves_a_new_holder_alone() {
        use std::cell::RefCell;
        struct Pf(RefCell<Vec<VfSettings>>, VfSettings);
        impl PfControl for Pf {
            fn read(&self, _: &str, _: u32) -> Result<VfSettings, CniError> {
                Ok(self.1)
            }
            fn apply(&self, _: &str, _: u32, s: &VfSettings) -> Result<(), CniError> {
                self.0.borrow_mut().push(*s);
                Ok(())
            }
            fn has_pf(&self, _: &str) -> Result<bool, CniError> {
                Ok(true)
            }
        }
        let factory = VfSettings {
            vlan: Some(0),
            qos: Some(0),
            mac: Some([0; 6]),
            spoofchk: Some(true),
            trust: Some(false),
            min_tx_rate: Some(0),
            max_tx_rate: Some(0),
        };
        let pf_ctl = Pf(RefCell::default(), factory);
        let dir = tempfile::tempdir().unwrap();
        let (sys, state) = (dir.path().join("sys"), dir.path().join("state"));
        sysfs::fixture::create(
            &sys,
            "0000:03:00.0",
            "ens1f0",
            &[("0000:03:02.0", None, "vfio-pci")],
        )
        .unwrap();
        let old = AttachmentKey {
            container_id: "old".into(),
            ifname: "net1".into(),
        };
        let new = AttachmentKey {
            container_id: "new".into(),
            ifname: "net1".into(),
        };
        let conf = SriovConf {
            settings: VfSettings {
                vlan: Some(200),
                trust: Some(true),
                ..Default::default()
            },
            admin_mac: true,
            resource_name: None,
        };
        let ns = dir.path().join("ns-old");
        std::fs::write(&ns, "").unwrap();
        let req = |key| AttachRequest {
            key,
            netns: &ns,
            conf: &conf,
            mac: Some([2, 0, 0, 0, 0, 7]),
            mtu: None,
            addresses: vec![],
            routes: vec![],
        };
        let a = attach(&state, &sys, "0000:03:02.0", &req(&old), &pf_ctl).unwrap();
        assert!(a.vf.is_userspace());
        assert_eq!(a.mac, Some([2, 0, 0, 0, 0, 7]));
        let sent = pf_ctl.0.borrow()[0];
        assert_eq!(
            (sent.vlan, sent.trust, sent.mac, sent.spoofchk),
            (Some(200), Some(true), Some([2, 0, 0, 0, 0, 7]), None)
        );
        // While the old pod lives, nobody else gets the VF.
        let e = attach(&state, &sys, "0000:03:02.0", &req(&new), &pf_ctl).unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN_LATER);
        assert_eq!(
            pick(&state, &["0000:03:02.0".to_owned()], &new)
                .unwrap_err()
                .code,
            code::TRY_AGAIN_LATER
        );
        // The old pod's netns goes away; the device plugin gives the VF to a new pod, whose
        // ADD comes before the old pod's DEL.
        std::fs::remove_file(&ns).unwrap();
        let new_ns = dir.path().join("ns-new");
        std::fs::write(&new_ns, "").unwrap();
        let mut r = req(&new);
        r.netns = &new_ns;
        attach(&state, &sys, "0000:03:02.0", &r, &pf_ctl).unwrap();
        pf_ctl.0.borrow_mut().clear();
        // The late DEL of the old pod changes nothing.
        release(&state, &sys, "0000:03:02.0", &old, None, &pf_ctl).unwrap();
        assert!(pf_ctl.0.borrow().is_empty());
        assert!(check(&state, "0000:03:02.0", &new, None).unwrap().is_none());
        // The new pod's DEL restores the factory settings the first pod found.
        release(&state, &sys, "0000:03:02.0", &new, None, &pf_ctl).unwrap();
        let restored = pf_ctl.0.borrow()[0];
        assert_eq!(
            (
                restored.vlan,
                restored.qos,
                restored.trust,
                restored.mac,
                restored.spoofchk
            ),
            (Some(0), Some(0), Some(false), Some([0; 6]), None)
        );
        assert!(check(&state, "0000:03:02.0", &new, None).unwrap().is_some());
    }
}
