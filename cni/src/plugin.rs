//! The commands: ADD, DEL, CHECK, STATUS, GC, VERSION. Each takes the checked invocation and
//! stdin, does its effects under the node-wide lock, and returns the JSON to print (if any).

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;

use serde_json::Value;

use std::net::IpAddr;

use crate::config::{self, parse_cidr, Kind, NetConf, VhostBackend};
use crate::error::{code, CniError};
use crate::handoff::{self, Kubelet, PodDevices};
use crate::invocation::{Command, Invocation};
use crate::ipam::{self, IpamCall};
use crate::netlink;
use crate::owner;
use crate::plan::{AttachmentKey, Plan};
use crate::record::{Record, Store};
use crate::result::{CniResult, Interface, IpConfig};
use crate::sriov::{self, pf::NetlinkPf, pf::PfControl};
use crate::switch::Switch;

/// Opens a connection to the node daemon behind a socket path.
pub type Connect<'a> = &'a dyn Fn(&Path) -> Box<dyn Switch>;

/// What the effects act on besides the switch: the PF of SR-IOV VFs and the kubelet's
/// PodResources API (doubles in tests).
#[derive(Clone, Copy)]
pub struct Host<'a> {
    /// PF-side VF settings.
    pub pf: &'a dyn PfControl,
    /// Which devices a pod holds.
    pub pods: &'a dyn PodDevices,
}

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
            check(&conf, inv, connect).map(|()| None)
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
                ipam::run(&conf.raw, &ipam_call("GC", inv))?;
            }
            Ok(None)
        }
    }
}

fn io<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CniError + 'a {
    let what = what.to_owned();
    move |e| CniError::io(&what, path, e)
}

fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), CniError> {
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    std::os::unix::fs::chown(path, uid, gid).map_err(io("changing the owner of", path))
}

/// Where a teardown finds what is not in the record.
struct Undo<'a> {
    switch: &'a dyn Switch,
    host: Host<'a>,
    state_dir: &'a Path,
    sysfs_root: &'a Path,
    netns: Option<&'a Path>,
}

/// ADD: the attachment, created or (when already recorded) returned again.
pub fn add(
    conf: &NetConf,
    inv: &Invocation,
    connect: Connect<'_>,
    host: Host<'_>,
) -> Result<CniResult, CniError> {
    // Everything that needs no state is checked before the lock (and the state directory).
    let mut plan = Plan::new(conf, inv, handoff::requested(conf)?)?;
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
        plan = Plan::new(conf, inv, device.as_deref())?;
    }
    let switch = connect(&conf.switch_socket);
    let undo = Undo {
        switch: &*switch,
        host,
        state_dir: &conf.state_dir,
        sysfs_root: &inv.sysfs_root,
        netns: inv.netns.as_deref(),
    };
    if let Some(existing) = existing {
        if let Some(result) = &existing.result {
            // Repeated ADD: make sure the port is still there and answer the same.
            if let Some(port) = &plan.port {
                switch.add_port(port)?;
            }
            return Ok(result.clone());
        }
        // An ADD that died part-way: clean it up before starting again.
        teardown(&existing, &undo, false)?;
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
    match effects(conf, inv, &plan, vf_pci.as_deref(), &undo) {
        Ok(result) => {
            record.result = Some(result.clone());
            if let Err(e) = store.write(&record) {
                let _ = teardown(&record, &undo, true);
                let _ = store.remove(&plan.key);
                return Err(e);
            }
            Ok(result)
        }
        Err(e) => {
            if let Err(undo) = teardown(&record, &undo, false) {
                eprintln!("heddle-cni: undoing a failed ADD also failed: {undo}");
                return Err(e);
            }
            store.remove(&plan.key)?;
            Err(e)
        }
    }
}

fn prev_or_empty(conf: &NetConf) -> Result<CniResult, CniError> {
    conf.prev_result
        .as_ref()
        .map(CniResult::from_value)
        .transpose()
        .map(Option::unwrap_or_default)
}

