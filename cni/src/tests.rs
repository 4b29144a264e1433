//! Whole-command tests with a node-daemon double: effects on a temporary directory, error
//! codes, and no state left behind by a failed or undone ADD.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use heddle_api::PortSpec;

use crate::error::{code, CniError};
use crate::invocation::Invocation;
use crate::plugin;
use crate::sriov::pf::{PfControl, VfSettings};
use crate::switch::Switch;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Up,
    Down,
    Refuse,
}

#[derive(Clone)]
struct Fake {
    mode: Rc<RefCell<Mode>>,
    ports: Rc<RefCell<BTreeMap<String, PortSpec>>>,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            mode: Rc::new(RefCell::new(Mode::Up)),
            ports: Rc::default(),
        }
    }
    fn check(&self) -> Result<(), CniError> {
        match *self.mode.borrow() {
            Mode::Down => Err(heddle_api::ClientError::Connect {
                path: "/x".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }
            .into()),
            _ => Ok(()),
        }
    }
}

impl Switch for Fake {
    fn ready(&self) -> Result<bool, CniError> {
        self.check().map(|()| true)
    }
    fn add_port(&self, spec: &PortSpec) -> Result<(), CniError> {
        self.check()?;
        if *self.mode.borrow() == Mode::Refuse {
            return Err(heddle_api::ClientError::Refused {
                status: 409,
                message: "duplicate port device".into(),
            }
            .into());
        }
        self.ports
            .borrow_mut()
            .insert(spec.name.clone(), spec.clone());
        Ok(())
    }
    fn remove_port(&self, name: &str) -> Result<(), CniError> {
        self.check()?;
        self.ports.borrow_mut().remove(name);
        Ok(())
    }
    fn has_port(&self, name: &str) -> Result<bool, CniError> {
        self.check()?;
        Ok(self.ports.borrow().contains_key(name))
    }
}

/// A PF whose VF table lives in memory, recording what it is sent; `refuse` makes it
/// answer like a netdev without VFs.
#[derive(Default)]
struct FakePf {
    vfs: RefCell<BTreeMap<u32, VfSettings>>,
    sent: RefCell<Vec<(u32, VfSettings)>>,
    refuse: RefCell<bool>,
}

impl PfControl for FakePf {
    fn read(&self, pf: &str, vf: u32) -> Result<VfSettings, CniError> {
        if *self.refuse.borrow() {
            return Err(crate::sriov::pf::refused(
                pf,
                "Operation not supported (os error 95)",
            ));
        }
        Ok(self.vfs.borrow().get(&vf).copied().unwrap_or_default())
    }
    fn apply(&self, _pf: &str, vf: u32, s: &VfSettings) -> Result<(), CniError> {
        self.sent.borrow_mut().push((vf, *s));
        let mut vfs = self.vfs.borrow_mut();
        let cur = vfs.entry(vf).or_default();
        *cur = s.overriding(cur);
        Ok(())
    }
    fn has_pf(&self, _pf: &str) -> Result<bool, CniError> {
        Ok(true)
    }
}

/// A kubelet that says the pod holds `devices` (any pod, any resource), counting the calls.
#[derive(Default)]
struct FakeKubelet {
    devices: RefCell<Vec<String>>,
    calls: RefCell<usize>,
}

impl crate::handoff::PodDevices for FakeKubelet {
    fn pod_devices(
        &self,
        _socket: &Path,
        namespace: &str,
        name: &str,
        _resource: &str,
    ) -> Result<Vec<String>, CniError> {
        assert_eq!((namespace, name), ("ns", "p"));
        *self.calls.borrow_mut() += 1;
        Ok(self.devices.borrow().clone())
    }
}

