//! Heddle's image (`deploy/image/build.sh`) running the chart's node pod under podman: the
//! chart is rendered with its defaults by Helm's own engine, and the node DaemonSet's pod template becomes a Pod for `podman kube play` (changes listed in
//! `heddle_tests::node_pod`; the node-agent and device-plugin containers need a Kubernetes API
//! server and a kubelet and are left out), every host path pointed at the test's own
//! directories. The install-cni init container puts heddle-cni and heddle-ipam into the test's
//! CNI bin dir and writes heddle-ipam's kubeconfig; that heddle-cni, called as a kubelet would,
//! attaches two vhost-user pods (dpdk-testpmd virtio-user peers) to one VLAN of the switch
//! container, traffic passes, and DEL plus the pod's removal leave nothing behind.
//!
//! Needs root, about 800 MiB of free 2 MiB hugepages, dpdk-testpmd, openssl, the venv of
//! `deploy/scripts/install-py.sh` (Helm's engine), and what `deploy/scripts/podman-setup.sh` installs; the test runs that script and
//! `deploy/image/build.sh` itself (both idempotent: seconds when everything is in place, the
//! first image build takes minutes).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use heddle_api::Client;
use heddle_tests::cni::CniPlugin;
use heddle_tests::node_pod::{
    bounding_set, node_pod, render_chart, require_image, HostDirs, Hugetlbfs, HEDDLE_IMAGE,
};
use heddle_tests::podman::{require_podman, Podman};
use heddle_tests::{
    exclusive_cpus, require_dpdk_peers, require_tool, run_loop, unique_name, wait_until,
    ForwardMode, Testpmd,
};
use serde_json::{json, Value};

/// The node pod running under podman; `podman pod rm -f` on drop.
struct PodGuard {
    podman: Podman,
    name: String,
    removed: bool,
}

impl PodGuard {
    fn logs(&self, container: &str) -> String {
        let c = format!("{}-{container}", self.name);
        match self.podman.output(&["logs", &c]) {
            Ok(o) => format!(
                "{c} log:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("{c} log unavailable: {e}"),
        }
    }

    fn remove(&mut self) -> Result<()> {
        self.removed = true;
        self.podman
            .run(&["pod", "rm", "-f", "-t", "10", &self.name])
            .map(|_| ())
    }
}

impl Drop for PodGuard {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self
                .podman
                .output(&["pod", "rm", "-f", "-t", "0", &self.name]);
        }
    }
}

/// sha256 of a file, by `sha256sum` (here or, with `podman exec`, in a container).
fn sha256(out: &str) -> Result<String> {
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .context("sha256sum printed nothing")
}

/// A self-signed CA certificate standing in for the cluster's (`ca.crt` of the token Secret).
fn write_ca(dir: &Path) -> Result<()> {
    let out = Command::new(require_tool("openssl")?)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=heddle-test-ca", "-keyout"])
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(dir.join("ca.crt"))
        .output()?;
    ensure!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(dir.join("ca.key"))?;
    Ok(())
}