fn static_ips(conf: &NetConf, inv: &Invocation) -> Result<Vec<String>, CniError> {
    let mut ips = conf.runtime.ips.clone();
    if let Some(ip) = &inv.args.ip {
        if parse_cidr(ip).is_none() {
            return Err(CniError::env(
                "CNI_ARGS IP must be an address with a prefix, e.g. 10.1.0.5/24",
                format!("got {ip:?}"),
            ));
        }
        ips.push(ip.clone());
    }
    Ok(ips)
}

/// The addresses of interface `idx` in `result`, and its routes (a route without a gateway
/// takes the gateway of an IP of the same family), as netlink wants them.
#[allow(clippy::type_complexity)]
fn pod_addressing(
    result: &CniResult,
    idx: usize,
) -> (Vec<(IpAddr, u8)>, Vec<(IpAddr, u8, Option<IpAddr>)>) {
    let addresses = result
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(idx))
        .filter_map(|ip| parse_cidr(&ip.address))
        .collect();
    let routes = result
        .routes
        .iter()
        .filter_map(|r| {
            let (dst, len) = parse_cidr(&r.dst)?;
            let gw = r.gw.as_deref().and_then(|g| g.parse().ok()).or_else(|| {
                result
                    .ips
                    .iter()
                    .filter_map(|ip| ip.gateway.as_deref()?.parse().ok())
                    .find(|g: &IpAddr| g.is_ipv4() == dst.is_ipv4())
            });
            Some((dst, len, gw))
        })
        .collect();
    (addresses, routes)
}

