//! The chart's node DaemonSet run as a podman pod on this machine (`podman kube play`), from
//! Heddle's image (`deploy/image/build.sh`).
//!
//! [`node_pod`] turns the DaemonSet's pod template into a Pod, changing only what podman
//! cannot do or what would touch the host's real directories, and lists every change it made
//! ([`NodePod::adaptations`]):
//!
//! - each `hostPath` is pointed at a per-test directory ([`HostDirs::paths`]); a `hostPath`
//!   without one is an error, so a test never writes into the host's /opt/cni/bin or
//!   /run/heddle. `/sys` (read-only in the template) stays the host's.
//! - a host directory the template mounts at its own path (the socket root: the CNI plugin
//!   on the host and the switch in the container name the same socket paths) is also mounted
//!   at the per-test path, so that property still holds;
//! - an `emptyDir` of `medium: HugePages-<size>` (the kubelet mounts a hugetlbfs per pod)
//!   becomes a `hostPath` to a hugetlbfs the test mounted ([`Hugetlbfs`]);
//! - a `secret` volume becomes a `hostPath` to `<HostDirs::secrets>/<secretName>` holding the
//!   files the kubelet would project; a `configMap` volume a `hostPath` to its keys written as
//!   files ([`NodePod::files`]), and a `subPath` mount of one (podman 4.3 ignores `subPath`) a
//!   mount of that one file;
//! - capabilities the host's bounding set lacks are dropped from `add` (runc cannot grant
//!   them);
//! - init containers run first as a pod of their own (`restartPolicy: Never`), then the pod
//!   without them: podman 4.3's init containers stall `kube play` for 20 s on a lock;
//! - `fieldRef: spec.nodeName` becomes the host name; the environment the kubelet gives every
//!   container (`KUBERNETES_SERVICE_HOST`/`_PORT`) is added when the test names it;
//! - containers that need a Kubernetes API server or a kubelet are left out by name.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// The image the chart's pods run: `localhost/heddle:<Chart appVersion>`.
pub const HEDDLE_IMAGE: &str = "localhost/heddle:0.1.0";

/// `deploy/image/build.sh` in this workspace.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/image/build.sh")
}

