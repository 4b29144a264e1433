//! The commands: ADD, DEL, CHECK, STATUS, GC, VERSION. Each takes the checked invocation and
//! stdin, does its effects under the node-wide lock, and returns the JSON to print (if any).

use std::path::Path;

use serde_json::Value;

use crate::attach::{self, addresses, kind};
use crate::config::{self, NetConf};
use crate::error::{code, CniError};
use crate::handoff::{self, Kubelet};
use crate::invocation::{Command, Invocation};
use crate::ipam::{self, IpamCall};
use crate::record::{Record, Store};
use crate::result::CniResult;
use crate::sriov::{self, pf::NetlinkPf};
use crate::switch::Switch;

pub use crate::attach::kind::{Context, Host};

/// Opens a connection to the node daemon behind a socket path.
pub type Connect<'a> = &'a dyn Fn(&Path) -> Box<dyn Switch>;

/// Runs one CNI call. `Ok(Some(json))` is printed on stdout, `Ok(None)` prints nothing.
pub fn run(
    inv: &Invocation,
    stdin: &[u8],
    connect: Connect<'_>,
) -> Result<Option<Value>, CniError> {
    run_on(
        inv,
        stdin,
        connect,
        Host {
            pf: &NetlinkPf,
            pods: &Kubelet,
        },
    )
}

/// [`run`] with the PF given.
pub fn run_on(
    inv: &Invocation,
    stdin: &[u8],
    connect: Connect<'_>,
    host: Host<'_>,
) -> Result<Option<Value>, CniError> {
    match inv.command {
        Command::Version => Ok(Some(config::version_reply(
            config::requested_version(stdin).as_deref(),
        ))),
        Command::Add => {
            let conf = NetConf::parse(stdin, true)?;
            add(&conf, inv, connect, host).map(|r| Some(r.render(&conf.cni_version)))
        }
        Command::Del => {
            let conf = NetConf::parse(stdin, true)?;
            del(&conf, inv, connect, host).map(|()| None)
        }
        Command::Check => {
            let conf = NetConf::parse(stdin, true)?;
            check(&conf, inv, connect, host).map(|()| None)
        }
        Command::Status => {
            let conf = NetConf::parse(stdin, false)?;
            status(&conf, connect).map(|()| None)
        }
        Command::Gc => {
            let conf = NetConf::parse(stdin, false)?;
            gc(&conf, inv, connect, host)?;
            if conf.ipam.is_some() {
                // The delegate releases what no record remembers (a DEL that died part-way).
                ipam::run(&conf.raw, &addresses::ipam_call("GC", inv))?;
            }
            Ok(None)
        }
    }
}

/// ADD: the attachment, created or (when already recorded) returned again. In order: the
/// plan (pure), the node lock, the device and VF this attachment takes, the record (before
/// any effect), the kind's effects, the record completed with the result; a failure undoes
/// what the record names.
pub fn add(
    conf: &NetConf,
    inv: &Invocation,
    connect: Connect<'_>,
    host: Host<'_>,
) -> Result<CniResult, CniError> {
    let kind = attach::of(&conf.kind);
    // Everything that needs no state is checked before the lock (and the state directory).
    let mut plan = attach::plan(conf, inv, handoff::requested(conf)?)?;
    let store = Store::new(&conf.state_dir);
    let _lock = store.lock()?;
    let existing = store.read(&plan.key)?;
    // The device: a repeated ADD keeps the recorded one; else the runtime's deviceID or the
    // first free one of the pod's devices from the kubelet.
    let device = match existing.as_ref().filter(|r| r.result.is_some()) {
        Some(r) => r.device_id.clone(),
        None => handoff::resolve(conf, inv, &plan.key, &store.list()?, host.pods)?,
    };
    if plan.socket.as_ref().and_then(|s| s.device.clone()) != device {
        plan = attach::plan(conf, inv, device.as_deref())?;
    }
    let switch = connect(&conf.switch_socket);
    let cx = context(&*switch, host, conf, inv, inv.netns.as_deref());
    if let Some(existing) = existing {
        if let Some(result) = &existing.result {
            // Repeated ADD: make sure the port is still there and answer the same.
            if let Some(port) = &plan.port {
                switch.add_port(port)?;
            }
            return Ok(result.clone());
        }
        // An ADD that died part-way: clean it up before starting again.
        teardown(&existing, &cx, false)?;
    }
    if let Some(s) = &plan.socket {
        if let Some(id) = &s.device {
            handoff::check_dir(conf, id, &s.dir)?;
        }
    }
    let vf_pci = plan
        .vf
        .as_ref()
        .map(|vf| sriov::pick(&conf.state_dir, &vf.candidates, &plan.key))
        .transpose()?;
    let mut record = Record {
        container_id: plan.key.container_id.clone(),
        ifname: plan.key.ifname.clone(),
        network: conf.name.clone(),
        kind: conf.kind.name().to_owned(),
        switch_socket: conf.switch_socket.clone(),
        port_name: plan.port.as_ref().map(|p| p.name.clone()),
        socket_path: plan.socket.as_ref().map(|s| s.path.clone()),
        // A device's directory is the device plugin's: only the pod's own one is removed.
        socket_dir: plan
            .socket
            .as_ref()
            .filter(|s| s.device.is_none())
            .map(|s| s.dir.clone()),
        device_id: plan.socket.as_ref().and_then(|s| s.device.clone()),
        device_info_file: conf
            .runtime
            .device_info_file
            .as_ref()
            .filter(|_| plan.socket.is_some() || vf_pci.is_some())
            .map(Into::into),
        host_veth: plan.host_veth.clone(),
        vf_pci: vf_pci.clone(),
        ipam_conf: conf.ipam.as_ref().map(|_| conf.raw.clone()),
        cni_path: inv.path.clone(),
        result: None,
    };
    store.write(&record)?;
    let add = kind::Add {
        conf,
        inv,
        plan: &plan,
        vf_pci: vf_pci.as_deref(),
    };
    let mut result = addresses::prev_or_empty(conf)?;
    match kind.apply(&cx, &add, &mut result) {
        Ok(()) => {
            record.result = Some(result.clone());
            if let Err(e) = store.write(&record) {
                let _ = teardown(&record, &cx, true);
                let _ = store.remove(&plan.key);
                return Err(e);
            }
            Ok(result)
        }
        Err(e) => {
            if let Err(undo) = teardown(&record, &cx, false) {
                eprintln!("heddle-cni: undoing a failed ADD also failed: {undo}");
                return Err(e);
            }
            store.remove(&plan.key)?;
            Err(e)
        }
    }
}

