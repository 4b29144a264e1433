//! heddle-cni `kind: sriov`, the real binary, without SR-IOV hardware: a sysfs-shaped
//! directory (`HEDDLE_SYSFS_ROOT`) describes a PF and its VFs, and a real veth stands in for
//! the VF's netdev. ADD really moves it into the pod's netns, renames it, sets MTU, MAC and
//! IPs (a ping crosses it); DEL really brings it back with its name, MAC, MTU and down state.
//! PF-side VF settings are real rtnetlink requests; a veth PF has no VFs, so the kernel side
//! of those is shown refusing (the requests themselves are unit-tested in `cni/src/sriov`).
//!
//! Needs root and `ip` (iproute2); no hugepages and no heddle-switch (a VF is no switch
//! port). Build first: `cargo build -p heddle-cni`.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use heddle_cni::sriov::pf::{NetlinkPf, PfControl, VfSettings};
use heddle_cni::sriov::sysfs::fixture;
use heddle_tests::cni::CniPlugin;
use heddle_tests::env::require_root;
use heddle_tests::netns::ip;
use heddle_tests::{unique_name, Netns};
use serde_json::{json, Value};

/// The PCI addresses of test `n`'s PF, kernel-driver VF and vfio-pci VF. Each test has its
/// own (tests run in parallel, and a VF's temporary name derives from its address).
fn pci(n: u8) -> (String, String, String) {
    (
        format!("0000:7{n:x}:00.0"),
        format!("0000:7{n:x}:02.0"),
        format!("0000:7{n:x}:02.1"),
    )
}

/// A stand-in VF: a veth whose one end plays the VF netdev (left down in the host, MAC and
/// MTU known) and whose other end is the "wire" in a peer netns with 10.99.x.1/24; plus a
/// veth as the PF netdev (no dummy module here) and the sysfs fixture naming them.
struct FakeVf {
    dir: tempfile::TempDir,
    netdev: String,
    pf: String,
    /// Holds the far end of the stand-in's wire.
    _peer: Netns,
    mac: String,
}

impl FakeVf {
    fn new(subnet: u8) -> Result<FakeVf> {
        require_root()?;
        let dir = tempfile::tempdir()?;
        let netdev = unique_name("hdvf", 15);
        let wire = unique_name("hdvw", 15);
        let pf = unique_name("hdpf", 15);
        let peer = Netns::unique("hdsriovpeer")?;
        let mac = format!("02:5f:00:00:{subnet:02x}:01");
        ip(&[
            "link",
            "add",
            &pf,
            "type",
            "veth",
            "peer",
            "name",
            &unique_name("hdpq", 15),
        ])?;
        ip(&[
            "link", "add", &netdev, "mtu", "1500", "address", &mac, "type", "veth", "peer", "name",
            &wire,
        ])?;
        ip(&["link", "set", &wire, "netns", peer.name()])?;
        peer.exec(&[
            "ip",
            "addr",
            "add",
            &format!("10.99.{subnet}.1/24"),
            "dev",
            &wire,
        ])?;
        peer.exec(&["ip", "link", "set", &wire, "up"])?;
        let (pf_pci, vf_pci, vfio_pci) = pci(subnet);
        fixture::create(
            &dir.path().join("sys"),
            &pf_pci,
            &pf,
            &[
                (vf_pci.as_str(), Some(netdev.as_str()), "ixgbevf"),
                (vfio_pci.as_str(), None, "vfio-pci"),
            ],
        )?;
        Ok(FakeVf {
            dir,
            netdev,
            pf,
            _peer: peer,
            mac,
        })
    }

    fn cni(&self) -> Result<CniPlugin> {
        Ok(CniPlugin::heddle()?.with_env(
            "HEDDLE_SYSFS_ROOT",
            &self.dir.path().join("sys").display().to_string(),
        ))
    }

    fn conf(&self, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.1.0",
            "name": "sriov-a",
            "type": "heddle-cni",
            "kind": "sriov",
            "stateDir": self.dir.path().join("state"),
            "switchSocket": self.dir.path().join("no-switch.sock"),
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        c
    }

    /// `ip -o link show <name>` in the host, or None.
    fn host_link(&self, name: &str) -> Option<String> {
        ip(&["-o", "link", "show", name]).ok()
    }

    /// Files in the state directory other than lock files.
    fn state_files(&self) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if !path.to_string_lossy().ends_with(".lock") {
                    out.push(path);
                }
            }
        }
        let mut out = vec![];
        walk(&self.dir.path().join("state"), &mut out);
        out
    }

    /// The stand-in is back as it started: original name, MAC, MTU 1500, down.
    fn ensure_restored(&self) -> Result<()> {
        let link = self
            .host_link(&self.netdev)
            .with_context(|| format!("{} is not back in the host", self.netdev))?;
        ensure!(link.contains(&self.mac), "{link}");
        ensure!(link.contains("mtu 1500"), "{link}");
        ensure!(!link.contains(",UP"), "not down: {link}");
        Ok(())
    }
}

