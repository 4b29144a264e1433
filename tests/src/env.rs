//! Preconditions, polling and naming helpers shared by the real-peer tests.
//!
//! Every `require_*` function returns an error whose message says what is missing and how to
//! fix it, so a test written as `require_root()?;` fails loudly instead of passing silently.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Fails unless the test runs as root (DPDK, network namespaces and raw sockets need it).
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "this test needs root (euid is {euid}): run it as root, e.g. `sudo -E cargo test -p heddle-tests`"
        );
    }
    Ok(())
}

/// Finds `name` on `PATH`, or fails with a sentence naming the Debian package to install.
pub fn require_tool(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "`{name}` is not on PATH: run deploy/scripts/install-deps.sh (dpdk-testpmd comes from the \
         Debian package dpdk-dev, ip from iproute2, stdbuf from coreutils)"
    )
}

/// State of the 2 MiB hugepage pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HugepageInfo {
    /// `nr_hugepages` of the 2 MiB pool.
    pub total_pages: u64,
    /// `free_hugepages` of the 2 MiB pool.
    pub free_pages: u64,
}

impl HugepageInfo {
    /// Reads the 2 MiB pool from sysfs.
    pub fn read() -> Result<Self> {
        let dir = Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB");
        let read = |f: &str| -> Result<u64> {
            let p = dir.join(f);
            let s =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            s.trim()
                .parse()
                .with_context(|| format!("parsing {}", p.display()))
        };
        Ok(Self {
            total_pages: read("nr_hugepages")?,
            free_pages: read("free_hugepages")?,
        })
    }

    /// Free 2 MiB hugepage memory in MiB.
    pub fn free_mib(&self) -> u64 {
        self.free_pages * 2
    }
}

/// Mount points of every hugetlbfs file system, from `/proc/mounts`.
pub fn hugetlbfs_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, mnt, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "hugetlbfs").then(|| PathBuf::from(mnt))
        })
        .collect()
}

/// Fails unless hugetlbfs is mounted and at least `min_free_mib` MiB of 2 MiB pages are free.
pub fn require_hugepages(min_free_mib: u64) -> Result<HugepageInfo> {
    if hugetlbfs_mounts().is_empty() {
        bail!("no hugetlbfs is mounted: run `deploy/scripts/hugepages.sh` as root first");
    }
    let info = HugepageInfo::read()?;
    if info.free_mib() < min_free_mib {
        bail!(
            "this test needs {min_free_mib} MiB of free 2 MiB hugepages but only {} MiB are free \
             ({} pages reserved): run `deploy/scripts/hugepages.sh 2048` as root, or stop other DPDK \
             processes",
            info.free_mib(),
            info.total_pages
        );
    }
    Ok(info)
}

/// Everything a test with dpdk-testpmd peers needs: root, `dpdk-testpmd`, `ip`, `stdbuf`, and
/// `min_free_mib` of free hugepages.
pub fn require_dpdk_peers(min_free_mib: u64) -> Result<()> {
    require_root()?;
    crate::testpmd::testpmd_binary()?;
    require_tool("stdbuf")?;
    require_tool("ip")?;
    require_hugepages(min_free_mib)?;
    Ok(())
}

/// Polls `probe` every `interval` until it returns `Ok(Some(_))`, returns an error, or
/// `timeout` passes (then fails with `what` in the message).
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(interval);
    }
}

/// Waits until `path` exists and is a Unix socket. Does not connect to it (a connection to a
/// vhost-user socket would count as a new device to the server).
pub fn wait_for_socket(path: &Path, timeout: Duration) -> Result<()> {
    wait_until(
        &format!("Unix socket {}", path.display()),
        timeout,
        Duration::from_millis(10),
        || {
            Ok(std::fs::metadata(path)
                .ok()
                .filter(|m| m.file_type().is_socket())
                .map(|_| ()))
        },
    )
}

static NAME_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<base><pid % 100000>x<n>`, cut to `max_len`
/// characters from the left of `base` (interface names must fit in 15 bytes).
pub fn unique_name(base: &str, max_len: usize) -> String {
    let n = NAME_COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("{}x{n}", std::process::id() % 100_000);
    let keep = max_len.saturating_sub(suffix.len()).min(base.len());
    format!("{}{suffix}", &base[..keep])
}

/// A DPDK `--file-prefix` no running DPDK process uses: `<base>-<pid>-<n>` for which
/// `/var/run/dpdk/<prefix>` does not exist yet.
pub fn free_file_prefix(base: &str) -> String {
    loop {
        let candidate = format!(
            "{base}-{}-{}",
            std::process::id(),
            NAME_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        if !Path::new("/var/run/dpdk").join(&candidate).exists() {
            return candidate;
        }
    }
}

static CPUS: Mutex<()> = Mutex::new(());

/// Serialises tests that pin busy-polling DPDK processes onto the machine's CPUs. Hold the
/// guard for the whole test; a poisoned lock (an earlier test panicked) is taken over.
pub fn exclusive_cpus() -> MutexGuard<'static, ()> {
    CPUS.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_fit_interface_names() {
        let a = unique_name("heddle-veth-host", 15);
        let b = unique_name("heddle-veth-host", 15);
        assert!(a.len() <= 15, "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn wait_until_times_out_with_message() {
        let err = wait_until(
            "nothing",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || Ok(None::<()>),
        )
        .unwrap_err();
        assert!(err.to_string().contains("waiting for nothing"));
    }

    #[test]
    fn hugepage_shortage_names_the_script() {
        let err = require_hugepages(1 << 40).unwrap_err().to_string();
        assert!(err.contains("hugepages.sh"), "{err}");
    }

    #[test]
    fn file_prefixes_differ() {
        assert_ne!(free_file_prefix("t"), free_file_prefix("t"));
    }
}
