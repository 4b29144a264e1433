//! OVS-DPDK 3.1 (Debian's `openvswitch-switch-dpdk`) as a switch under test: a private
//! ovsdb-server and ovs-vswitchd-dpdk in a temporary run directory, one `netdev` bridge
//! with the default NORMAL (learning) flow, and `dpdkvhostuser` ports whose sockets OVS
//! creates in that directory, each an access port (`tag`) or a trunk (`trunks`), with the
//! static MACs heddle's ports get. Everything is stopped, by PID, on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const VSWITCHD: &str = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk";
const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// One `dpdkvhostuser` port and its place on the bridge.
#[derive(Clone, Debug)]
pub struct OvsPort {
    pub name: String,
    pub vlan: OvsVlan,
    /// A static FDB entry for this MAC on this port (`fdb/add`), as heddle's `mac:`.
    pub static_mac: Option<String>,
    /// `mtu_request`, when the default 1500 is too small: OVS drops a frame sent to a
    /// vhost-user port that is longer than its MTU + 18.
    pub mtu: Option<u32>,
}

/// VLAN mode of an [`OvsPort`].
#[derive(Clone, Copy, Debug)]
pub enum OvsVlan {
    /// `tag=N`: untagged frames, on VLAN N inside the bridge.
    Access(u16),
    /// `trunks=N`: frames tagged N only.
    Trunk(u16),
}

/// A running private OVS-DPDK.
pub struct Ovs {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Ovs {
    /// Starts OVS in `dir` with its main thread on `main_cpu`, one PMD thread on `pmd_cpu`,
    /// and `ports` as vhost-user server sockets `dir/<port>`.
    pub fn start(
        dir: &Path,
        main_cpu: u32,
        pmd_cpu: u32,
        socket_mem_mb: u32,
        ports: &[OvsPort],
    ) -> Result<Ovs> {
        if !Path::new(VSWITCHD).exists() {
            bail!("{VSWITCHD} is missing: install Debian's openvswitch-switch-dpdk (deploy/scripts/install-deps.sh openvswitch-switch-dpdk)");
        }
        let mut ovs = Ovs {
            dir: dir.to_owned(),
            children: Vec::new(),
        };
        let db = dir.join("conf.db");
        run(Command::new("ovsdb-tool")
            .arg("create")
            .arg(&db)
            .arg(SCHEMA))?;
        let log =
            |name: &str| -> Result<Stdio> { Ok(std::fs::File::create(dir.join(name))?.into()) };
        ovs.children.push(
            ovs.command("ovsdb-server")
                .arg(&db)
                .arg(format!("--remote=punix:{}", ovs.db().display()))
                .arg(format!("--unixctl={}", dir.join("ovsdb.ctl").display()))
                .stdout(log("ovsdb.out")?)
                .stderr(log("ovsdb.err")?)
                .spawn()
                .context("starting ovsdb-server")?,
        );
        ovs.wait_for(&ovs.db(), "ovsdb-server socket")?;
        ovs.vsctl(&["--no-wait", "init"])?;
        ovs.vsctl(&[
            "--no-wait",
            "set",
            "Open_vSwitch",
            ".",
            "other_config:dpdk-init=true",
            &format!("other_config:dpdk-lcore-mask={:#x}", 1u64 << main_cpu),
            &format!("other_config:pmd-cpu-mask={:#x}", 1u64 << pmd_cpu),
            &format!("other_config:dpdk-socket-mem={socket_mem_mb}"),
            &format!(
                "other_config:dpdk-extra=--file-prefix=ovs-{} --no-pci --huge-unlink",
                std::process::id()
            ),
        ])?;
        ovs.children.push(
            ovs.command(VSWITCHD)
                .arg(format!("unix:{}", ovs.db().display()))
                .arg(format!("--unixctl={}", ovs.ctl().display()))
                .stdout(log("vswitchd.out")?)
                .stderr(log("vswitchd.err")?)
                .spawn()
                .context("starting ovs-vswitchd-dpdk")?,
        );
        ovs.wait_for(&ovs.ctl(), "ovs-vswitchd control socket")?;
        ovs.vsctl(&[
            "--timeout=30",
            "add-br",
            "br0",
            "--",
            "set",
            "bridge",
            "br0",
            "datapath_type=netdev",
        ])?;
        for p in ports {
            let vlan = match p.vlan {
                OvsVlan::Access(v) => format!("tag={v}"),
                OvsVlan::Trunk(v) => format!("trunks={v}"),
            };
            let mut args = vec![
                "--timeout=30".to_owned(),
                "add-port".into(),
                "br0".into(),
                p.name.clone(),
                vlan,
                "--".into(),
                "set".into(),
                "Interface".into(),
                p.name.clone(),
                "type=dpdkvhostuser".into(),
            ];
            if let Some(mtu) = p.mtu {
                args.push(format!("mtu_request={mtu}"));
            }
            ovs.vsctl(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
            ovs.wait_for(&dir.join(&p.name), "a dpdkvhostuser socket")?;
        }
        for p in ports {
            if let (Some(mac), OvsVlan::Access(v)) = (&p.static_mac, p.vlan) {
                ovs.appctl(&["fdb/add", "br0", &p.name, &v.to_string(), mac])
                    .with_context(|| format!("static MAC {mac} on {}", p.name))?;
            }
        }
        Ok(ovs)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for var in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
            c.env(var, &self.dir);
        }
        c.stdin(Stdio::null());
        c
    }