/// Every file (not directory) under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn node_pod_from_the_image_installs_heddle_cni_whose_vhost_user_pods_pass_traffic_through_the_switch_container(
) -> Result<()> {
    let started = Instant::now();
    require_dpdk_peers(800)?;
    require_podman()?;
    require_image()?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let sub = |n: &str| -> Result<PathBuf> {
        let p = d.join(n);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    };
    let (cni_bin, cni_conf, run, state) = (
        sub("cni-bin")?,
        sub("cni-conf")?,
        sub("run")?,
        sub("state")?,
    );
    let (vfio, secrets, cni_state) = (sub("dev-vfio")?, sub("secrets")?, sub("cni-state")?);
    let token_dir = sub("secrets/heddle-node-token")?;
    std::fs::write(token_dir.join("token"), "test-token")?;
    write_ca(&token_dir)?;
    let huge = Hugetlbfs::mount(&d.join("hugepages"))?;
    // An API server address where nothing listens: heddle-ipam must get as far as connecting.
    let api_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();

    // The chart's defaults, rendered by Helm's engine (one node group, "default"): `pmd: 1`,
    // a count the switch takes from its affinity mask (here the host's CPUs 0-1, as podman
    // sets no cpuset; under the static CPU manager the kubelet's exclusive CPUs).
    let objects = render_chart(&json!({}))?;
    let host = HostDirs {
        paths: vec![
            ("/opt/cni/bin".into(), cni_bin.clone()),
            ("/etc/cni/net.d".into(), cni_conf.clone()),
            ("/run/heddle".into(), run.clone()),
            ("/var/lib/heddle".into(), state.clone()),
            ("/dev/vfio".into(), vfio),
        ],
        hugepages: Some(huge.path().to_owned()),
        secrets: Some(secrets),
        config_maps: Some(d.join("config-maps")),
        kubelet_env: vec![
            ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
            ("KUBERNETES_SERVICE_PORT".into(), api_port.to_string()),
        ],
        leave_out: vec!["node-agent".into(), "device-plugin".into()],
    };
    let name = unique_name("heddle-node", 24);
    let node = node_pod(&objects, &name, &host, bounding_set()?)?;
    for a in &node.adaptations {
        eprintln!("pod adaptation: {a}");
    }
    for p in [Some(&node.pod), node.init_pod.as_ref()]
        .into_iter()
        .flatten()
    {
        for c in p["spec"]["containers"].as_array().into_iter().flatten() {
            ensure!(
                c["image"] == HEDDLE_IMAGE,
                "{} runs {}",
                c["name"],
                c["image"]
            );
        }
    }
    let pod_file = d.join("pod.yaml");
    std::fs::write(&pod_file, serde_yaml::to_string(&node.pod)?)?;
    for (file, text) in &node.files {
        std::fs::create_dir_all(file.parent().context("file in a directory")?)?;
        std::fs::write(file, text)?;
    }
    let podman_cni = sub("podman-cni")?;
    let podman = Podman::new(d, &podman_cni, &[&cni_bin])?;
    let mut pod = PodGuard {
        podman: podman.clone(),
        name: name.clone(),
        removed: false,
    };
    eprintln!("preconditions and setup: {:?}", started.elapsed());
    let t = Instant::now();
    // The init container's pod runs to completion first, with exit code 0.
    let init_pod = node
        .init_pod
        .as_ref()
        .context("the node pod has no init container")?;
    let init_file = d.join("init-pod.yaml");
    std::fs::write(&init_file, serde_yaml::to_string(init_pod)?)?;
    let mut init_guard = PodGuard {
        podman: podman.clone(),
        name: format!("{name}-init"),
        removed: false,
    };
    podman.run(&["kube", "play", &init_file.display().to_string()])?;
    let install = format!("{name}-init-install-cni");
    let code = podman.run(&["wait", &install])?;
    let install_log = init_guard.logs("install-cni");
    ensure!(code == "0", "install-cni exited with {code}: {install_log}");
    init_guard.remove()?;
    podman.run(&["kube", "play", &pod_file.display().to_string()])?;
    eprintln!("podman kube play of both pods: {:?}", t.elapsed());

    // The switch container's API on the shared socket root.
    let switch_socket = run.join("switch.sock");
    let client = Client::new(&switch_socket).with_timeout(Duration::from_secs(10));
    wait_until(
        "the switch container's API on the host's socket root",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || Ok(client.health().ok()),
    )
    .with_context(|| pod.logs("switch"))?;

    // What the init container installed: copies, not links into the container.
    for b in ["heddle-cni", "heddle-ipam"] {
        let p = cni_bin.join(b);
        let meta = std::fs::symlink_metadata(&p)
            .with_context(|| format!("{b} not installed: {install_log}"))?;
        ensure!(meta.file_type().is_file(), "{b} is not a regular file");
        ensure!(
            meta.permissions().mode() & 0o111 == 0o111,
            "{b} not executable"
        );
    }
    let in_image = sha256(&podman.run(&[
        "exec",
        &format!("{name}-switch"),
        "sha256sum",
        "/usr/local/bin/heddle-manager",
    ])?)?;
    let out = Command::new("sha256sum")
        .arg(cni_bin.join("heddle-ipam"))
        .output()?;
    ensure!(
        sha256(&String::from_utf8_lossy(&out.stdout))? == in_image,
        "heddle-ipam in the CNI bin dir is not the image's heddle-manager"
    );
    let leftovers: Vec<_> = files_under(&cni_bin)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    ensure!(
        leftovers.is_empty(),
        "temporary files left in the CNI bin dir: {leftovers:?}"
    );

    // heddle-ipam's kubeconfig: private, and usable (the copy gets as far as the API server).
    let kubeconfig = cni_conf.join("heddle.kubeconfig");
    let meta =
        std::fs::metadata(&kubeconfig).with_context(|| format!("no kubeconfig: {install_log}"))?;
    ensure!(
        meta.permissions().mode() & 0o077 == 0,
        "kubeconfig is readable by others"
    );
    let text = std::fs::read_to_string(&kubeconfig)?;
    ensure!(
        text.contains(&format!("server: https://127.0.0.1:{api_port}"))
            && text.contains("token: test-token"),
        "{text}"
    );
    let ipam = CniPlugin {
        binary: cni_bin.join("heddle-ipam"),
        cni_path: cni_bin.display().to_string(),
        env: vec![],
    };
    let reply = ipam.call(
        "ADD",
        "ipam-probe",
        "net1",
        "/run/netns/none",
        &json!({"cniVersion": "1.0.0", "name": "red", "ipam": {"type": "heddle-ipam",
            "network": "red", "namespace": "tenant-a", "kubeconfig": kubeconfig}}),
    )?;
    let msg = reply.json.to_string();
    ensure!(
        !reply.ok && msg.contains("not reachable") && !msg.contains("cannot be read") && !msg.contains("not usable"),
        "heddle-ipam with the written kubeconfig should fail only at the unreachable API server: {msg} {}",
        reply.stderr
    );

    // Two vhost-user pods on VLAN 100 through the installed heddle-cni, as a kubelet calls it.
    let cni = CniPlugin {
        binary: cni_bin.join("heddle-cni"),
        cni_path: cni_bin.display().to_string(),
        env: vec![],
    };
    let conf = json!({
        "cniVersion": "1.1.0", "name": "n3", "type": "heddle-cni", "kind": "vhost-user",
        "vlan": 100, "socketDir": run.join("pods"), "stateDir": cni_state,
        "switchSocket": switch_socket,
    });
    let a = cni.ok("ADD", "pod-a", "net1", "/run/netns/none", &conf)?;
    let b = cni.ok("ADD", "pod-b", "net1", "/run/netns/none", &conf)?;
    let sock = |r: &Value| r["interfaces"][0]["socketPath"].as_str().map(str::to_owned);
    let mac = |r: &Value| r["interfaces"][0]["mac"].as_str().map(str::to_owned);
    let (sa, ma) = (sock(&a).context("socketPath")?, mac(&a).context("mac")?);
    let (sb, mb) = (sock(&b).context("socketPath")?, mac(&b).context("mac")?);
    let ports: Vec<String> = client.ports()?.into_iter().map(|p| p.spec.name).collect();
    ensure!(ports.len() == 2, "switch ports: {ports:?}");

    let mut gen = Testpmd::builder("image-pods")
        .cpu(0)
        .virtio_user(&sa, &ma, false)
        .virtio_user(&sb, &mb, false)
        .forward_mode(ForwardMode::Mac)
        .eth_peer(0, &mb)
        .eth_peer(1, &ma)
        .spawn()?;
    gen.wait_ready(Duration::from_secs(20))?;
    gen.wait_link_up(0, Duration::from_secs(10))?;
    gen.wait_link_up(1, Duration::from_secs(10))?;
    let stats =
        run_loop(&mut gen, 5_000, Duration::from_secs(20)).with_context(|| pod.logs("switch"))?;
    eprintln!(
        "pod a received {}, pod b received {}",
        stats[&0].rx_packets, stats[&1].rx_packets
    );
    gen.shutdown()?;

    // The switch counted them, as heddlectl inside the switch container reports.
    let ctl = podman.run(&[
        "exec",
        &format!("{name}-switch"),
        "heddlectl",
        "--json",
        "stats",
    ])?;
    let ctl: Value =
        serde_json::from_str(&ctl).with_context(|| format!("heddlectl --json stats: {ctl}"))?;
    for p in &ports {
        let st = ctl["ports"]
            .as_array()
            .and_then(|v| v.iter().find(|s| s["name"] == p.as_str()))
            .with_context(|| format!("heddlectl shows no port {p}: {ctl}"))?;
        let (rx, tx) = (
            st["rx_packets"].as_u64().unwrap_or(0),
            st["tx_packets"].as_u64().unwrap_or(0),
        );
        ensure!(rx > 5_000 && tx > 5_000, "{p}: rx {rx} tx {tx} frames");
    }
    let cores = &ctl["cores"];
    ensure!(
        cores["source"] == "count" && cores["pmd_cpus"].as_array().map(Vec::len) == Some(1),
        "the containerised switch did not take its PMD core from its affinity mask: {cores}"
    );

    for _ in 0..2 {
        cni.ok("DEL", "pod-a", "net1", "", &conf)?;
        cni.ok("DEL", "pod-b", "net1", "", &conf)?;
    }
    let ports = client.ports()?;
    ensure!(ports.is_empty(), "switch ports left: {ports:?}");
    let left: Vec<_> = files_under(&cni_state)
        .into_iter()
        .filter(|p| !p.ends_with(".lock"))
        .collect();
    ensure!(left.is_empty(), "CNI state left: {left:?}");
    ensure!(
        !Path::new(&sa).exists() && !Path::new(&sb).exists(),
        "pod sockets left"
    );

    // Teardown: the pod goes, and with it every socket under the socket root.
    pod.remove()?;
    ensure!(
        !podman.output(&["pod", "exists", &name])?.status.success(),
        "pod {name} still exists"
    );
    let containers = podman
        .run(&[
            "ps",
            "-a",
            "--filter",
            &format!("pod={name}"),
            "--format",
            "{{.Names}}",
        ])
        .unwrap_or_default();
    ensure!(containers.is_empty(), "containers left: {containers}");
    let sockets: Vec<_> = files_under(&run);
    ensure!(
        sockets.is_empty(),
        "left under the socket root: {sockets:?}"
    );
    huge.unmount()?;
    eprintln!("whole test: {:?}", started.elapsed());
    Ok(())
}

