//! The one interface every attachment kind implements ([`Attachment`]: plan, apply, undo,
//! check), what they act on ([`Context`]), and the small effects several kinds share.

use std::path::{Path, PathBuf};

use crate::config::NetConf;
use crate::error::{code, CniError};
use crate::handoff::PodDevices;
use crate::invocation::Invocation;
use crate::plan::{Basis, Plan};
use crate::record::Record;
use crate::result::CniResult;
use crate::sriov::pf::PfControl;
use crate::switch::Switch;

/// What the effects act on besides the switch: the PF of SR-IOV VFs and the kubelet's
/// PodResources API (doubles in tests).
#[derive(Clone, Copy)]
pub struct Host<'a> {
    /// PF-side VF settings.
    pub pf: &'a dyn PfControl,
    /// Which devices a pod holds.
    pub pods: &'a dyn PodDevices,
}

/// What a kind's effects act on and where they find what is not in the record.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The node daemon the attachment's port lives behind.
    pub switch: &'a dyn Switch,
    /// The PF and the kubelet.
    pub host: Host<'a>,
    /// The state directory (records, VF allocations).
    pub state_dir: &'a Path,
    /// Where sysfs is.
    pub sysfs_root: &'a Path,
    /// The pod's netns (`None` in GC, or a DEL without one).
    pub netns: Option<&'a Path>,
}

/// One ADD, as a kind's [`Attachment::apply`] sees it.
#[derive(Clone, Copy)]
pub struct Add<'a> {
    /// The network config.
    pub conf: &'a NetConf,
    /// The runtime's environment.
    pub inv: &'a Invocation,
    /// The names and specs decided by [`Attachment::plan`].
    pub plan: &'a Plan,
    /// The VF picked for an sriov attachment (under the node lock, before the record).
    pub vf_pci: Option<&'a str>,
}

impl Add<'_> {
    /// The pod's netns, which `what` ("a kernel", "an sriov") attachment cannot do without.
    pub fn netns(&self, what: &str) -> Result<PathBuf, CniError> {
        self.inv.netns.clone().ok_or_else(|| {
            CniError::env(
                format!("CNI_NETNS is required for {what} attachment"),
                "it is empty",
            )
        })
    }
}

/// An attachment kind (vhost-user, memif, kernel, sriov).
pub trait Attachment: Sync {
    /// The pure decision: every name, path and port spec, nothing touched. A vhost-user or
    /// memif socket goes into `device`'s directory when one is given.
    fn plan(
        &self,
        conf: &NetConf,
        inv: &Invocation,
        basis: Basis,
        device: Option<&str>,
    ) -> Result<Plan, CniError>;

    /// The effects of ADD, in order, adding the pod's interfaces and addresses to `result`.
    /// What it creates is in the record written before, so a failure is undone by
    /// [`Attachment::undo`].
    fn apply(
        &self,
        cx: &Context<'_>,
        add: &Add<'_>,
        result: &mut CniResult,
    ) -> Result<(), CniError>;

    /// Undoes what `r` says this kind created (or may have): every step tolerates the thing
    /// being gone already. `daemon_required` false lets a teardown succeed while the daemon
    /// is down when the port may never have reached it.
    fn undo(&self, cx: &Context<'_>, r: &Record, daemon_required: bool) -> Result<(), CniError>;

    /// CHECK: `Some(what is broken)`, or `None` when everything `r` names is there.
    fn check(
        &self,
        cx: &Context<'_>,
        conf: &NetConf,
        inv: &Invocation,
        r: &Record,
    ) -> Result<Option<String>, CniError>;
}

/// A closure turning an I/O error on `path` into a CNI error ("<what> <path>: <cause>").
pub fn io<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CniError + 'a {
    let what = what.to_owned();
    move |e| CniError::io(&what, path, e)
}

/// Sets the owner and/or group of `path` (nothing when neither is given).
pub fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), CniError> {
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    std::os::unix::fs::chown(path, uid, gid).map_err(io("changing the owner of", path))
}

/// Writes the NPWG device-info file the runtime asked for (`runtimeConfig.CNIDeviceInfoFile`).
pub fn write_device_info(conf: &NetConf, info: &serde_json::Value) -> Result<(), CniError> {
    if let Some(f) = &conf.runtime.device_info_file {
        let f = Path::new(f);
        if let Some(dir) = f.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        let body = serde_json::to_vec_pretty(info).expect("JSON serialises");
        std::fs::write(f, body).map_err(io("writing the device-info file", f))?;
    }
    Ok(())
}

/// Removes the record's switch port, if any (see [`Attachment::undo`] for `daemon_required`).
pub fn remove_port(cx: &Context<'_>, r: &Record, daemon_required: bool) -> Result<(), CniError> {
    if let Some(port) = &r.port_name {
        match cx.switch.remove_port(port) {
            Ok(()) => {}
            Err(e) if e.code == code::TRY_AGAIN_LATER && !daemon_required => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// CHECK of the record's switch port: `Some` when the switch does not have it.
pub fn missing_port(cx: &Context<'_>, r: &Record) -> Result<Option<String>, CniError> {
    if let Some(port) = &r.port_name {
        if !cx.switch.has_port(port)? {
            return Ok(Some(format!("switch port {port} is missing")));
        }
    }
    Ok(None)
}

/// Removes `f` (no error when it is gone).
pub fn remove_file(f: &Path) -> Result<(), CniError> {
    match std::fs::remove_file(f) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CniError::io("removing", f, e)),
        _ => Ok(()),
    }
}
