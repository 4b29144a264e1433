//! What vhost-user and memif attachments share: the pod's socket directory, the switch port
//! behind the socket, the socket's owner and mode, and the device-info file. A
//! [`SocketKind`] gives its socket's side and device info, and its port; the plan, ADD, undo and CHECK are this module's.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};

use heddle_api::PortSpec;
use serde_json::Value;

use super::addresses;
use super::kind::{self, Add, Attachment, Context};
use crate::config::{Kind, NetConf};
use crate::error::CniError;
use crate::invocation::Invocation;
use crate::owner;
use crate::plan::{Basis, Plan, SocketPlan};
use crate::record::Record;
use crate::result::{CniResult, Interface};

/// A kind whose pod side is a socket (vhost-user, memif): what differs between them.
pub trait SocketKind: Sync {
    /// Whether the switch is the socket's server, and the NPWG device-info the pod is given.
    fn socket(&self, conf: &NetConf) -> (bool, Value);

    /// The switch port serving the socket `s`.
    fn port(&self, conf: &NetConf, basis: &Basis, s: &SocketPlan) -> PortSpec;

    /// The switch creates the socket with the owner and mode from its devargs (see [`apply`]).
    fn switch_sets_owner(&self, conf: &NetConf) -> bool;
}

impl<K: SocketKind> Attachment for K {
    fn plan(
        &self,
        conf: &NetConf,
        _inv: &Invocation,
        basis: Basis,
        device: Option<&str>,
    ) -> Result<Plan, CniError> {
        let (switch_is_server, info) = self.socket(conf);
        let s = SocketPlan::new(conf, &basis.key, device, switch_is_server, info)?;
        Ok(Plan {
            port: Some(self.port(conf, &basis, &s)),
            socket: Some(s),
            ..Plan::bare(&basis)
        })
    }

    fn apply(
        &self,
        cx: &Context<'_>,
        add: &Add<'_>,
        result: &mut CniResult,
    ) -> Result<(), CniError> {
        apply(cx, add, self.switch_sets_owner(add.conf), result)
    }

    fn undo(&self, cx: &Context<'_>, r: &Record, daemon_required: bool) -> Result<(), CniError> {
        undo(cx, r, daemon_required)
    }

    fn check(
        &self,
        cx: &Context<'_>,
        conf: &NetConf,
        _inv: &Invocation,
        r: &Record,
    ) -> Result<Option<String>, CniError> {
        check(cx, conf, r)
    }
}

/// ADD of a socket attachment. `switch_sets_owner`: the switch creates the socket with the
/// owner and mode from its devargs (the native vhost-user backend); otherwise (DPDK's
/// net_vhost, memif) it creates it as root and it is fixed up here.
pub fn apply(
    cx: &Context<'_>,
    add: &Add<'_>,
    switch_sets_owner: bool,
    result: &mut CniResult,
) -> Result<(), CniError> {
    let (conf, inv, plan) = (add.conf, add.inv, add.plan);
    let s = plan
        .socket
        .as_ref()
        .expect("socket kinds have a socket plan");
    if s.device.is_none() {
        // The pod's own socket directory. A device's directory exists already (the device
        // plugin made it, the kubelet mounted it) and keeps its owner and mode.
        let parent = &conf.socket_dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(kind::io("creating the socket directory", parent))?;
        let dir_mode = owner::dir_mode(conf.socket_mode);
        match std::fs::DirBuilder::new().mode(dir_mode).create(&s.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(CniError::io("creating the pod socket directory", &s.dir, e))
            }
            _ => {}
        }
        std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(dir_mode))
            .map_err(kind::io("setting the mode of", &s.dir))?;
        kind::chown(&s.dir, conf.socket_owner, conf.socket_group)?;
    }
    if let Some(port) = &plan.port {
        cx.switch.add_port(port)?;
    }
    if s.switch_is_server && !switch_sets_owner {
        if let Ok(meta) = std::fs::symlink_metadata(&s.path) {
            if meta.file_type().is_socket() {
                std::fs::set_permissions(
                    &s.path,
                    std::fs::Permissions::from_mode(conf.socket_mode & 0o666),
                )
                .map_err(kind::io("setting the mode of", &s.path))?;
                kind::chown(&s.path, conf.socket_owner, conf.socket_group)?;
            }
        }
    }
    kind::write_device_info(conf, &s.device_info)?;
    let idx = result.push_interface(Interface {
        name: inv.ifname.clone(),
        mac: Some(heddle_api::MacText(plan.mac).to_string()),
        mtu: conf.mtu,
        sandbox: inv.netns.as_ref().map(|p| p.display().to_string()),
        socket_path: Some(s.path.display().to_string()),
        pci_id: None,
    });
    addresses::assign(conf, inv, result, idx)
}

/// Undo of a socket attachment: the port, then the socket; the pod's socket directory when
/// it is empty. A device's socket goes, its directory stays (the record has no
/// `socket_dir`); no other attachment can hold the device meanwhile (`handoff::resolve`
/// refuses one held by a record).
pub fn undo(cx: &Context<'_>, r: &Record, daemon_required: bool) -> Result<(), CniError> {
    kind::remove_port(cx, r, daemon_required)?;
    if let Some(sock) = &r.socket_path {
        kind::remove_file(sock)?;
    }
    if let Some(dir) = &r.socket_dir {
        // Shared by the pod's other interfaces: removed with the last one.
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

/// CHECK of a socket attachment: the port, and the socket when the switch serves it.
pub fn check(cx: &Context<'_>, conf: &NetConf, r: &Record) -> Result<Option<String>, CniError> {
    let switch_is_server = matches!(
        conf.kind,
        Kind::VhostUser {
            switch_is_server: true,
            ..
        } | Kind::Memif {
            switch_is_server: true,
            ..
        }
    );
    if let Some(broken) = kind::missing_port(cx, r)? {
        return Ok(Some(broken));
    }
    if let (true, Some(sock)) = (switch_is_server, &r.socket_path) {
        if !std::fs::symlink_metadata(sock).is_ok_and(|m| m.file_type().is_socket()) {
            return Ok(Some(format!("socket {} is missing", sock.display())));
        }
    }
    Ok(None)
}
