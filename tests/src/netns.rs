//! Network namespaces and veth pairs, driven through the `ip` command (iproute2).
//!
//! Both types delete what they created on drop. Deleting one end of a veth pair deletes the
//! other, and deleting a namespace deletes the veth ends inside it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::env::unique_name;

/// Runs `ip <args>` and returns its stdout; fails with `ip`'s stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// Runs `program <args>`, returning stdout or failing with the command line and stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting `{program}`"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` and brings its loopback up. Fails if it already exists.
    pub fn new(name: &str) -> Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates a namespace with a name unique to this process, starting with `base`.
    pub fn unique(base: &str) -> Result<Self> {
        Self::new(&unique_name(base, 32))
    }

    /// The namespace name, as used by `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file (`/run/netns/<name>`), usable with `setns(2)`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace (`ip netns exec <name> <args>`), returning stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs `f` on a fresh thread that has joined this namespace, and returns its result.
    /// Sockets created by `f` stay in this namespace wherever they are used afterwards; the
    /// calling thread's namespace is never changed.
    pub fn run_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let path = self.path();
        std::thread::spawn(move || -> Result<T> {
            let file = File::open(&path)
                .with_context(|| format!("opening namespace {}", path.display()))?;
            // SAFETY: `file` is an open namespace file descriptor that outlives the call, and
            // CLONE_NEWNET only changes the network namespace of this short-lived thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("setns into {}", path.display()));
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread inside namespace panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A veth pair: `host` stays in the current namespace, `peer` optionally moves into a
/// [`Netns`]. Both ends are up and have IPv6 disabled (no router solicitations or DAD frames
/// to filter out). Deleted on drop.
#[derive(Debug)]
pub struct VethPair {
    host: String,
    peer: String,
}

impl VethPair {
    /// Creates `host` <-> `peer`, moves `peer` into `netns` if given, and sets both up.
    pub fn new(host: &str, peer: &str, netns: Option<&Netns>) -> Result<Self> {
        ip(&["link", "add", host, "type", "veth", "peer", "name", peer])?;
        let pair = Self {
            host: host.to_owned(),
            peer: peer.to_owned(),
        };
        disable_ipv6(None, host);
        ip(&["link", "set", host, "up"])?;
        match netns {
            Some(ns) => {
                ip(&["link", "set", peer, "netns", ns.name()])?;
                disable_ipv6(Some(ns), peer);
                ns.exec(&["ip", "link", "set", peer, "up"])?;
            }
            None => {
                disable_ipv6(None, peer);
                ip(&["link", "set", peer, "up"])?;
            }
        }
        Ok(pair)
    }

    /// Creates a pair with names unique to this process (at most 15 bytes each).
    pub fn unique(netns: Option<&Netns>) -> Result<Self> {
        let host = unique_name("hdh", 15);
        let peer = unique_name("hdp", 15);
        Self::new(&host, &peer, netns)
    }

    /// Name of the end in the current namespace.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Name of the other end (inside the namespace if one was given).
    pub fn peer(&self) -> &str {
        &self.peer
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Fails harmlessly when the namespace holding the peer is already gone.
        let _ = ip(&["link", "del", &self.host]);
    }
}

/// Best effort: IPv6 may be compiled out or the sysctl missing; the tests only lose quiet.
fn disable_ipv6(netns: Option<&Netns>, ifname: &str) {
    let key = format!("net.ipv6.conf.{ifname}.disable_ipv6=1");
    let _ = match netns {
        Some(ns) => ns.exec(&["sysctl", "-q", "-w", &key]),
        None => run("sysctl", &["-q", "-w", &key]),
    };
}