struct Env {
    dir: tempfile::TempDir,
    fake: Fake,
    pf: FakePf,
    kubelet: FakeKubelet,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
            fake: Fake::new(),
            pf: FakePf::default(),
            kubelet: FakeKubelet::default(),
        }
    }
    fn conf(&self, extra: &str) -> String {
        let d = self.dir.path();
        format!(
            r#"{{"cniVersion":"1.1.0","name":"n3","type":"heddle-cni","kind":"vhost-user","vlan":100,
                "socketDir":"{}","stateDir":"{}","switchSocket":"/nonexistent/s.sock",
                "runtimeConfig":{{"CNIDeviceInfoFile":"{}"}}{extra}}}"#,
            d.join("pods").display(),
            d.join("state").display(),
            d.join("devinfo/n3.json").display()
        )
    }
    fn call(
        &self,
        cmd: &str,
        id: &str,
        ifname: &str,
        stdin: &str,
    ) -> Result<Option<serde_json::Value>, CniError> {
        self.call_in(cmd, id, ifname, "/run/netns/test", stdin)
    }
    fn call_in(
        &self,
        cmd: &str,
        id: &str,
        ifname: &str,
        netns: &str,
        stdin: &str,
    ) -> Result<Option<serde_json::Value>, CniError> {
        let vars = [
            ("CNI_COMMAND", cmd.to_owned()),
            ("CNI_CONTAINERID", id.to_owned()),
            ("CNI_IFNAME", ifname.to_owned()),
            ("CNI_NETNS", netns.to_owned()),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p".to_owned(),
            ),
            (
                "HEDDLE_SYSFS_ROOT",
                self.dir.path().join("sys").display().to_string(),
            ),
        ];
        let inv =
            Invocation::from_env(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))?;
        let fake = self.fake.clone();
        let connect = move |_: &Path| -> Box<dyn Switch> { Box::new(fake.clone()) };
        plugin::run_on(
            &inv,
            stdin.as_bytes(),
            &connect,
            plugin::Host {
                pf: &self.pf,
                pods: &self.kubelet,
            },
        )
    }
    /// Every file left under the temp dir, except the lock file.
    fn leftovers(&self) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                let path = e.path();
                if e.file_type().is_ok_and(|t| t.is_symlink()) {
                    continue;
                }
                if path.is_dir() {
                    walk(&path, out);
                } else if path
                    .file_name()
                    .is_some_and(|n| !n.to_string_lossy().ends_with(".lock"))
                {
                    out.push(path);
                }
            }
        }
        let mut out = vec![];
        walk(self.dir.path(), &mut out);
        // The sysfs fixture is not state.
        out.retain(|p| !p.starts_with(self.dir.path().join("sys")));
        out
    }
}

#[test]
fn add_returns_socket_writes_device_info_and_del_twice_leaves_nothing() {
    let env = Env::new();
    let conf = env.conf("");
    let reply = env.call("ADD", "c1", "net1", &conf).unwrap().unwrap();
    assert_eq!(reply["cniVersion"], "1.1.0");
    let sock = reply["interfaces"][0]["socketPath"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(sock.starts_with(&env.dir.path().join("pods").display().to_string()));
    assert_eq!(reply["interfaces"][0]["sandbox"], "/run/netns/test");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.dir.path().join("devinfo/n3.json")).unwrap())
            .unwrap();
    assert_eq!(info["type"], "vhost-user");
    assert_eq!(info["version"], "1.1.0");
    assert_eq!(info["vhost-user"]["path"], sock.as_str());
    assert_eq!(info["vhost-user"]["mode"], "client");
    let port = env.fake.ports.borrow()["cni/c1/net1"].clone();
    assert_eq!(port.mode, heddle_api::PortMode::Access { vlan: 100 });
    assert_eq!(port.mac.as_deref(), reply["interfaces"][0]["mac"].as_str());

    // Repeated ADD: same answer.
    assert_eq!(
        env.call("ADD", "c1", "net1", &conf).unwrap().unwrap(),
        reply
    );
    // CHECK fails while the switch has not bound the socket, passes once it has, and fails
    // again once the port is gone.
    assert_eq!(
        env.call("CHECK", "c1", "net1", &conf).unwrap_err().code,
        code::CHECK_FAILED
    );
    let _bound = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    env.call("CHECK", "c1", "net1", &conf).unwrap();
    env.fake.ports.borrow_mut().clear();
    assert_eq!(
        env.call("CHECK", "c1", "net1", &conf).unwrap_err().code,
        code::CHECK_FAILED
    );

    env.call("DEL", "c1", "net1", &conf).unwrap();
    env.call("DEL", "c1", "net1", &conf).unwrap();
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    assert!(!env
        .dir
        .path()
        .join("pods")
        .read_dir()
        .unwrap()
        .any(|_| true));
    assert_eq!(
        env.call("CHECK", "c1", "net1", &conf).unwrap_err().code,
        code::UNKNOWN_CONTAINER
    );
}

