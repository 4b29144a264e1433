//! A misconfigured frontend cannot flood the node: QEMU asking for 2 queue pairs on a native
//! vhost-user port that offers 1 gives up on every connection right after reading the count.
//! QEMU listens (`server=on`) and the switch connects (`client=1`), so the switch decides how
//! fast it reconnects. The switch must say why once, with the fix, count every such
//! connection, back off, and keep its log and the port thread's CPU small.
//!
//! QEMU runs without a machine or guest (`-machine none`): the vhost-user handshake happens
//! when the netdev is created, before any guest would boot, which makes the test take a few
//! seconds. Needs root, `qemu-system-x86_64`, about 300 MiB of free 2 MiB hugepages for the
//! switch, and the binaries built; `deploy/test.sh` does all.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use heddle_tests::qemu::require_qemu;
use heddle_tests::{
    config_yaml, require_hugepages, require_root, wait_for_socket, wait_until, SwitchProcess,
};

/// How long the loop is watched.
const WINDOW: Duration = Duration::from_secs(6);

/// A QEMU process, killed on drop.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time (user + system) of the switch thread whose name starts with `prefix`.
fn thread_cpu(pid: u32, prefix: &str) -> Result<Duration> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat"))?;
        // Fields after the ")" closing the name: state is field 3; utime, stime 14 and 15.
        let rest = stat.rsplit_once(')').context("stat format")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        return Ok(Duration::from_millis(ticks * 1000 / hz));
    }
    anyhow::bail!("no thread named {prefix}* in the switch")
}

fn qemu_wanting_two_pairs(sock: &Path, log: &Path) -> Result<Qemu> {
    let out = std::fs::File::create(log)?;
    let child = Command::new("qemu-system-x86_64")
        .args(["-machine", "none", "-nodefaults", "-display", "none"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=c0,path={},server=on,wait=off",
            sock.display()
        ))
        .args(["-netdev", "vhost-user,id=n0,chardev=c0,queues=2"])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("spawning qemu-system-x86_64")?;
    Ok(Qemu(child))
}

#[test]
fn qemu_asking_for_more_queue_pairs_is_told_once_counted_and_backed_off() -> Result<()> {
    require_root()?;
    require_qemu()?;
    require_hugepages(300)?;
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("vm.sock");
    let qemu_log = dir.path().join("qemu.log");
    let _qemu = qemu_wanting_two_pairs(&sock, &qemu_log)?;
    wait_for_socket(&sock, Duration::from_secs(10))?;

    let ports = format!(
        "  - {{name: vm, devargs: \"vhost-user-vm,iface={},client=1,queues=1\", mode: access, vlan: 7}}\n",
        sock.display()
    );
    let prefix = heddle_tests::env::free_file_prefix("heddle-qm");
    let switch = SwitchProcess::start(dir.path(), &config_yaml(dir.path(), &prefix, &ports))?;
    let pid = switch.pid().context("switch pid")?;
    let started = Instant::now();
    wait_until(
        "the first refused connection",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let s = switch.client().stats()?;
            let v = s.ports[0].vhost.context("vhost stats")?;
            Ok((v.queue_pair_mismatches >= 1).then_some(()))
        },
    )
    .with_context(|| std::fs::read_to_string(&qemu_log).unwrap_or_default())?;
    let cpu0 = thread_cpu(pid, "vhost-")?;
    std::thread::sleep(WINDOW.saturating_sub(started.elapsed()));
    let cpu = thread_cpu(pid, "vhost-")? - cpu0;
    let elapsed = started.elapsed();

    let v = switch.client().stats()?.ports[0]
        .vhost
        .context("vhost stats")?;
    let log = switch.log();
    let port_lines: Vec<&str> = log.lines().filter(|l| l.contains("port=vm")).collect();
    let why: Vec<&&str> = port_lines
        .iter()
        .filter(|l| l.contains("set queues="))
        .collect();
    eprintln!(
        "{elapsed:?}: {} connects, {} mismatches, {} log lines for the port, port thread CPU {cpu:?}",
        v.connects,
        v.queue_pair_mismatches,
        port_lines.len()
    );
    ensure!(
        v.connects >= 3,
        "the frontend was not retried (QEMU still waits for the switch): {v:?}\n{log}"
    );
    ensure!(
        v.connects <= 12,
        "{} connects in {elapsed:?}: the switch reconnects in a tight loop",
        v.connects
    );
    ensure!(
        v.queue_pair_mismatches + 1 >= v.connects && v.queue_pair_mismatches <= v.connects,
        "every refused connection is counted: {v:?}"
    );
    ensure!(
        why.len() == 1 && why[0].contains("WARN") && why[0].contains("offers 1 queue pair"),
        "the reason is said exactly once, with the fix:\n{log}"
    );
    ensure!(
        port_lines.len() <= 8,
        "{} log lines for the port in {elapsed:?}:\n{log}",
        port_lines.len()
    );
    ensure!(
        cpu < Duration::from_millis(300),
        "the port thread used {cpu:?} of CPU in {elapsed:?}"
    );
    ensure!(
        !v.connected && v.queue_pairs == 0 && v.queue_pairs_offered == 1,
        "queue_pairs counts pairs in use, queue_pairs_offered the port's: {v:?}"
    );
    Ok(())
}