    fn db(&self) -> PathBuf {
        self.dir.join("db.sock")
    }

    fn ctl(&self) -> PathBuf {
        self.dir.join("vswitchd.ctl")
    }

    fn wait_for(&self, path: &Path, what: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !path.exists() {
            if Instant::now() > deadline {
                bail!(
                    "OVS: no {what} at {} after 30 s (logs in {})",
                    path.display(),
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn vsctl(&self, args: &[&str]) -> Result<String> {
        run(self
            .command("ovs-vsctl")
            .arg(format!("--db=unix:{}", self.db().display()))
            .args(args))
    }

    /// `ovs-appctl dpif-netdev/<cmd>` against this vswitchd.
    pub fn appctl(&self, args: &[&str]) -> Result<String> {
        run(self
            .command("ovs-appctl")
            .arg("-t")
            .arg(self.ctl())
            .args(args))
    }

    /// Zeroes the PMD counters.
    pub fn clear_pmd_stats(&self) -> Result<()> {
        self.appctl(&["dpif-netdev/pmd-stats-clear"]).map(|_| ())
    }

    /// Share (percent) of the PMD thread's cycles spent processing packets since the last
    /// clear ("processing cycles: N (x%)" of `pmd-stats-show`).
    pub fn busy_percent(&self) -> Result<f64> {
        let out = self.appctl(&["dpif-netdev/pmd-stats-show"])?;
        out.lines()
            .find_map(|l| l.trim().strip_prefix("processing cycles:"))
            .and_then(|v| v.split('(').nth(1)?.split('%').next()?.trim().parse().ok())
            .with_context(|| format!("no processing cycles in pmd-stats-show:\n{out}"))
    }

    /// Every drop and error counter OVS keeps on its interfaces (`rx_dropped`, `tx_dropped`,
    /// `ovs_tx_failure_drops`, `*_errors`, ...), summed over all ports.
    pub fn dropped(&self) -> Result<u64> {
        let out = self.vsctl(&["--columns=statistics", "list", "Interface"])?;
        Ok(sum_drops(&out))
    }

    /// "avg processing cycles per packet" of the first PMD thread since the last clear.
    pub fn processing_cycles_per_packet(&self) -> Result<f64> {
        let out = self.appctl(&["dpif-netdev/pmd-stats-show"])?;
        out.lines()
            .find_map(|l| l.trim().strip_prefix("avg processing cycles per packet:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no cycles per packet in pmd-stats-show:\n{out}"))
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        // vswitchd first (it holds the vhost sockets and hugepages), then the database.
        for c in self.children.iter_mut().rev() {
            // SAFETY: kill(2) on our own unreaped child's PID; it cannot have been reused.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Sums every `*drop*=N` and `*errors=N` in `ovs-vsctl list Interface` statistics.
fn sum_drops(text: &str) -> u64 {
    text.split([',', '{', '}', ' ', '\n'])
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| k.contains("drop") || k.ends_with("errors"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn drops_are_summed_over_ports_and_counters() {
        let text = "statistics          : {rx_bytes=5, rx_dropped=2, rx_errors=0, tx_dropped=3, tx_packets=9}\nstatistics          : {ovs_tx_failure_drops=4, rx_packets=1}\n";
        assert_eq!(super::sum_drops(text), 9);
    }
}