#[test]
fn install_cni_without_a_token_installs_the_plugins_writes_no_kubeconfig_and_refuses_a_missing_bin_dir(
) -> Result<()> {
    heddle_tests::require_root()?;
    require_podman()?;
    require_image()?;
    let dir = tempfile::tempdir()?;
    let (bin, conf) = (dir.path().join("bin"), dir.path().join("conf"));
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&conf)?;
    let podman = Podman::new(dir.path(), dir.path(), &[&bin])?;
    let vol = |h: &Path, c: &str| format!("{}:{c}", h.display());
    let out = podman.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &vol(&bin, "/host/cni/bin"),
        "-v",
        &vol(&conf, "/host/cni/net.d"),
        HEDDLE_IMAGE,
        "/usr/local/share/heddle/install-cni.sh",
    ])?;
    ensure!(out.contains("no service-account token"), "{out}");
    ensure!(
        bin.join("heddle-cni").is_file() && bin.join("heddle-ipam").is_file(),
        "{out}"
    );
    ensure!(
        std::fs::read_dir(&conf)?.next().is_none(),
        "a kubeconfig was written without a token"
    );
    // A missing CNI bin dir is refused with the fix.
    let out = podman.output(&[
        "run",
        "--rm",
        "--network",
        "none",
        HEDDLE_IMAGE,
        "/usr/local/share/heddle/install-cni.sh",
        "/nonexistent",
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !err.contains("mount the host's CNI bin dir") {
        bail!("install-cni.sh accepted a missing CNI bin dir: {err}");
    }
    Ok(())
}