/// Runs `deploy/image/build.sh` (seconds when the image is up to date with the sources) and
/// fails with its output unless [`HEDDLE_IMAGE`] then exists.
pub fn require_image() -> Result<()> {
    let script = build_script();
    let out = Command::new(&script)
        .env("HEDDLE_IMAGE", HEDDLE_IMAGE)
        .output()
        .with_context(|| format!("running {} (run it by hand as root)", script.display()))?;
    if !out.status.success() {
        bail!(
            "deploy/image/build.sh failed ({}); run it by hand as root and fix what it says:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The image of the dpdk-testpmd pods: `tests/src/testdata/testpmd.Containerfile`.
pub const TESTPMD_IMAGE: &str = "localhost/heddle-testpmd:bookworm";

/// Builds [`TESTPMD_IMAGE`] unless it exists built from the present Containerfile (label
/// `dev.heddle.containerfile-sha256`): Debian's dpdk-testpmd on the base image of
/// `deploy/image/build.sh` (run [`require_image`] first); about a minute once, then nothing.
pub fn require_testpmd_image() -> Result<()> {
    let conf = crate::podman::BASE_CONF;
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/testdata/testpmd.Containerfile");
    let out = Command::new("sha256sum").arg(&file).output()?;
    let hash = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?
        .to_owned();
    let present = Command::new("podman")
        .env("CONTAINERS_CONF", conf)
        .args([
            "image",
            "inspect",
            "--format",
            "{{index .Labels \"dev.heddle.containerfile-sha256\"}}",
            TESTPMD_IMAGE,
        ])
        .output()?;
    if present.status.success() && String::from_utf8_lossy(&present.stdout).trim() == hash {
        return Ok(());
    }
    let out = Command::new("podman")
        .env("CONTAINERS_CONF", conf)
        .args([
            "build",
            "--pull=never",
            "--network=host",
            "--tag",
            TESTPMD_IMAGE,
        ])
        .arg(format!("--label=dev.heddle.containerfile-sha256={hash}"))
        .arg("--file")
        .arg(&file)
        .arg(
            file.parent()
                .context("the Containerfile is in a directory")?,
        )
        .output()
        .context("running podman build")?;
    if !out.status.success() {
        bail!(
            "building {TESTPMD_IMAGE} from {} failed (it needs deploy/image/build.sh's base image and Debian's mirror):\n{}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Where the pod's host paths go in a test.
#[derive(Debug, Clone, Default)]
pub struct HostDirs {
    /// `(host path in the template, per-test directory)`.
    pub paths: Vec<(String, PathBuf)>,
    /// The hugetlbfs standing in for `emptyDir: {medium: HugePages-*}`.
    pub hugepages: Option<PathBuf>,
    /// Holds one directory per Secret name with its files.
    pub secrets: Option<PathBuf>,
    /// Where the ConfigMaps' keys are written, one directory per ConfigMap.
    pub config_maps: Option<PathBuf>,
    /// Environment the kubelet would give every container.
    pub kubelet_env: Vec<(String, String)>,
    /// Containers (or init containers) to leave out, by name.
    pub leave_out: Vec<String>,
}

/// A Pod for `podman kube play`, and the ConfigMaps its volumes name.
#[derive(Debug, Clone)]
pub struct NodePod {
    /// The Pod.
    pub pod: Value,
    /// The template's init containers as a pod of their own (`restartPolicy: Never`), to run
    /// to completion before [`NodePod::pod`].
    pub init_pod: Option<Value>,
    /// Files the caller must write before `podman kube play`: the keys of the ConfigMaps the
    /// Pod mounts, under [`HostDirs::config_maps`].
    pub files: Vec<(PathBuf, String)>,
    /// What was changed from the template, one sentence each.
    pub adaptations: Vec<String>,
}

/// Linux capability numbers (`CAP_*`), for checking against the bounding set.
const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// This process's capability bounding set (`CapBnd` of /proc/self/status).
pub fn bounding_set() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .context("no CapBnd in /proc/self/status")?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

/// The host's name, for `fieldRef: spec.nodeName`.
fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// The objects of a multi-document YAML stream (empty documents skipped).
pub fn yaml_documents(text: &str) -> Result<Vec<Value>> {
    let mut out = vec![];
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(doc).context("parsing YAML")?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// `deploy/helm/heddle` in this workspace.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/heddle")
}

/// Renders the chart with `values` (release `heddle`, namespace `heddle-system`) by Helm's own
/// engine, the helm-python-sdk wheel in the venv of `deploy/scripts/install-py.sh`
/// (`$HEDDLE_VENV`, default /opt/heddle/venv), as the chart's tests do; returns every object.
pub fn render_chart(values: &Value) -> Result<Vec<Value>> {
    const RENDER: &str = r#"
import json, sys, helm_python
with helm_python.Chart.load(sys.argv[1]) as c:
    out = c.render(json.loads(sys.argv[2]), name="heddle", namespace="heddle-system")
for path in sorted(out):
    if not path.endswith("NOTES.txt"):
        print("---")
        print(out[path])
"#;
    let venv = std::env::var_os("HEDDLE_VENV").unwrap_or_else(|| "/opt/heddle/venv".into());
    let python = Path::new(&venv).join("bin/python");
    if !python.is_file() {
        bail!(
            "{} is missing: run deploy/scripts/install-py.sh (Helm's engine for rendering the chart)",
            python.display()
        );
    }
    let out = Command::new(&python)
        .arg("-c")
        .arg(RENDER)
        .arg(chart_dir())
        .arg(values.to_string())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "rendering the chart failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    yaml_documents(&String::from_utf8_lossy(&out.stdout))
}

/// Turns the first DaemonSet of `objects` into a Pod named `name` (see the module docs for
/// every change), with the host's capability bounding set `cap_bnd`.
pub fn node_pod(objects: &[Value], name: &str, host: &HostDirs, cap_bnd: u64) -> Result<NodePod> {
    let ds = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .context("no DaemonSet among the objects")?;
    let template = &ds["spec"]["template"];
    let mut spec = template["spec"].clone();
    let mut notes = vec![];

    for key in ["initContainers", "containers"] {
        if let Some(list) = spec[key].as_array_mut() {
            list.retain(|c| {
                let n = c["name"].as_str().unwrap_or_default();
                let keep = !host.leave_out.iter().any(|l| l == n);
                if !keep {
                    notes.push(format!("left out container {n}"));
                }
                keep
            });
        }
    }

    // Volumes only left-out containers used go too (podman would still create them).
    let used_volumes = |spec: &Value| -> Vec<String> {
        ["initContainers", "containers"]
            .iter()
            .flat_map(|k| spec[*k].as_array().cloned().unwrap_or_default())
            .flat_map(|c| c["volumeMounts"].as_array().cloned().unwrap_or_default())
            .filter_map(|m| m["name"].as_str().map(str::to_owned))
            .collect()
    };
    let used = used_volumes(&spec);
    if let Some(vols) = spec["volumes"].as_array_mut() {
        vols.retain(|v| used.iter().any(|u| v["name"] == u.as_str()));
    }
    // Volumes: (volume name, original host path, per-test path) of redirected host paths.
    let mut redirected: Vec<(String, String, PathBuf)> = vec![];
    // configMap volumes: (volume name, directory of its files).
    let mut config_dirs: Vec<(String, PathBuf)> = vec![];
    let mut files = vec![];
    for vol in spec["volumes"].as_array_mut().into_iter().flatten() {
        let vname = vol["name"].as_str().unwrap_or_default().to_owned();
        if let Some(p) = vol["hostPath"]["path"].as_str().map(str::to_owned) {
            if p == "/sys" {
                continue;
            }
            let Some((_, to)) = host.paths.iter().find(|(from, _)| *from == p) else {
                bail!("hostPath {p} (volume {vname}) has no per-test directory: add it to HostDirs::paths");
            };
            vol["hostPath"] = json!({"path": to, "type": "Directory"});
            notes.push(format!("hostPath {p} -> {}", to.display()));
            redirected.push((vname, p, to.clone()));
        } else if vol["emptyDir"]["medium"]
            .as_str()
            .is_some_and(|m| m.starts_with("HugePages"))
        {
            let to = host
                .hugepages
                .as_ref()
                .context("the pod has a HugePages emptyDir: set HostDirs::hugepages")?;
            notes.push(format!(
                "emptyDir {} -> hostPath {} (a hugetlbfs mounted for the test)",
                vol["emptyDir"]["medium"].as_str().unwrap_or_default(),
                to.display()
            ));
            *vol = json!({"name": vname, "hostPath": {"path": to, "type": "Directory"}});
        } else if let Some(secret) = vol["secret"]["secretName"].as_str().map(str::to_owned) {
            let root = host
                .secrets
                .as_ref()
                .context("the pod mounts a Secret: set HostDirs::secrets")?;
            let to = root.join(&secret);
            notes.push(format!("secret {secret} -> hostPath {}", to.display()));
            *vol = json!({"name": vname, "hostPath": {"path": to, "type": "Directory"}});
        } else if let Some(cm) = vol["configMap"]["name"].as_str().map(str::to_owned) {
            let root = host
                .config_maps
                .as_ref()
                .context("the pod mounts a ConfigMap: set HostDirs::config_maps")?;
            let obj = objects
                .iter()
                .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == cm.as_str())
                .with_context(|| {
                    format!("the pod mounts ConfigMap {cm}, which is not among the objects")
                })?;
            let to = root.join(&cm);
            for (key, value) in obj["data"].as_object().into_iter().flatten() {
                files.push((to.join(key), value.as_str().unwrap_or_default().to_owned()));
            }
            notes.push(format!(
                "configMap {cm} -> hostPath {} (its keys as files, as the kubelet projects them)",
                to.display()
            ));
            *vol = json!({"name": vname, "hostPath": {"path": to, "type": "Directory"}});
            config_dirs.push((vname, to));
        }
    }

    let node = node_name();
    let mut new_volumes = vec![];
    for key in ["initContainers", "containers"] {
        for c in spec[key].as_array_mut().into_iter().flatten() {
            let cname = c["name"].as_str().unwrap_or_default().to_owned();
            // Identity mounts of redirected host directories.
            let mut extra = vec![];
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                for (vname, from, to) in &redirected {
                    if m["name"] == vname.as_str() && m["mountPath"] == from.as_str() {
                        extra.push(json!({"name": vname, "mountPath": to}));
                        notes.push(format!(
                            "{cname}: {from} also mounted at {} (same path as on the host)",
                            to.display()
                        ));
                    }
                }
            }
            if let Some(mounts) = c["volumeMounts"].as_array_mut() {
                mounts.extend(extra);
                // podman 4.3 ignores subPath: mount the one file instead.
                for m in mounts.iter_mut() {
                    let Some(sub) = m["subPath"].as_str().map(str::to_owned) else {
                        continue;
                    };
                    let Some((vname, dir)) =
                        config_dirs.iter().find(|(v, _)| m["name"] == v.as_str())
                    else {
                        bail!("{cname}: subPath {sub} of a volume that is not a ConfigMap: podman 4.3 cannot mount it");
                    };
                    let file_vol = format!("{vname}-{}", sub.replace(['.', '/', '_'], "-"));
                    notes.push(format!(
                        "{cname}: subPath {sub} of {vname} -> its own file volume {file_vol}"
                    ));
                    new_volumes.push(json!({"name": file_vol, "hostPath": {"path": dir.join(&sub), "type": "File"}}));
                    let (path, ro) = (m["mountPath"].clone(), m["readOnly"].clone());
                    *m = json!({"name": file_vol, "mountPath": path, "readOnly": ro.as_bool().unwrap_or(false)});
                }
            }
            // Capabilities runc cannot grant here.
            if let Some(add) = c["securityContext"]["capabilities"]["add"].as_array_mut() {
                add.retain(|cap| {
                    let n = cap.as_str().unwrap_or_default();
                    let n = n.strip_prefix("CAP_").unwrap_or(n);
                    let granted = CAPABILITIES
                        .iter()
                        .position(|c| *c == n)
                        .is_none_or(|bit| cap_bnd & (1 << bit) != 0);
                    if !granted {
                        notes.push(format!(
                            "{cname}: capability {n} dropped (not in this host's bounding set)"
                        ));
                    }
                    granted
                });
            }
            for e in c["env"].as_array_mut().into_iter().flatten() {
                if e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" {
                    let n = e["name"].clone();
                    *e = json!({"name": n, "value": node});
                    notes.push(format!("{cname}: spec.nodeName -> {node}"));
                }
            }
            if !host.kubelet_env.is_empty() {
                let env = c["env"].as_array_mut();
                let env = match env {
                    Some(e) => e,
                    None => {
                        c["env"] = json!([]);
                        c["env"].as_array_mut().expect("just set")
                    }
                };
                for (k, v) in &host.kubelet_env {
                    env.push(json!({"name": k, "value": v}));
                }
            }
        }
    }

    if let Some(vols) = spec["volumes"].as_array_mut() {
        vols.extend(new_volumes);
    }
    let mut labels = template["metadata"]["labels"].clone();
    if labels.is_null() {
        labels = json!({});
    }
    // podman 4.3's init containers stall `kube play` for 20 s (the container's cleanup waits
    // for a lock kube play holds) or, as "once", fail to remove themselves: they run first as
    // a pod of their own that exits, then the pod without them.
    let init = spec
        .as_object_mut()
        .and_then(|o| o.remove("initContainers"))
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    let init_pod = (!init.is_empty()).then(|| {
        notes.push(format!(
            "init containers run as pod {name}-init (restartPolicy Never) before the pod: podman 4.3's init containers stall kube play"
        ));
        let mut s = spec.clone();
        s["containers"] = Value::Array(init);
        s["restartPolicy"] = json!("Never");
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": format!("{name}-init"), "labels": labels.clone()},
            "spec": s,
        })
    });
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    });
    Ok(NodePod {
        pod,
        init_pod,
        files,
        adaptations: notes,
    })
}

