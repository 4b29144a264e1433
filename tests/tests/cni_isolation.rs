//! Isolation, through the real binaries: a pod can influence paths only inside its own
//! socket directory. Names that would walk out of it (`..`, `/`, NUL, over-long) in the
//! container id, the interface name, `CNI_ARGS` or `runtimeConfig` are refused with the CNI
//! code the spec gives them (4 for a `CNI_*` variable, 7 for the config) and a message
//! naming what to fix, and nothing is created: no directory, no switch port, no record, no
//! VF allocation. A pod's socket directory is closed to another pod's user, and the switch's
//! control socket to every user but root (checked with `setpriv` as other uids).
//!
//! Needs root, about 300 MiB of free 2 MiB hugepages and the binaries built
//! (`cargo build --workspace --bins`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use heddle_tests::cni::CniPlugin;
use heddle_tests::{
    require_dpdk_peers, require_root, require_tool, workspace_binary, SwitchProcess,
};
use serde_json::{json, Value};

/// A native vhost-user network whose directories all live in `dir`.
fn conf(dir: &Path, switch_socket: &Path, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.1.0",
        "name": "n3",
        "type": "heddle-cni",
        "kind": "vhost-user",
        "vlan": 130,
        "socketDir": dir.join("pods"),
        "stateDir": dir.join("cni-state"),
        "switchSocket": switch_socket,
    });
    if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    c
}

/// Runs `args` as `uid`:`gid` with no supplementary groups; (success, stderr).
fn as_user(uid: u32, gid: u32, args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new(require_tool("setpriv")?)
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "--",
        ])
        .args(args)
        .output()
        .context("running setpriv (util-linux)")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Makes `dir` searchable by everyone (a tempdir is 0700), as /run/heddle is on a node.
fn open_to_all(dir: &Path) -> Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[test]
fn names_that_leave_the_pods_directory_are_refused_and_create_nothing() -> Result<()> {
    require_dpdk_peers(300)?;
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start_with_ports(dir.path(), "  []")?;
    let cni = CniPlugin::heddle()?;
    let good_args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=test;K8S_POD_NAME=pod";
    let long_id = "c".repeat(257);
    let nul_dir = format!("{}/pods\u{0}x", dir.path().display());
    // (what, container id, ifname, CNI_ARGS, config changes, code, word the message names)
    let cases: Vec<(&str, &str, &str, &str, Value, u64, &str)> = vec![
        (
            "container id ..",
            "..",
            "net1",
            good_args,
            json!({}),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "container id with /",
            "../../etc",
            "net1",
            good_args,
            json!({}),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "over-long container id",
            &long_id,
            "net1",
            good_args,
            json!({}),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "ifname ..",
            "c1",
            "..",
            good_args,
            json!({}),
            4,
            "CNI_IFNAME",
        ),
        (
            "ifname with /",
            "c1",
            "../x",
            good_args,
            json!({}),
            4,
            "CNI_IFNAME",
        ),
        (
            "over-long ifname",
            "c1",
            "net0123456789abc",
            good_args,
            json!({}),
            4,
            "CNI_IFNAME",
        ),
        (
            "CNI_ARGS pod name with ..",
            "c1",
            "net1",
            "K8S_POD_NAMESPACE=test;K8S_POD_NAME=../../x",
            json!({}),
            4,
            "K8S_POD_NAME",
        ),
        (
            "CNI_ARGS namespace with /",
            "c1",
            "net1",
            "K8S_POD_NAMESPACE=a/b;K8S_POD_NAME=pod",
            json!({}),
            4,
            "K8S_POD_NAMESPACE",
        ),
        (
            "runtimeConfig deviceID outside the device root",
            "c1",
            "net1",
            good_args,
            json!({"runtimeConfig": {"deviceID": "../../etc"}}),
            7,
            "deviceID",
        ),
        (
            "runtimeConfig device-info file with ..",
            "c1",
            "net1",
            good_args,
            json!({"runtimeConfig": {"CNIDeviceInfoFile": "/run/../etc/x.json"}}),
            7,
            "CNIDeviceInfoFile",
        ),
        (
            "socketDir with NUL",
            "c1",
            "net1",
            good_args,
            json!({"socketDir": nul_dir}),
            7,
            "socketDir",
        ),
        (
            "socket path over 107 bytes",
            "c1",
            "net1",
            good_args,
            json!({"socketDir": format!("/run/{}", "d".repeat(100))}),
            7,
            "socketDir",
        ),
    ];
    for (what, id, ifname, args, extra, code, names) in cases {
        let c = conf(dir.path(), &switch.socket(), extra);
        let r = cni.clone().with_env("CNI_ARGS", args).call(
            "ADD",
            id,
            ifname,
            "/run/netns/none",
            &c,
        )?;
        ensure!(!r.ok, "{what}: ADD succeeded: {}", r.json);
        ensure!(
            r.code() == Some(code),
            "{what}: code {:?}, want {code}: {}",
            r.code(),
            r.json
        );
        let msg = r.json["msg"].as_str().unwrap_or_default();
        ensure!(
            msg.contains(names),
            "{what}: the message does not name {names}: {msg}"
        );
        // Nothing at all: not the state directory (records, VF allocations, the lock), not
        // the pods' directory, no port; and nothing next to them.
        let mut entries: Vec<String> = std::fs::read_dir(dir.path())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("switch") && n != "state") // the switch's own
            .collect();
        entries.sort();
        ensure!(entries.is_empty(), "{what}: created {entries:?}");
        ensure!(
            switch.port_names()?.is_empty(),
            "{what}: ports {:?}",
            switch.port_names()?
        );
    }
    Ok(())
}