impl Drop for FakeVf {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.netdev]);
        let _ = ip(&["link", "del", &self.pf]);
    }
}

#[test]
fn a_vf_netdev_moves_into_the_pod_carries_a_ping_and_del_brings_it_back_twice() -> Result<()> {
    let vf = FakeVf::new(1)?;
    let (pf_pci, vf_pci, _) = pci(1);
    let cni = vf.cni()?;
    let pod = Netns::unique("hdsriovpod")?;
    let ns = pod.path().display().to_string();
    let info = vf.dir.path().join("devinfo/net1.json");
    let c = vf.conf(json!({
        "mtu": 1400,
        "mac": "02:5f:00:00:01:99",
        "adminMac": false,
        "runtimeConfig": {"deviceID": vf_pci, "ips": ["10.99.1.2/24"], "CNIDeviceInfoFile": info},
    }));
    let r = cni.ok("ADD", "sriov-pod-1", "net1", &ns, &c)?;
    let i = &r["interfaces"][0];
    ensure!(
        i["pciID"] == vf_pci.as_str() && i["mtu"] == 1400 && i["mac"] == "02:5f:00:00:01:99",
        "{r}"
    );
    ensure!(i["sandbox"] == ns.as_str(), "{r}");
    ensure!(r["ips"][0]["address"] == "10.99.1.2/24", "{r}");
    let di: Value = serde_json::from_slice(&std::fs::read(&info)?)?;
    ensure!(
        di["type"] == "pci"
            && di["pci"]["pci-address"] == vf_pci.as_str()
            && di["pci"]["pf-pci-address"] == pf_pci.as_str(),
        "{di}"
    );
    ensure!(
        vf.host_link(&vf.netdev).is_none(),
        "{} still in the host",
        vf.netdev
    );
    let link = pod.exec(&["ip", "-o", "link", "show", "net1"])?;
    ensure!(
        link.contains("mtu 1400") && link.contains("02:5f:00:00:01:99") && link.contains(",UP"),
        "{link}"
    );
    let addr = pod.exec(&["ip", "-o", "addr", "show", "dev", "net1"])?;
    ensure!(addr.contains("10.99.1.2/24"), "{addr}");
    let out = pod.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.99.1.1"])?;
    ensure!(out.contains(" 0% packet loss"), "{out}");
    // Repeated ADD answers the same; CHECK passes.
    ensure!(cni.ok("ADD", "sriov-pod-1", "net1", &ns, &c)? == r);
    cni.ok("CHECK", "sriov-pod-1", "net1", &ns, &c)?;

    for _ in 0..2 {
        cni.ok("DEL", "sriov-pod-1", "net1", &ns, &c)?;
    }
    vf.ensure_restored()?;
    ensure!(
        pod.exec(&["ip", "link", "show", "net1"]).is_err(),
        "net1 left in the pod"
    );
    ensure!(!info.exists(), "device-info file left");
    ensure!(vf.state_files().is_empty(), "{:?}", vf.state_files());
    // Freed: another pod can take it.
    let pod2 = Netns::unique("hdsriovpod")?;
    let ns2 = pod2.path().display().to_string();
    cni.ok("ADD", "sriov-pod-2", "eth1", &ns2, &c)?;
    ensure!(pod2.exec(&["ip", "link", "show", "eth1"]).is_ok());
    cni.ok("DEL", "sriov-pod-2", "eth1", "", &c)?;
    vf.ensure_restored()?;
    Ok(())
}

#[test]
fn del_with_the_netns_gone_succeeds_and_a_late_del_leaves_the_new_holder_alone() -> Result<()> {
    let vf = FakeVf::new(2)?;
    let (_, vf_pci, _) = pci(2);
    let cni = vf.cni()?;
    let c = vf.conf(json!({"runtimeConfig": {"deviceID": vf_pci}}));
    let old = Netns::unique("hdsriovold")?;
    let old_ns = old.path().display().to_string();
    cni.ok("ADD", "old-pod", "net1", &old_ns, &c)?;
    // A second pod asking for the VF while the first one lives: try again later.
    let new = Netns::unique("hdsriovnew")?;
    let new_ns = new.path().display().to_string();
    let r = cni.call("ADD", "new-pod", "net1", &new_ns, &c)?;
    ensure!(!r.ok && r.code() == Some(11), "{:?}", r);
    ensure!(new.exec(&["ip", "link", "show", "net1"]).is_err());

    // The old pod's netns goes away. A real VF would return to the host; the veth standing
    // in for it dies with the namespace, so recreate it where the kernel would put it back.
    drop(old);
    ensure!(vf.host_link(&vf.netdev).is_none());
    ip(&[
        "link",
        "add",
        &vf.netdev,
        "address",
        "02:5f:00:00:02:77",
        "type",
        "veth",
        "peer",
        "name",
        &unique_name("hdvw", 15),
    ])?;
    // The device plugin gives the VF to the new pod before the old pod's DEL comes.
    cni.ok("ADD", "new-pod", "net1", &new_ns, &c)?;
    // The late DEL of the old pod (netns gone) succeeds and leaves the VF in the new pod.
    cni.ok("DEL", "old-pod", "net1", "", &c)?;
    cni.ok("DEL", "old-pod", "net1", &old_ns, &c)?;
    ensure!(
        new.exec(&["ip", "link", "show", "net1"]).is_ok(),
        "the late DEL took the VF from the new pod"
    );
    cni.ok("CHECK", "new-pod", "net1", &new_ns, &c)?;
    // The new pod's DEL restores what the first pod found (its MAC, not the recreated one).
    cni.ok("DEL", "new-pod", "net1", &new_ns, &c)?;
    vf.ensure_restored()?;
    ensure!(vf.state_files().is_empty(), "{:?}", vf.state_files());

    // DEL with the netns already gone and the VF's netdev gone with it: success, no state.
    let gone = Netns::unique("hdsriovgone")?;
    let gone_ns = gone.path().display().to_string();
    cni.ok("ADD", "gone-pod", "net1", &gone_ns, &c)?;
    drop(gone);
    cni.ok("DEL", "gone-pod", "net1", &gone_ns, &c)?;
    ensure!(vf.state_files().is_empty(), "{:?}", vf.state_files());
    Ok(())
}