/// A hugetlbfs of 2 MiB pages mounted for one test, unmounted on drop (as the kubelet
/// unmounts a pod's HugePages emptyDir).
#[derive(Debug)]
pub struct Hugetlbfs {
    path: PathBuf,
}

impl Hugetlbfs {
    /// Creates `path` and mounts a hugetlbfs (`pagesize=2M`) on it.
    pub fn mount(path: &Path) -> Result<Hugetlbfs> {
        std::fs::create_dir_all(path)?;
        let out = Command::new("mount")
            .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "nodev"])
            .arg(path)
            .output()
            .context("spawning mount")?;
        if !out.status.success() {
            bail!(
                "mount -t hugetlbfs on {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Hugetlbfs {
            path: path.to_owned(),
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts it now; fails if umount does.
    pub fn unmount(mut self) -> Result<()> {
        let path = std::mem::take(&mut self.path);
        let out = Command::new("umount").arg(&path).output()?;
        if !out.status.success() {
            bail!(
                "umount {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Hugetlbfs {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node DaemonSet in the chart's shape, so these tests need no Helm engine.
    const NODE_OBJECTS: &str = include_str!("testdata/node-daemonset.yaml");

    fn objects() -> Vec<Value> {
        yaml_documents(NODE_OBJECTS).unwrap()
    }

    fn dirs() -> HostDirs {
        HostDirs {
            paths: [
                "/run/heddle",
                "/var/lib/heddle",
                "/dev/vfio",
                "/opt/cni/bin",
                "/etc/cni/net.d",
            ]
            .iter()
            .map(|p| (p.to_string(), PathBuf::from(format!("/tmp/t{p}"))))
            .collect(),
            hugepages: Some("/tmp/t/huge".into()),
            secrets: Some("/tmp/t/secrets".into()),
            config_maps: Some("/tmp/t/cm".into()),
            kubelet_env: vec![("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into())],
            leave_out: vec!["node-agent".into()],
        }
    }

    fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
        pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
    }

    #[test]
    fn every_host_path_goes_to_a_test_directory_and_the_socket_root_keeps_its_path() {
        let p = node_pod(&objects(), "p", &dirs(), u64::MAX).unwrap();
        let vols = p.pod["spec"]["volumes"].as_array().unwrap();
        for v in vols {
            if let Some(path) = v["hostPath"]["path"].as_str() {
                assert!(path == "/sys" || path.starts_with("/tmp/t"), "{v}");
            }
        }
        let hp = vols.iter().find(|v| v["name"] == "hugepages").unwrap();
        assert_eq!(hp["hostPath"]["path"], "/tmp/t/huge");
        let token = vols.iter().find(|v| v["name"] == "node-token").unwrap();
        assert_eq!(
            token["hostPath"]["path"],
            "/tmp/t/secrets/heddle-node-token"
        );
        let mounts = container(&p.pod, "switch")["volumeMounts"]
            .as_array()
            .unwrap();
        for path in ["/run/heddle", "/tmp/t/run/heddle"] {
            assert!(
                mounts
                    .iter()
                    .any(|m| m["name"] == "run" && m["mountPath"] == path),
                "{path}: {mounts:?}"
            );
        }
        let (file, text) = &p.files[0];
        assert_eq!(file, Path::new("/tmp/t/cm/heddle-node-default/switch.yaml"));
        assert!(text.contains("socket: /run/heddle/switch.sock"), "{text}");
        let config = mounts
            .iter()
            .find(|m| m["mountPath"] == "/etc/heddle/switch.yaml")
            .unwrap();
        assert!(config.get("subPath").is_none(), "{config}");
        let vol = vols.iter().find(|v| v["name"] == config["name"]).unwrap();
        assert_eq!(vol["hostPath"], json!({"path": file, "type": "File"}));
    }

    #[test]
    fn an_unmapped_host_path_is_refused() {
        let mut d = dirs();
        d.paths.retain(|(from, _)| from != "/opt/cni/bin");
        let err = node_pod(&objects(), "p", &d, u64::MAX).unwrap_err();
        assert!(err.to_string().contains("hostPath /opt/cni/bin"), "{err}");
    }

    #[test]
    fn left_out_containers_go_and_missing_capabilities_are_dropped() {
        let without_sys_resource = !(1u64 << 24);
        let p = node_pod(&objects(), "p", &dirs(), without_sys_resource).unwrap();
        let names: Vec<_> = p.pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["switch"]);
        let add = &container(&p.pod, "switch")["securityContext"]["capabilities"]["add"];
        assert_eq!(add, &json!(["IPC_LOCK", "NET_ADMIN", "NET_RAW"]));
        assert!(p.pod["spec"].get("initContainers").is_none());
        let init = p.init_pod.as_ref().unwrap();
        assert_eq!(init["spec"]["restartPolicy"], "Never");
        let env = container(init, "install-cni")["env"].as_array().unwrap();
        assert!(env
            .iter()
            .any(|e| e["name"] == "KUBERNETES_SERVICE_HOST" && e["value"] == "127.0.0.1"));
        assert!(p.adaptations.iter().any(|a| a.contains("SYS_RESOURCE")));
    }
}
