//! Heddle's image (`deploy/image/build.sh`) running the chart's node pod under podman: the
//! chart is rendered with its defaults by Helm's own engine, and the node DaemonSet's pod template becomes a Pod for `podman kube play` (changes listed in
//! `heddle_tests::node_pod`; the node-agent and device-plugin containers need a Kubernetes API
//! server and a kubelet and are left out), every host path pointed at the test's own
//! directories. The install-cni init container puts heddle-cni and heddle-ipam into the test's
//! CNI bin dir and writes heddle-ipam's kubeconfig (naming the node, from `spec.nodeName`);
//! that heddle-cni, called as a kubelet would, attaches two vhost-user interfaces to one VLAN
//! of the switch container, a dpdk-testpmd pod (a container of its own from
//! `tests/src/testdata/testpmd.Containerfile`: no network, its own hugetlbfs, only the socket
//! directory shared) passes traffic through them, and DEL plus the pods' removal leave
//! nothing behind.
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
    bounding_set, node_pod, render_chart, require_image, require_testpmd_image, HostDirs,
    Hugetlbfs, HEDDLE_IMAGE, TESTPMD_IMAGE,
};
use heddle_tests::podman::{require_podman, Podman};
use heddle_tests::{
    exclusive_cpus, require_dpdk_peers, require_tool, run_loop, unique_name, wait_until,
    ForwardMode, Testpmd,
};
use serde_json::{json, Value};

/// A container that `podman rm -f` removes on drop (the testpmd pod, if the test fails).
struct ContainerGuard {
    podman: Podman,
    name: String,
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = self
            .podman
            .output(&["rm", "-f", "-t", "0", "--ignore", &self.name]);
    }
}

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

fn openssl(args: &[&str], dir: &Path) -> Result<()> {
    let out = Command::new(require_tool("openssl")?)
        .args(args)
        .current_dir(dir)
        .output()?;
    ensure!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A CA standing in for the cluster's (its certificate goes to `ca.crt` of the token Secret)
/// and a serving certificate it signed for 127.0.0.1, all in `dir`: `ca.crt`, `server.crt`,
/// `server.key`.
fn write_ca_and_server_cert(dir: &Path) -> Result<()> {
    const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(EC);
    ca.extend(["-nodes", "-days", "1", "-subj", "/CN=heddle-test-ca"]);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    openssl(&ca, dir)?;
    let mut csr = vec!["req", "-new"];
    csr.extend(EC);
    csr.extend(["-nodes", "-subj", "/CN=127.0.0.1"]);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(&csr, dir)?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
        dir,
    )
}

/// An HTTPS server standing in for the Kubernetes API server: every GET is answered 404 with
/// a Kubernetes `Status` (reason NotFound), and its request line and Authorization header are
/// appended to `log`. Killed on drop.
struct ApiServerStandIn {
    child: std::process::Child,
    log: PathBuf,
}

const API_SERVER_STAND_IN: &str = r#"
import http.server, json, ssl, sys
port, cert, key, log = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        with open(log, "a") as f:
            f.write(f"{self.command} {self.path} {self.headers.get('Authorization', '')}\n")
        name = self.path.split("?")[0].rstrip("/").split("/")[-1]
        body = json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": f"{name} not found", "reason": "NotFound",
            "details": {"name": name}, "code": 404}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"#;

impl ApiServerStandIn {
    fn start(port: u16, certs: &Path) -> Result<ApiServerStandIn> {
        use std::io::BufRead;
        let log = certs.join("requests.log");
        let mut child = Command::new(require_tool("python3")?)
            .arg("-c")
            .arg(API_SERVER_STAND_IN)
            .arg(port.to_string())
            .arg(certs.join("server.crt"))
            .arg(certs.join("server.key"))
            .arg(&log)
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        ensure!(
            line.trim() == "ready",
            "the API server stand-in did not start: {line:?}"
        );
        Ok(ApiServerStandIn { child, log })
    }

    fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ApiServerStandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    require_testpmd_image()?;
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
    let certs = sub("certs")?;
    write_ca_and_server_cert(&certs)?;
    std::fs::copy(certs.join("ca.crt"), token_dir.join("ca.crt"))?;
    let huge = Hugetlbfs::mount(&d.join("hugepages"))?;
    // The "API server": HTTPS on 127.0.0.1 with a certificate of the token's CA.
    let api_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let api_server = ApiServerStandIn::start(api_port, &certs)?;

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

    // The chart's probes, run as the kubelet runs them (exec in the switch container), pass.
    let switch_spec = node.pod["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "switch"))
        .context("no switch container in the pod")?;
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let cmd: Vec<&str> = switch_spec[probe]["exec"]["command"]
            .as_array()
            .with_context(|| format!("the switch has no exec {probe}"))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let switch_container = format!("{name}-switch");
        let mut args = vec!["exec", switch_container.as_str()];
        args.extend(&cmd);
        // Probed every few seconds by the kubelet: allow the switch 30 s to pass each.
        wait_until(
            &format!("{probe} {cmd:?} passing in the running switch container"),
            Duration::from_secs(30),
            Duration::from_millis(500),
            || Ok(podman.output(&args)?.status.success().then_some(())),
        )
        .with_context(|| {
            let out = podman.output(&args);
            format!("last try: {out:?}")
        })?;
    }

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
    // The node's name, from the downward API's spec.nodeName (here the host name, see
    // node_pod), in the extension heddle-ipam reads when the CNI config names no node.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    let kc: Value = serde_yaml::from_str(&text)?;
    ensure!(
        kc["contexts"][0]["context"]["extensions"]
            == json!([{"name": "heddle.dev/node", "extension": {"nodeName": host.trim()}}]),
        "the kubeconfig does not name node {}: {text}",
        host.trim()
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
    // heddle-ipam (the copy on the "host") with that kubeconfig: TLS to the API server verified
    // by the kubeconfig's CA, the token sent, the answer read ("no such Network").
    let msg = reply.json.to_string();
    ensure!(
        !reply.ok && msg.contains("network tenant-a/red does not exist"),
        "heddle-ipam with the written kubeconfig should reach the API server and be told the network does not exist: {msg} {}",
        reply.stderr
    );
    let requests = api_server.requests();
    ensure!(
        requests
            == "GET /apis/heddle.dev/v1alpha1/namespaces/tenant-a/networks/red Bearer test-token\n",
        "the API server stand-in saw: {requests:?}"
    );
    drop(api_server);

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

    // The pods: dpdk-testpmd in a container of its own (TESTPMD_IMAGE), no network, its own
    // hugetlbfs (a pod's HugePages emptyDir), and only the directory of the sockets heddle-cni
    // handed out mounted from the host, as the device plugin mounts it into a pod.
    let pods_dir = run.join("pods");
    let testpmd_huge = Hugetlbfs::mount(&d.join("testpmd-hugepages"))?;
    let testpmd_name = format!("{name}-testpmd");
    let _testpmd_guard = ContainerGuard {
        podman: podman.clone(),
        name: testpmd_name.clone(),
    };
    let wrapper: Vec<String> = [
        "env",
        &format!("CONTAINERS_CONF={}", podman.conf().display()),
        "podman",
        "run",
        "--rm",
        "-i",
        "--name",
        &testpmd_name,
        "--network",
        "none",
        "--pull",
        "never",
        "--cap-add",
        "IPC_LOCK",
        "-v",
        &format!("{}:/dev/hugepages", testpmd_huge.path().display()),
        "-v",
        &format!("{0}:{0}", pods_dir.display()),
        TESTPMD_IMAGE,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let mut gen = Testpmd::builder("image-pods")
        .cpu(0)
        .wrapper(&wrapper)
        .binary("dpdk-testpmd")
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
    ensure!(
        !podman
            .output(&["container", "exists", &testpmd_name])?
            .status
            .success(),
        "the testpmd container {testpmd_name} is still there after testpmd quit"
    );
    testpmd_huge.unmount()?;

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