fn write_device_info(conf: &NetConf, info: &Value) -> Result<(), CniError> {
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

/// The config an IPAM delegate gets: the network config with the static addresses asked for
/// (`runtimeConfig.ips` and CNI_ARGS `IP`) in `runtimeConfig.ips`, the "ips" capability the
/// delegate honours (it gets no CNI_ARGS). With a delegate, the addresses are its to give.
fn delegate_conf(conf: &NetConf, inv: &Invocation) -> Result<Value, CniError> {
    let mut raw = conf.raw.clone();
    let ips = static_ips(conf, inv)?;
    if !ips.is_empty() {
        raw["runtimeConfig"]["ips"] = Value::from(ips);
    }
    Ok(raw)
}

fn effects(
    conf: &NetConf,
    inv: &Invocation,
    plan: &Plan,
    vf_pci: Option<&str>,
    undo: &Undo<'_>,
) -> Result<CniResult, CniError> {
    let switch = undo.switch;
    let mut result = prev_or_empty(conf)?;
    let mac = heddle_api::MacText(plan.mac).to_string();
    let sandbox = inv.netns.as_ref().map(|p| p.display().to_string());
    match &conf.kind {
        Kind::VhostUser { .. } | Kind::Memif { .. } => {
            let s = plan
                .socket
                .as_ref()
                .expect("socket kinds have a socket plan");
            if s.device.is_none() {
                // The pod's own socket directory. A device's directory exists already (the
                // device plugin made it, the kubelet mounted it) and keeps its owner and mode.
                let parent = &conf.socket_dir;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(io("creating the socket directory", parent))?;
                let dir_mode = owner::dir_mode(conf.socket_mode);
                match std::fs::DirBuilder::new().mode(dir_mode).create(&s.dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                        return Err(CniError::io("creating the pod socket directory", &s.dir, e))
                    }
                    _ => {}
                }
                std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(dir_mode))
                    .map_err(io("setting the mode of", &s.dir))?;
                chown(&s.dir, conf.socket_owner, conf.socket_group)?;
            }
            if let Some(port) = &plan.port {
                switch.add_port(port)?;
            }
            // The native backend creates the socket with the owner and mode from its devargs;
            // DPDK's net_vhost (and memif) create it as root, so it is fixed up here.
            let native = matches!(
                conf.kind,
                Kind::VhostUser {
                    backend: VhostBackend::Native,
                    ..
                }
            );
            if s.switch_is_server && !native {
                if let Ok(meta) = std::fs::symlink_metadata(&s.path) {
                    if meta.file_type().is_socket() {
                        std::fs::set_permissions(
                            &s.path,
                            std::fs::Permissions::from_mode(conf.socket_mode & 0o666),
                        )
                        .map_err(io("setting the mode of", &s.path))?;
                        chown(&s.path, conf.socket_owner, conf.socket_group)?;
                    }
                }
            }
            write_device_info(conf, &s.device_info)?;
            let idx = result.push_interface(Interface {
                name: inv.ifname.clone(),
                mac: Some(mac),
                mtu: conf.mtu,
                sandbox,
                socket_path: Some(s.path.display().to_string()),
                pci_id: None,
            });
            assign_addresses(conf, inv, &mut result, idx)?;
        }
        Kind::Kernel => {
            let netns = inv.netns.clone().ok_or_else(|| {
                CniError::env(
                    "CNI_NETNS is required for a kernel attachment",
                    "it is empty",
                )
            })?;
            let host = plan
                .host_veth
                .clone()
                .expect("kernel plans have a host veth");
            // The host end first (no sandbox), then the pod end, as the reference plugins do.
            result.push_interface(Interface {
                name: host.clone(),
                mac: None,
                mtu: conf.mtu,
                ..Default::default()
            });
            let pod_idx = result.push_interface(Interface {
                name: inv.ifname.clone(),
                mac: Some(mac),
                mtu: conf.mtu,
                sandbox,
                ..Default::default()
            });
            assign_addresses(conf, inv, &mut result, pod_idx)?;
            let (addresses, routes) = pod_addressing(&result, pod_idx);
            netlink::create_veth(
                &host,
                &netlink::PodSide {
                    netns,
                    tmp_name: plan
                        .peer_tmp
                        .clone()
                        .expect("kernel plans have a peer name"),
                    ifname: inv.ifname.clone(),
                    mac: Some(plan.mac),
                    mtu: Some(conf.mtu.unwrap_or(1500)),
                    addresses,
                    routes,
                },
            )?;
            if let Some(port) = &plan.port {
                switch.add_port(port)?;
            }
        }
        Kind::Sriov(sriov_conf) => {
            let netns = inv.netns.clone().ok_or_else(|| {
                CniError::env(
                    "CNI_NETNS is required for an sriov attachment",
                    "it is empty",
                )
            })?;
            let pci = vf_pci.expect("sriov ADDs pick a VF before their effects");
            let vf_plan = plan.vf.as_ref().expect("sriov plans have a VF plan");
            let idx = result.push_interface(Interface {
                name: inv.ifname.clone(),
                mtu: conf.mtu,
                sandbox,
                pci_id: Some(pci.to_owned()),
                ..Default::default()
            });
            assign_addresses(conf, inv, &mut result, idx)?;
            let (addresses, routes) = pod_addressing(&result, idx);
            let attached = sriov::attach(
                &conf.state_dir,
                &inv.sysfs_root,
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
                undo.host.pf,
            )?;
            let iface = &mut result.interfaces[idx];
            iface.mac = attached.mac.map(|m| heddle_api::MacText(m).to_string());
            iface.mtu = attached.mtu;
            write_device_info(conf, &sriov::device_info(&attached.vf))?;
        }
    }
    Ok(result)
}

fn ipam_call<'a>(command: &'a str, inv: &'a Invocation) -> IpamCall<'a> {
    IpamCall {
        command,
        container_id: &inv.container_id,
        ifname: &inv.ifname,
        netns: inv.netns.as_deref(),
        path: &inv.path,
    }
}

/// Gives interface `idx` its addresses: from the IPAM delegate when the config has one (it
/// gets the static requests in `runtimeConfig.ips`), else the static requests themselves.
fn assign_addresses(
    conf: &NetConf,
    inv: &Invocation,
    result: &mut CniResult,
    idx: usize,
) -> Result<(), CniError> {
    if conf.ipam.is_some() {
        let r = ipam::run(&delegate_conf(conf, inv)?, &ipam_call("ADD", inv))?.unwrap_or_default();
        absorb_ipam(result, r, idx);
    } else {
        for ip in static_ips(conf, inv)? {
            result.ips.push(IpConfig {
                address: ip,
                gateway: None,
                interface: Some(idx),
            });
        }
    }
    Ok(())
}