/// What a command's kind effects act on: the port behind `switch`, this network's state
/// directory, the invocation's sysfs and `netns` (the pod's; `None` in GC).
fn context<'a>(
    switch: &'a dyn Switch,
    host: Host<'a>,
    conf: &'a NetConf,
    inv: &'a Invocation,
    netns: Option<&'a Path>,
) -> Context<'a> {
    Context {
        switch,
        host,
        state_dir: &conf.state_dir,
        sysfs_root: &inv.sysfs_root,
        netns,
    }
}

/// Undoes what a record says was (or may have been) created: the kind's own effects (the
/// port, socket, veth or VF; every kind's when the record names no known kind), then the IPAM
/// lease and the device-info file. Every step tolerates the thing being gone already.
/// `daemon_required` false lets DEL of an attachment that never reached the daemon succeed
/// while the daemon is down.
fn teardown(r: &Record, cx: &Context<'_>, daemon_required: bool) -> Result<(), CniError> {
    match attach::named(&r.kind) {
        Some(kind) => kind.undo(cx, r, daemon_required)?,
        None => {
            for kind in attach::ALL {
                kind.undo(cx, r, daemon_required)?;
            }
        }
    }
    if let Some(conf) = &r.ipam_conf {
        ipam::run(
            conf,
            &IpamCall {
                command: "DEL",
                container_id: &r.container_id,
                ifname: &r.ifname,
                netns: None,
                path: &r.cni_path,
            },
        )?;
    }
    if let Some(f) = &r.device_info_file {
        kind::remove_file(f)?;
    }
    Ok(())
}

/// DEL: removes everything ADD recorded; succeeds when repeated and without a netns.
pub fn del(
    conf: &NetConf,
    inv: &Invocation,
    connect: Connect<'_>,
    host: Host<'_>,
) -> Result<(), CniError> {
    let store = Store::new(&conf.state_dir);
    let key = inv.key();
    let _lock = store.lock()?;
    let Some(record) = store.read(&key)? else {
        // ADD records before its first effect: no record, nothing to remove.
        return Ok(());
    };
    let switch = connect(&record.switch_socket);
    let cx = context(&*switch, host, conf, inv, inv.netns.as_deref());
    teardown(&record, &cx, true)?;
    store.remove(&key)
}

/// CHECK: the record, and what its kind created (port, socket, veth, VF), are all there.
pub fn check(
    conf: &NetConf,
    inv: &Invocation,
    connect: Connect<'_>,
    host: Host<'_>,
) -> Result<(), CniError> {
    let store = Store::new(&conf.state_dir);
    let key = inv.key();
    let _lock = store.lock()?;
    let Some(record) = store.read(&key)?.filter(|r| r.result.is_some()) else {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!(
                "no attachment {}/{} was added on this node",
                key.container_id, key.ifname
            ),
            format!("no record in {}", conf.state_dir.display()),
        ));
    };
    let switch = connect(&record.switch_socket);
    let cx = context(&*switch, host, conf, inv, inv.netns.as_deref());
    let kinds = match attach::named(&record.kind) {
        Some(kind) => vec![kind],
        None => attach::ALL.to_vec(),
    };
    for kind in kinds {
        if let Some(what) = kind.check(&cx, conf, inv, &record)? {
            return Err(CniError::new(
                code::CHECK_FAILED,
                what,
                "run DEL and ADD again",
            ));
        }
    }
    Ok(())
}

/// STATUS: ready when the node daemon answers and takes ports (code 50 otherwise).
pub fn status(conf: &NetConf, connect: Connect<'_>) -> Result<(), CniError> {
    match connect(&conf.switch_socket).ready() {
        Ok(true) => Ok(()),
        Ok(false) => Err(CniError::new(
            code::NOT_AVAILABLE,
            "plugin not available: heddle-switch is starting and does not take ports yet",
            format!("socket {}", conf.switch_socket.display()),
        )),
        Err(e) => Err(CniError::new(
            code::NOT_AVAILABLE,
            "plugin not available: heddle-switch is not reachable",
            e.details,
        )),
    }
}

/// GC: removes every attachment of this network that is not in `cni.dev/valid-attachments`.
pub fn gc(
    conf: &NetConf,
    inv: &Invocation,
    connect: Connect<'_>,
    host: Host<'_>,
) -> Result<(), CniError> {
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    let store = Store::new(&conf.state_dir);
    let _lock = store.lock()?;
    let mut first_error = None;
    for r in store.list()? {
        if r.network != conf.name
            || valid
                .iter()
                .any(|v| v.container_id == r.container_id && v.ifname == r.ifname)
        {
            continue;
        }
        let switch = connect(&r.switch_socket);
        let cx = context(&*switch, host, conf, inv, None);
        match teardown(&r, &cx, true).and_then(|()| store.remove(&r.key())) {
            Ok(()) => eprintln!("heddle-cni: GC removed {}/{}", r.container_id, r.ifname),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}