#[test]
fn a_pods_socket_directory_is_closed_to_another_pods_user() -> Result<()> {
    require_dpdk_peers(300)?;
    require_tool("setpriv")?;
    let dir = tempfile::tempdir()?;
    open_to_all(dir.path())?;
    let switch = SwitchProcess::start_with_ports(dir.path(), "  []")?;
    let cni = CniPlugin::heddle()?;
    // Two pods, each running as its own user (uids no account needs to exist for).
    let (a, b) = (40001u32, 40002u32);
    let conf_of = |uid: u32| {
        conf(
            dir.path(),
            &switch.socket(),
            json!({"socketOwner": uid, "socketGroup": uid}),
        )
    };
    let ra = cni.ok("ADD", "pod-a", "net1", "/run/netns/none", &conf_of(a))?;
    let rb = cni.ok("ADD", "pod-b", "net1", "/run/netns/none", &conf_of(b))?;
    let sock_a = ra["interfaces"][0]["socketPath"]
        .as_str()
        .context("socketPath")?;
    let sock_b = rb["interfaces"][0]["socketPath"]
        .as_str()
        .context("socketPath")?;
    let dir_a = Path::new(sock_a).parent().context("socket dir")?;
    let dir_b = Path::new(sock_b).parent().context("socket dir")?;
    ensure!(dir_a != dir_b, "two pods share {}", dir_a.display());
    for (d, uid) in [(dir_a, a), (dir_b, b)] {
        let m = std::fs::metadata(d)?;
        ensure!(
            (m.uid(), m.gid(), m.mode() & 0o007) == (uid, uid, 0),
            "{}: owner {}:{} mode {:o}",
            d.display(),
            m.uid(),
            m.gid(),
            m.mode() & 0o777
        );
    }
    let (da, sa) = (dir_a.to_str().context("utf-8")?, sock_a);
    // Its own user reads its directory and reaches its socket ...
    let (ok, err) = as_user(a, a, &["ls", da])?;
    ensure!(ok, "pod a's user cannot list its own directory: {err}");
    let (ok, err) = as_user(a, a, &["test", "-S", sa])?;
    ensure!(ok, "pod a's user cannot reach its own socket: {err}");
    // ... another pod's user does neither.
    let (ok, err) = as_user(b, b, &["ls", da])?;
    ensure!(
        !ok && err.contains("Permission denied"),
        "pod b's user listed pod a's directory (or failed otherwise: {err})"
    );
    let (ok, _) = as_user(b, b, &["test", "-e", sa])?;
    ensure!(!ok, "pod b's user reaches pod a's socket {sa}");
    for id in ["pod-a", "pod-b"] {
        cni.ok("DEL", id, "net1", "", &conf_of(a))?;
    }
    ensure!(
        !dir_a.exists() && !dir_b.exists(),
        "DEL left a socket directory"
    );
    Ok(())
}

#[test]
fn the_switch_control_socket_is_root_only() -> Result<()> {
    require_root()?;
    require_dpdk_peers(300)?;
    require_tool("setpriv")?;
    let dir = tempfile::tempdir()?;
    open_to_all(dir.path())?;
    let switch = SwitchProcess::start_with_ports(dir.path(), "  []")?;
    let sock = switch.socket();
    let m = std::fs::metadata(&sock)?;
    ensure!(
        (m.uid(), m.mode() & 0o777) == (0, 0o600),
        "control socket owner {} mode {:o}, want root 600",
        m.uid(),
        m.mode() & 0o777
    );
    // heddlectl copied where every user may run it, so only the socket can refuse them.
    let ctl = dir.path().join("heddlectl");
    std::fs::copy(workspace_binary("heddlectl")?, &ctl)?;
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755))?;
    let ctl = ctl.to_str().context("utf-8")?;
    let sock = sock.to_str().context("utf-8")?;
    let root = Command::new(ctl)
        .args(["--socket", sock, "ports"])
        .output()?;
    ensure!(
        root.status.success(),
        "root cannot use the control socket: {}",
        String::from_utf8_lossy(&root.stderr)
    );
    let (ok, err) = as_user(65534, 65534, &[ctl, "--help"])?;
    ensure!(ok, "nobody cannot run heddlectl at all: {err}");
    let (ok, err) = as_user(65534, 65534, &[ctl, "--socket", sock, "ports"])?;
    ensure!(
        !ok && err.contains("ermission denied"),
        "a non-root user used the control socket, or failed for another reason: {err}"
    );
    Ok(())
}