fn absorb_ipam(result: &mut CniResult, r: CniResult, iface: usize) {
    for mut ip in r.ips {
        ip.interface = Some(iface);
        result.ips.push(ip);
    }
    result.routes.extend(r.routes);
    if !r.dns.is_null() {
        result.dns = r.dns;
    }
}

/// Undoes what a record says was (or may have been) created. Every step tolerates the thing
/// being gone already. `daemon_required` false lets DEL of an attachment that never reached
/// the daemon succeed while the daemon is down.
fn teardown(r: &Record, undo: &Undo<'_>, daemon_required: bool) -> Result<(), CniError> {
    if let Some(port) = &r.port_name {
        match undo.switch.remove_port(port) {
            Ok(()) => {}
            Err(e) if e.code == code::TRY_AGAIN_LATER && !daemon_required => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(pci) = &r.vf_pci {
        sriov::release(
            undo.state_dir,
            undo.sysfs_root,
            pci,
            &r.key(),
            undo.netns,
            undo.host.pf,
        )?;
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
    if let Some(host) = &r.host_veth {
        netlink::delete_link(host)?;
    }
    // A device's socket goes, its directory stays (see `socket_dir`); no other attachment
    // can hold the device meanwhile (handoff::resolve refuses one held by a record).
    for f in [&r.device_info_file, &r.socket_path].into_iter().flatten() {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(CniError::io("removing", f, e))
            }
            _ => {}
        }
    }
    if let Some(dir) = &r.socket_dir {
        // Shared by the pod's other interfaces: removed with the last one.
        let _ = std::fs::remove_dir(dir);
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
    let key = AttachmentKey {
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
    };
    let _lock = store.lock()?;
    let Some(record) = store.read(&key)? else {
        // ADD records before its first effect: no record, nothing to remove.
        return Ok(());
    };
    let switch = connect(&record.switch_socket);
    let undo = Undo {
        switch: &*switch,
        host,
        state_dir: &conf.state_dir,
        sysfs_root: &inv.sysfs_root,
        netns: inv.netns.as_deref(),
    };
    teardown(&record, &undo, true)?;
    store.remove(&key)
}

/// CHECK: the record, the port and the socket or interface are all there.
pub fn check(conf: &NetConf, inv: &Invocation, connect: Connect<'_>) -> Result<(), CniError> {
    let store = Store::new(&conf.state_dir);
    let key = AttachmentKey {
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
    };
    let _lock = store.lock()?;
    let broken = |what: String| {
        Err(CniError::new(
            code::CHECK_FAILED,
            what,
            "run DEL and ADD again",
        ))
    };
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
    if let Some(port) = &record.port_name {
        if !switch.has_port(port)? {
            return broken(format!("switch port {port} is missing"));
        }
    }
    if let Some(pci) = &record.vf_pci {
        if let Some(what) = sriov::check(&conf.state_dir, pci, &key, inv.netns.as_deref())? {
            return broken(what);
        }
    }
    if let Some(host) = &record.host_veth {
        if !netlink::link_exists(host) {
            return broken(format!("host interface {host} is missing"));
        }
        if let Some(ns) = &inv.netns {
            if !netlink::pod_link_exists(ns, &inv.ifname)? {
                return broken(format!("{} is missing in {}", inv.ifname, ns.display()));
            }
        }
    }
    if let (
        Kind::VhostUser {
            switch_is_server: true,
            ..
        }
        | Kind::Memif {
            switch_is_server: true,
            ..
        },
        Some(sock),
    ) = (&conf.kind, &record.socket_path)
    {
        if !std::fs::symlink_metadata(sock).is_ok_and(|m| m.file_type().is_socket()) {
            return broken(format!("socket {} is missing", sock.display()));
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
        let undo = Undo {
            switch: &*switch,
            host,
            state_dir: &conf.state_dir,
            sysfs_root: &inv.sysfs_root,
            netns: None,
        };
        match teardown(&r, &undo, true).and_then(|()| store.remove(&r.key())) {
            Ok(()) => eprintln!("heddle-cni: GC removed {}/{}", r.container_id, r.ifname),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}