#[test]
fn failed_adds_leave_the_vf_in_the_host_and_no_state() -> Result<()> {
    let vf = FakeVf::new(3)?;
    let (_, vf_pci, vfio_pci) = pci(3);
    let cni = vf.cni()?;
    let pod = Netns::unique("hdsriovfail")?;
    let ns = pod.path().display().to_string();

    // VF-level settings on a PF that has no VFs (a veth): refused with the PF named.
    let c = vf.conf(json!({"vlan": 100, "spoofchk": "off", "runtimeConfig": {"deviceID": vf_pci}}));
    let r = cni.call("ADD", "fail-pod", "net1", &ns, &c)?;
    let msg = r.json["msg"].as_str().unwrap_or_default();
    ensure!(!r.ok && r.code() == Some(101), "{:?}", r);
    ensure!(
        msg.starts_with(&format!("PF {} does not accept VF settings: ", vf.pf)),
        "{msg}"
    );
    eprintln!("refused as expected: {msg} / {}", r.json["details"]);
    vf.ensure_restored()?;
    // The request itself, sent to the kernel anyway: the veth driver has no ndo_set_vf_*.
    let e = NetlinkPf
        .apply(
            &vf.pf,
            0,
            &VfSettings {
                vlan: Some(100),
                ..Default::default()
            },
        )
        .err()
        .context("the kernel took VF settings on a veth")?;
    eprintln!(
        "kernel refused the IFLA_VFINFO_LIST request: {} / {}",
        e.msg, e.details
    );
    ensure!(
        e.msg
            .starts_with(&format!("PF {} does not accept VF settings: ", vf.pf))
            && e.msg.contains("Operation not supported"),
        "{e}"
    );
    ensure!(vf.state_files().is_empty(), "{:?}", vf.state_files());

    // A failure after the move (a route whose gateway is off-link): the VF comes back.
    let c = vf.conf(json!({
        "mtu": 1300,
        "runtimeConfig": {"deviceID": vf_pci, "ips": ["10.99.3.2/24"]},
        "prevResult": {"cniVersion": "1.1.0", "routes": [{"dst": "10.200.0.0/16", "gw": "10.55.0.1"}]},
    }));
    let r = cni.call("ADD", "fail-pod", "net1", &ns, &c)?;
    ensure!(!r.ok && r.code() == Some(101), "{:?}", r);
    ensure!(
        pod.exec(&["ip", "link", "show", "net1"]).is_err(),
        "net1 left in the pod"
    );
    vf.ensure_restored()?;
    ensure!(vf.state_files().is_empty(), "{:?}", vf.state_files());
    cni.ok("DEL", "fail-pod", "net1", &ns, &c)?;

    // A vfio-pci VF (DPDK in the pod): no netdev to move, reported by pciID.
    let c = vf.conf(json!({"runtimeConfig": {"deviceID": vfio_pci}}));
    let r = cni.ok("ADD", "dpdk-pod", "net1", &ns, &c)?;
    ensure!(r["interfaces"][0]["pciID"] == vfio_pci.as_str(), "{r}");
    cni.ok("DEL", "dpdk-pod", "net1", "", &c)?;
    ensure!(vf.state_files().is_empty(), "{:?}", vf.state_files());
    // The device plugin's environment instead of deviceID.
    let c = vf.conf(json!({"resourceName": "example.com/vf"}));
    let cni_env = cni.clone().with_env("PCIDEVICE_EXAMPLE_COM_VF", &vfio_pci);
    let r = cni_env.ok("ADD", "env-pod", "net1", &ns, &c)?;
    ensure!(r["interfaces"][0]["pciID"] == vfio_pci.as_str(), "{r}");
    cni_env.ok("DEL", "env-pod", "net1", &ns, &c)?;
    ensure!(vf.state_files().is_empty(), "{:?}", vf.state_files());
    Ok(())
}