#[test]
fn daemon_down_or_refusing_fails_add_without_state() {
    let env = Env::new();
    *env.fake.mode.borrow_mut() = Mode::Down;
    let e = env.call("ADD", "c1", "net1", &env.conf("")).unwrap_err();
    assert_eq!(e.code, code::TRY_AGAIN_LATER, "{e}");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    assert_eq!(
        env.call("STATUS", "", "", &env.conf("")).unwrap_err().code,
        code::NOT_AVAILABLE
    );

    *env.fake.mode.borrow_mut() = Mode::Refuse;
    let e = env
        .call("ADD", "c1", "net1", &env.conf(r#","kind":"memif""#))
        .unwrap_err();
    assert_eq!(e.code, code::DAEMON_REFUSED, "{e}");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    // DEL after the failed ADD (what podman does) succeeds.
    env.call("DEL", "c1", "net1", &env.conf("")).unwrap();

    *env.fake.mode.borrow_mut() = Mode::Up;
    assert_eq!(env.call("STATUS", "", "", &env.conf("")).unwrap(), None);
}

#[test]
fn malformed_inputs_get_their_codes_and_leave_no_state() {
    let env = Env::new();
    let long = format!(r#","socketDir":"/{}""#, "s".repeat(100));
    let cases: Vec<(String, &str, &str, u32)> = vec![
        ("{bad json".into(), "c1", "net1", code::DECODING_FAILURE),
        (
            env.conf(r#","kind":"tap""#),
            "c1",
            "net1",
            code::INVALID_CONFIG,
        ),
        (env.conf(r#","vlan":0"#), "c1", "net1", code::INVALID_CONFIG),
        (
            env.conf(r#","vlan":4095"#),
            "c1",
            "net1",
            code::INVALID_CONFIG,
        ),
        (
            env.conf(r#","mac":"02:00:00""#),
            "c1",
            "net1",
            code::INVALID_CONFIG,
        ),
        (env.conf(&long), "c1", "net1", code::INVALID_CONFIG),
        (env.conf(""), "../../etc", "net1", code::INVALID_ENV),
        (env.conf(""), "c1", "../x", code::INVALID_ENV),
        (
            env.conf(r#","cniVersion":"0.2.0""#),
            "c1",
            "net1",
            code::INCOMPATIBLE_VERSION,
        ),
        (
            env.conf(r#","kind":"sriov""#),
            "c1",
            "net1",
            code::INVALID_CONFIG,
        ),
        (
            env.conf(r#","kind":"sriov","deviceID":"0000:7f:00.1""#),
            "c1",
            "net1",
            code::INVALID_CONFIG,
        ),
    ];
    for (stdin, id, ifname, want) in cases {
        let e = env.call("ADD", id, ifname, &stdin).unwrap_err();
        assert_eq!(e.code, want, "{stdin} {id} {ifname}: {e}");
        assert!(env.leftovers().is_empty(), "{stdin}: {:?}", env.leftovers());
        assert!(env.fake.ports.borrow().is_empty());
    }
}

#[test]
fn gc_removes_what_the_runtime_does_not_know() {
    let env = Env::new();
    let conf = env.conf("");
    for id in ["a1", "a2", "a3"] {
        env.call("ADD", id, "net1", &conf).unwrap();
    }
    let gc = env.conf(r#","cni.dev/valid-attachments":[{"containerID":"a2","ifname":"net1"}]"#);
    env.call("GC", "", "", &gc).unwrap();
    let ports: Vec<String> = env.fake.ports.borrow().keys().cloned().collect();
    assert_eq!(ports, vec!["cni/a2/net1".to_owned()]);
    env.call("DEL", "a2", "net1", &conf).unwrap();
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn chained_prev_result_is_kept_and_old_versions_render() {
    let env = Env::new();
    let prev = r#","prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.0.0.2/24","interface":0}]}"#;
    let conf = env.conf(prev).replace("\"1.1.0\"", "\"1.0.0\"");
    let r = env.call("ADD", "c9", "net1", &conf).unwrap().unwrap();
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(r["interfaces"][0]["name"], "eth0");
    assert_eq!(r["interfaces"][1]["name"], "net1");
    assert!(r["interfaces"][1].get("socketPath").is_none());
    assert_eq!(r["ips"][0]["address"], "10.0.0.2/24");
    env.call("DEL", "c9", "net1", &conf).unwrap();
}

#[test]
fn version_reply() {
    let env = Env::new();
    let r = env
        .call("VERSION", "", "", r#"{"cniVersion":"0.4.0"}"#)
        .unwrap()
        .unwrap();
    assert_eq!(r["cniVersion"], "0.4.0");
    assert_eq!(
        r["supportedVersions"],
        serde_json::json!(["0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn a_vfio_vf_gets_pf_settings_pci_id_and_device_info_and_del_restores_them() {
    let env = Env::new();
    crate::sriov::sysfs::fixture::create(
        &env.dir.path().join("sys"),
        "0000:03:00.0",
        "ens1f0",
        &[
            ("0000:03:02.0", None, "vfio-pci"),
            ("0000:03:02.1", None, "vfio-pci"),
        ],
    )
    .unwrap();
    env.pf.vfs.borrow_mut().insert(
        1,
        VfSettings {
            vlan: Some(0),
            qos: Some(0),
            spoofchk: Some(true),
            trust: Some(false),
            mac: Some([0; 6]),
            ..Default::default()
        },
    );
    let di = env.dir.path().join("devinfo/vf.json");
    let conf = env.conf(&format!(
        r#","kind":"sriov","vlan":300,"spoofchk":"off","mac":"02:00:00:00:03:01","runtimeConfig":{{"deviceID":"0000:03:02.1","CNIDeviceInfoFile":"{}"}}"#,
        di.display()
    ));
    let r = env.call("ADD", "p1", "net1", &conf).unwrap().unwrap();
    let i = &r["interfaces"][0];
    assert_eq!(i["pciID"], "0000:03:02.1");
    assert_eq!(i["mac"], "02:00:00:00:03:01");
    assert_eq!(i["sandbox"], "/run/netns/test");
    let sent = env.pf.sent.borrow()[0];
    assert_eq!(sent.0, 1);
    assert_eq!(
        (sent.1.vlan, sent.1.spoofchk, sent.1.mac, sent.1.trust),
        (Some(300), Some(false), Some([2, 0, 0, 0, 3, 1]), None)
    );
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(&di).unwrap()).unwrap();
    assert_eq!(info["type"], "pci");
    assert_eq!(info["pci"]["pci-address"], "0000:03:02.1");
    assert_eq!(info["pci"]["pf-pci-address"], "0000:03:00.0");
    // Repeated ADD answers the same and sends nothing.
    assert_eq!(env.call("ADD", "p1", "net1", &conf).unwrap().unwrap(), r);
    assert_eq!(env.pf.sent.borrow().len(), 1);
    env.call("CHECK", "p1", "net1", &conf).unwrap();
    env.call("DEL", "p1", "net1", &conf).unwrap();
    env.call("DEL", "p1", "net1", &conf).unwrap();
    let restored = env.pf.vfs.borrow()[&1];
    assert_eq!(
        (restored.vlan, restored.spoofchk, restored.mac),
        (Some(0), Some(true), Some([0; 6]))
    );
    assert!(!di.exists());
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());

    // A PF that refuses VF settings: the ADD fails with the PF named and leaves nothing.
    *env.pf.refuse.borrow_mut() = true;
    let e = env.call("ADD", "p2", "net1", &conf).unwrap_err();
    assert_eq!(e.code, code::NETLINK);
    assert!(
        e.msg.starts_with("PF ens1f0 does not accept VF settings: "),
        "{}",
        e.msg
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn gc_gives_back_a_vf_whose_pod_the_runtime_forgot() {
    let env = Env::new();
    crate::sriov::sysfs::fixture::create(
        &env.dir.path().join("sys"),
        "0000:03:00.0",
        "ens1f0",
        &[("0000:03:02.0", None, "vfio-pci")],
    )
    .unwrap();
    let conf = env.conf(r#","kind":"sriov","trust":"on","deviceID":"0000:03:02.0""#);
    env.call("ADD", "gone", "net1", &conf).unwrap();
    assert_eq!(env.pf.vfs.borrow()[&0].trust, Some(true));
    env.call(
        "GC",
        "",
        "",
        &env.conf(r#","cni.dev/valid-attachments":[]"#),
    )
    .unwrap();
    assert_eq!(env.pf.vfs.borrow()[&0].trust, Some(false));
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

impl Env {
    /// The device root, with the directories of `ids` made as the device plugin's Allocate
    /// makes them.
    fn device_root(&self, ids: &[&str]) -> PathBuf {
        let root = self.dir.path().join("devices");
        for id in ids {
            std::fs::create_dir_all(root.join(id)).unwrap();
        }
        root
    }
    /// Entries left in a device directory.
    fn device_dir_entries(&self, id: &str) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path().join("devices").join(id))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
    fn record(&self, id: &str, ifname: &str) -> Option<crate::record::Record> {
        crate::record::Store::new(&self.dir.path().join("state"))
            .read(&crate::key::AttachmentKey {
                container_id: id.into(),
                ifname: ifname.into(),
            })
            .unwrap()
    }
}

#[test]
fn a_device_id_puts_the_socket_in_the_device_directory_and_del_leaves_it_empty() {
    let env = Env::new();
    let root = env.device_root(&["vhost-user-3"]);
    let di = env.dir.path().join("devinfo/n3.json");
    let conf = env.conf(&format!(
        r#","deviceRoot":"{}","runtimeConfig":{{"deviceID":"vhost-user-3","CNIDeviceInfoFile":"{}"}}"#,
        root.display(),
        di.display()
    ));
    let reply = env.call("ADD", "c1", "net1", &conf).unwrap().unwrap();
    let host_sock = root.join("vhost-user-3/vhost-user.sock");
    assert_eq!(
        reply["interfaces"][0]["socketPath"],
        host_sock.display().to_string(),
        "the result names the host path, for the runtime"
    );
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(&di).unwrap()).unwrap();
    assert_eq!(
        info["vhost-user"]["path"], "/run/heddle/devices/vhost-user-3/vhost-user.sock",
        "device-info names the container path, for the VNF"
    );
    assert_eq!(info["vhost-user"]["mode"], "client");
    let port = env.fake.ports.borrow()["cni/c1/net1"].clone();
    assert!(
        port.devargs
            .contains(&format!(",iface={}", host_sock.display())),
        "{}",
        port.devargs
    );
    assert_eq!(
        env.record("c1", "net1").unwrap().device_id.as_deref(),
        Some("vhost-user-3")
    );
    assert!(
        !env.dir.path().join("pods").exists(),
        "no pod socket directory is made for a device"
    );
    assert_eq!(env.kubelet.calls.take(), 0, "a deviceID needs no kubelet");
    // Repeated ADD answers the same.
    assert_eq!(
        env.call("ADD", "c1", "net1", &conf).unwrap().unwrap(),
        reply
    );
    // CHECK looks for the socket in the device directory.
    assert_eq!(
        env.call("CHECK", "c1", "net1", &conf).unwrap_err().code,
        code::CHECK_FAILED
    );
    let bound = std::os::unix::net::UnixListener::bind(&host_sock).unwrap();
    env.call("CHECK", "c1", "net1", &conf).unwrap();
    drop(bound);
    // DEL without a netns removes the socket, keeps the (now empty) device directory.
    env.call_in("DEL", "c1", "net1", "", &conf).unwrap();
    env.call("DEL", "c1", "net1", &conf).unwrap();
    assert!(env.device_dir_entries("vhost-user-3").is_empty());
    assert!(root.join("vhost-user-3").is_dir());
    assert!(env.fake.ports.borrow().is_empty());
    assert!(!di.exists());
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn a_bad_or_missing_or_taken_device_is_refused_and_changes_nothing() {
    let env = Env::new();
    let root = env.device_root(&["vhost-user-0", "memif-0"]);
    let conf = |kind: &str, id: &str| {
        env.conf(&format!(
            r#","kind":"{kind}","deviceRoot":"{}","runtimeConfig":{{"deviceID":"{id}"}}"#,
            root.display()
        ))
    };
    for (kind, id, want, says) in [
        (
            "vhost-user",
            "memif-0",
            code::INVALID_CONFIG,
            "is not a vhost-user device",
        ),
        (
            "memif",
            "vhost-user-0",
            code::INVALID_CONFIG,
            "is not a memif device",
        ),
        (
            "vhost-user",
            "0000:03:02.0",
            code::INVALID_CONFIG,
            "resourceName must name",
        ),
        (
            "vhost-user",
            "../memif-0",
            code::INVALID_CONFIG,
            "is not a vhost-user device",
        ),
        (
            "vhost-user",
            "vhost-user-1",
            code::INVALID_CONFIG,
            "has no directory",
        ),
    ] {
        let e = env.call("ADD", "c1", "net1", &conf(kind, id)).unwrap_err();
        assert_eq!(e.code, want, "{kind} {id}: {e}");
        assert!(e.msg.contains(says), "{kind} {id}: {}", e.msg);
        assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
        assert!(env.fake.ports.borrow().is_empty());
        assert!(env.device_dir_entries("vhost-user-0").is_empty());
        assert!(!root.join("vhost-user-1").exists());
    }
    // A device path over 107 bytes names deviceRoot.
    let long = env.conf(&format!(
        r#","deviceRoot":"/{}","runtimeConfig":{{"deviceID":"vhost-user-0"}}"#,
        "r".repeat(90)
    ));
    let e = env.call("ADD", "c1", "net1", &long).unwrap_err();
    assert!(e.msg.contains("shorter deviceRoot"), "{}", e.msg);
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());

    // Held: by this sandbox's other interface (7), by another sandbox's attachment (11).
    env.call("ADD", "c1", "net1", &conf("vhost-user", "vhost-user-0"))
        .unwrap();
    let ports = env.fake.ports.borrow().len();
    let e = env
        .call("ADD", "c1", "net2", &conf("vhost-user", "vhost-user-0"))
        .unwrap_err();
    assert_eq!(e.code, code::INVALID_CONFIG, "{e}");
    assert!(
        e.msg.contains("already used by this pod's interface net1"),
        "{}",
        e.msg
    );
    let e = env
        .call("ADD", "c2", "net1", &conf("vhost-user", "vhost-user-0"))
        .unwrap_err();
    assert_eq!(e.code, code::TRY_AGAIN_LATER, "{e}");
    assert_eq!(env.fake.ports.borrow().len(), ports);
    assert!(env.record("c2", "net1").is_none() && env.record("c1", "net2").is_none());
    // After the holder's DEL the other sandbox gets it.
    env.call("DEL", "c1", "net1", &conf("vhost-user", "vhost-user-0"))
        .unwrap();
    env.call("ADD", "c2", "net1", &conf("vhost-user", "vhost-user-0"))
        .unwrap();
    env.call("DEL", "c2", "net1", &conf("vhost-user", "vhost-user-0"))
        .unwrap();
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn without_a_device_id_the_kubelet_names_the_pods_devices_and_each_interface_takes_a_free_one() {
    let env = Env::new();
    let root = env.device_root(&["memif-1", "vhost-user-4", "vhost-user-9"]);
    *env.kubelet.devices.borrow_mut() = ["memif-1", "vhost-user-4", "vhost-user-9"]
        .map(String::from)
        .into();
    let conf = env.conf(&format!(
        r#","deviceRoot":"{}","resourceName":"heddle.dev/vhost-user""#,
        root.display()
    ));
    let a = env.call("ADD", "s1", "net1", &conf).unwrap().unwrap();
    let b = env.call("ADD", "s1", "net2", &conf).unwrap().unwrap();
    assert_eq!(
        a["interfaces"][0]["socketPath"],
        root.join("vhost-user-4/vhost-user.sock")
            .display()
            .to_string()
    );
    assert_eq!(
        b["interfaces"][0]["socketPath"],
        root.join("vhost-user-9/vhost-user.sock")
            .display()
            .to_string()
    );
    assert_eq!(
        env.record("s1", "net2").unwrap().device_id.as_deref(),
        Some("vhost-user-9")
    );
    assert_eq!(env.kubelet.calls.take(), 2);
    // A repeated ADD keeps its device without asking again.
    assert_eq!(env.call("ADD", "s1", "net1", &conf).unwrap().unwrap(), a);
    assert_eq!(env.kubelet.calls.take(), 0);
    // A third interface finds both taken: the pod must ask for more.
    let e = env.call("ADD", "s1", "net3", &conf).unwrap_err();
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert!(e.msg.contains("request one more"), "{}", e.msg);
    // DEL frees the device for the next interface.
    env.call("DEL", "s1", "net1", &conf).unwrap();
    let c = env.call("ADD", "s1", "net3", &conf).unwrap().unwrap();
    assert_eq!(
        c["interfaces"][0]["socketPath"],
        a["interfaces"][0]["socketPath"]
    );
    // memif networks take the pod's memif devices from the same answer.
    let m = env.conf(&format!(
        r#","kind":"memif","deviceRoot":"{}","resourceName":"heddle.dev/memif""#,
        root.display()
    ));
    let r = env.call("ADD", "s1", "m0", &m).unwrap().unwrap();
    assert_eq!(
        r["interfaces"][0]["socketPath"],
        root.join("memif-1/memif.sock").display().to_string()
    );
    for (ifname, c) in [("net2", &conf), ("net3", &conf), ("m0", &m)] {
        env.call("DEL", "s1", ifname, c).unwrap();
    }
    for id in ["memif-1", "vhost-user-4", "vhost-user-9"] {
        assert!(env.device_dir_entries(id).is_empty(), "{id}");
    }
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}
