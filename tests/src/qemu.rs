//! Linux guests in QEMU whose virtio-net NIC is a vhost-user port of the switch.
//!
//! - [`GuestImage`]: Debian's own kernel (the uncompressed `vmlinux`, booted through its PVH
//!   entry) and a busybox initramfs with the virtio-net modules, built once from the Debian
//!   packages `linux-image-amd64` and `busybox-static` and cached under
//!   `/var/cache/heddle-tests/guest/<kernel package>_<version>-<busybox>-<init hash>/`
//!   (`HEDDLE_GUEST_CACHE` overrides the directory). The build happens in a temporary
//!   directory under a lock and is renamed into place when complete, so concurrent or aborted
//!   runs never see a half image.
//! - [`Guest`]: one `qemu-system-x86_64` (KVM when it really works, else TCG), guest RAM in a
//!   shared memfd (what vhost-user needs; no hugepages), its NIC on a vhost-user socket that
//!   QEMU connects to ([`SocketMode::SwitchServer`]) or listens on
//!   ([`SocketMode::SwitchClient`]), the serial console captured to a file. Killed on drop.
//! - [`VhostKind`] and [`SocketMode`] make the switch port's devargs, so one test body runs
//!   against several vhost-user implementations of the switch.
//!
//! The guest's `/init` reads its job from the kernel command line ([`GuestRole`]) and prints
//! markers on the console: [`MARK_UP`] when eth0 is up, then for [`GuestRole::Ping`]
//! [`MARK_PING_PASS`] or [`MARK_PING_FAIL`] followed by busybox ping's summary line (e.g.
//! `5 packets transmitted, 5 packets received, 0% packet loss`), and [`MARK_POWEROFF`] last.
//!
//! # Pitfalls seen here (QEMU 7.2, Debian 12, no usable KVM)
//!
//! - `/dev/kvm` may exist and still not run a stock kernel (a nested PVM): KVM is used only
//!   when the CPU shows `vmx`/`svm` and a probe start succeeds; `HEDDLE_QEMU_ACCEL=tcg|kvm`
//!   overrides.
//! - QEMU 7.2 under TCG segfaults in `vhost_net_start` with MSI-X: the NIC gets `vectors=0`.
//! - Guest memory must be shared (`memory-backend-memfd,share=on` + `-numa node,memdev=`);
//!   otherwise nothing reaches the backend and nothing says so.
//! - Server mode: the backend's socket must exist before QEMU starts. Client mode: QEMU waits
//!   (before running the guest) until the backend connects, even with `wait=off`.
//! - Debian's kernel package has no `modules.dep` in the initramfs: `/init` loads the modules
//!   one by one in dependency order ([`MODULES`]).

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::env::require_tool;

/// Default cache directory of guest images.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/heddle-tests/guest";

/// Printed by `/init` once eth0 has its address and is up.
pub const MARK_UP: &str = "HEDDLE-GUEST-UP";
/// Printed by a [`GuestRole::Ping`] guest when every echo request of the measured run was
/// answered; the rest of the line is ping's summary.
pub const MARK_PING_PASS: &str = "HEDDLE-PING-PASS";
/// Printed by a [`GuestRole::Ping`] guest otherwise (the peer never answered, or loss).
pub const MARK_PING_FAIL: &str = "HEDDLE-PING-FAIL";
/// Printed by `/init` right before it powers the guest off.
pub const MARK_POWEROFF: &str = "HEDDLE-GUEST-POWEROFF";
/// Printed by a ping guest with `oversize` set after its second run, with ping's exit code
/// and summary line.
pub const MARK_BIG_PING: &str = "HEDDLE-BIG-PING";

/// Kernel modules for virtio-net, in load order (the initramfs has no `modules.dep`).
pub const MODULES: [&str; 8] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// The guest's `/init`. Parameters come from the kernel command line (the kernel hands
/// `key=value` words it does not know to init as environment variables):
/// `h_role` (`ping` | `idle`), `h_ip` (CIDR), `h_peer`, `h_count`, `h_interval`, `h_probes`,
/// `h_time` (seconds to stay up: after the ping run, or in total for `idle`), and for `ping`
/// optionally `h_size` (ICMP payload bytes of the measured run) and `h_big` (payload of a
/// second run that is expected to get no answer: its verdict line starts with
/// [`MARK_BIG_PING`]).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin; export PATH=/bin
mount -t proc p /proc; mount -t sysfs s /sys; mount -t devtmpfs d /dev 2>/dev/null
say() { echo "[$(cut -d' ' -f1 /proc/uptime)s] heddle-guest: $*"; }
bye() { say "eth0 counters: $(grep eth0 /proc/net/dev)"; say "HEDDLE-GUEST-POWEROFF"; poweroff -f; sleep 10; }
say "init role=$h_role ip=$h_ip peer=$h_peer count=$h_count interval=$h_interval probes=$h_probes time=$h_time"
for m in @MODULES@; do insmod /mods/$m.ko || say "insmod $m FAILED"; done
n=0; while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
if [ ! -e /sys/class/net/eth0 ]; then
  say "no eth0 after 10 s; interfaces: $(ls /sys/class/net)"
  [ "$h_role" = ping ] && say "HEDDLE-PING-FAIL no eth0"
  bye
fi
ip link set lo up; ip addr add $h_ip dev eth0; ip link set eth0 up
d=$(readlink /sys/class/net/eth0/device/driver)
say "HEDDLE-GUEST-UP mac=$(cat /sys/class/net/eth0/address) drv=${d##*/} carrier=$(cat /sys/class/net/eth0/carrier)"
say "eth0 mtu $(cat /sys/class/net/eth0/mtu)"
case "$h_role" in
ping)
  n=0; ok=0
  while [ $n -lt $h_probes ]; do ping -c1 -W1 $h_peer >/dev/null 2>&1 && { ok=1; break; }; n=$((n+1)); done
  if [ $ok = 1 ]; then say "peer $h_peer answered after $n failed probes"
  else say "peer $h_peer did not answer $n probes"; fi
  ping -c $h_count -i $h_interval -W 2 ${h_size:+-s $h_size} $h_peer >/tmp/ping.out 2>&1; rc=$?
  cat /tmp/ping.out
  loss=$(grep 'packet loss' /tmp/ping.out)
  if [ $rc = 0 ] && echo "$loss" | grep -q ' 0% packet loss'; then
    say "HEDDLE-PING-PASS $loss"
  else
    say "HEDDLE-PING-FAIL rc=$rc ${loss:-no summary line}"
  fi
  if [ -n "$h_big" ]; then
    ping -c $h_count -i $h_interval -W 1 -s $h_big $h_peer >/tmp/big.out 2>&1; rc=$?
    cat /tmp/big.out
    say "HEDDLE-BIG-PING rc=$rc $(grep 'packet loss' /tmp/big.out)"
  fi
  say "eth0 counters: $(grep eth0 /proc/net/dev)"
  say "staying up for $h_time s"; sleep $h_time ;;
idle)
  say "idle responder for $h_time s"; sleep $h_time ;;
*)
  say "unknown role '$h_role'" ;;
esac
bye
"#;

fn init_script() -> String {
    INIT.replace("@MODULES@", &MODULES.join(" "))
}

/// A kernel and initramfs ready to boot.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The image's directory in the cache.
    pub dir: PathBuf,
    /// Uncompressed ELF kernel (PVH entry).
    pub vmlinux: PathBuf,
    /// newc cpio initramfs (uncompressed) with busybox, `/init` and the modules.
    pub initramfs: PathBuf,
    /// Kernel package and version it was built from, e.g. `linux-image-6.1.0-56-amd64 6.1.192-2`.
    pub kernel: String,
}

/// Builds (or finds in the cache) a [`GuestImage`].
#[derive(Debug, Clone)]
pub struct GuestImageBuilder {
    cache_dir: PathBuf,
}

static TMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Images kept in the cache (each about 35 MB): one per kernel/init version in use.
const KEEP_IMAGES: usize = 3;

impl GuestImage {
    /// A builder on `$HEDDLE_GUEST_CACHE` or [`DEFAULT_CACHE_DIR`].
    pub fn builder() -> GuestImageBuilder {
        let cache_dir = std::env::var_os("HEDDLE_GUEST_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR));
        GuestImageBuilder { cache_dir }
    }

    /// The default image, built or found once per test process.
    pub fn get() -> Result<&'static GuestImage> {
        static IMAGE: OnceLock<std::result::Result<GuestImage, String>> = OnceLock::new();
        IMAGE
            .get_or_init(|| Self::builder().build().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("building the guest image: {e}"))
    }

    fn at(dir: PathBuf) -> Option<GuestImage> {
        let vmlinux = dir.join("vmlinux");
        let initramfs = dir.join("initramfs.cpio");
        let kernel = std::fs::read_to_string(dir.join("kernel")).ok()?;
        (vmlinux.is_file() && initramfs.is_file()).then(|| GuestImage {
            dir,
            vmlinux,
            initramfs,
            kernel: kernel.trim().to_owned(),
        })
    }
}

/// Runs a command, failing with its output when it fails.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `(Version, Depends)` of each package's candidate, from one `apt-cache show` (apt-cache
/// takes a second or two to start).
fn apt_show(pkgs: &[&str]) -> Result<Vec<(String, String)>> {
    let text = run(Command::new("apt-cache")
        .args(["show", "--no-all-versions"])
        .args(pkgs))?;
    pkgs.iter()
        .map(|pkg| {
            let para = text
                .split("\n\n")
                .find(|p| p.lines().any(|l| l == format!("Package: {pkg}")))
                .with_context(|| format!("apt-cache show printed nothing for {pkg}"))?;
            let field = |name: &str| {
                para.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
            };
            let version = field("Version:").with_context(|| format!("no Version for {pkg}"))?;
            Ok((version, field("Depends:").unwrap_or_default()))
        })
        .collect()
}

/// The kernel package behind `linux-image-amd64` and the busybox-static version:
/// `((kernel package, version), busybox version)`. Runs `apt-get update` once if the package
/// lists do not know them.
fn resolve_packages() -> Result<((String, String), String)> {
    let lookup = || -> Result<((String, String), String)> {
        let found = apt_show(&["linux-image-amd64", "busybox-static"])?;
        let depends = &found[0].1;
        // "linux-image-6.1.0-56-amd64 (= 6.1.192-2)"
        let first = depends.split(',').next().unwrap_or_default().trim();
        let (pkg, rest) = first
            .split_once(' ')
            .with_context(|| format!("unexpected Depends of linux-image-amd64: {depends:?}"))?;
        let version = rest
            .trim_start_matches("(=")
            .trim_end_matches(')')
            .trim()
            .to_owned();
        Ok(((pkg.to_owned(), version), found[1].0.clone()))
    };
    match lookup() {
        Ok(v) => Ok(v),
        Err(first) => {
            run(Command::new("apt-get").args(["update", "-qq"])).with_context(|| {
                format!("apt-cache did not know the guest packages ({first:#}) and apt-get update failed")
            })?;
            lookup().context("resolving linux-image-amd64 and busybox-static after apt-get update")
        }
    }
}

fn short_hash(s: &str) -> String {
    // FNV-1a: stable across Rust versions, unlike DefaultHasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h >> 32)
}

impl GuestImageBuilder {
    /// Another cache directory.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = dir.into();
        self
    }

    /// The cached image for the current kernel package, built first if missing (about 10 s:
    /// a 70 MB download and unpacking). When apt cannot resolve the packages (offline), the
    /// most recent cached image is used instead.
    pub fn build(self) -> Result<GuestImage> {
        for tool in ["apt-get", "apt-cache", "dpkg-deb", "tar", "xz"] {
            require_tool(tool)?;
        }
        std::fs::create_dir_all(&self.cache_dir)
            .with_context(|| format!("creating {}", self.cache_dir.display()))?;
        let lock_path = self.cache_dir.join(".lock");
        let _lock = heddle_cni::lock::exclusive(&lock_path)
            .with_context(|| format!("locking {}", lock_path.display()))?;
        let ((kpkg, kver), bbver) = match resolve_packages() {
            Ok(v) => v,
            Err(e) => {
                return self.newest_cached().with_context(|| {
                    format!("cannot resolve the guest packages ({e:#}) and no image is cached")
                })
            }
        };
        let init = init_script();
        let key = format!("{kpkg}_{kver}-bb{bbver}-{}", short_hash(&init)).replace(':', "_");
        let dir = self.cache_dir.join(&key);
        if let Some(img) = GuestImage::at(dir.clone()) {
            return Ok(img);
        }
        // We hold the lock: any temporary directory is left over from an aborted build.
        for e in std::fs::read_dir(&self.cache_dir)?.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let tmp = self.cache_dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = build_into(&tmp, &kpkg, &kver, &bbver, &init).and_then(|()| {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            std::fs::rename(&tmp, &dir)
                .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))
        });
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        self.prune(KEEP_IMAGES);
        GuestImage::at(dir.clone())
            .with_context(|| format!("{} is incomplete right after building it", dir.display()))
    }

    /// Removes all but the `keep` most recently built images (other checkouts may still use
    /// an older one). Called with the lock held.
    fn prune(&self, keep: usize) {
        let Ok(entries) = std::fs::read_dir(&self.cache_dir) else {
            return;
        };
        let mut images: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        images.sort();
        let excess = images.len().saturating_sub(keep);
        for (_, path) in images.into_iter().take(excess) {
            let _ = std::fs::remove_dir_all(path);
        }
    }

    fn newest_cached(&self) -> Result<GuestImage> {
        let mut best: Option<(std::time::SystemTime, GuestImage)> = None;
        for e in std::fs::read_dir(&self.cache_dir)?.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Some(img) = GuestImage::at(e.path()) else {
                continue;
            };
            let t = e.metadata()?.modified()?;
            if !matches!(&best, Some((bt, _)) if *bt >= t) {
                best = Some((t, img));
            }
        }
        best.map(|(_, img)| img)
            .with_context(|| format!("no guest image in {}", self.cache_dir.display()))
    }
}

fn single_file(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one {prefix}* in {}, found {found:?}",
            dir.display()
        ),
    }
}

fn build_into(tmp: &Path, kpkg: &str, kver: &str, bbver: &str, init: &str) -> Result<()> {
    let dl = tmp.join("dl");
    std::fs::create_dir_all(&dl)?;
    // apt's download sandbox user (_apt) must be able to write here.
    std::fs::set_permissions(&dl, std::fs::Permissions::from_mode(0o777))?;
    run(Command::new("apt-get")
        .current_dir(&dl)
        .args(["download", "-q"])
        .arg(format!("{kpkg}={kver}"))
        .arg(format!("busybox-static={bbver}")))?;
    let kdeb = single_file(&dl, &format!("{kpkg}_"))?;
    let bbdeb = single_file(&dl, "busybox-static_")?;

    // Only the kernel image and the few modules: the whole package unpacks to 400 MB.
    let x = tmp.join("x");
    std::fs::create_dir_all(&x)?;
    let mut patterns = vec!["./boot/vmlinuz-*".to_owned()];
    patterns.extend(MODULES.iter().map(|m| format!("*/{m}.ko")));
    run(Command::new("sh")
        .arg("-c")
        .arg(r#"deb=$1; dir=$2; shift 2; dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir" --wildcards "$@""#)
        .arg("sh")
        .arg(&kdeb)
        .arg(&x)
        .args(&patterns))?;
    run(Command::new("sh")
        .arg("-c")
        .arg(r#"dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" ./bin/busybox"#)
        .arg("sh")
        .arg(&bbdeb)
        .arg(&x))?;

    // PVH entry: boot the uncompressed ELF (skips real-mode setup and in-guest xz).
    let vmlinuz = std::fs::read(single_file(&x.join("boot"), "vmlinuz-")?)?;
    let magic = b"\xfd7zXZ\x00";
    let off = vmlinuz
        .windows(magic.len())
        .position(|w| w == magic)
        .context("no xz stream in vmlinuz")?;
    let vmlinux = tmp.join("vmlinux");
    let mut xz = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&vmlinux)?)
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning xz")?;
    // xz stops reading after the stream; the trailing bytes may then hit a closed pipe.
    let _ = xz
        .stdin
        .take()
        .context("xz stdin")?
        .write_all(&vmlinuz[off..]);
    let out = xz.wait_with_output()?;
    ensure!(
        out.status.success(),
        "xz -d of vmlinuz failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut head = [0u8; 4];
    std::fs::File::open(&vmlinux)?.read_exact(&mut head)?;
    ensure!(
        &head == b"\x7fELF",
        "vmlinuz did not unpack to an ELF vmlinux"
    );

    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "tmp", "mods"] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("init", 0o755, init.as_bytes());
    cpio.file("bin/busybox", 0o755, &std::fs::read(x.join("bin/busybox"))?);
    for m in MODULES {
        let path = find_file(&x.join("lib"), &format!("{m}.ko"))?
            .with_context(|| format!("{m}.ko is not in {kpkg}"))?;
        cpio.file(&format!("mods/{m}.ko"), 0o644, &std::fs::read(path)?);
    }
    std::fs::write(tmp.join("initramfs.cpio"), cpio.finish())?;
    std::fs::write(tmp.join("kernel"), format!("{kpkg} {kver}\n"))?;
    std::fs::write(tmp.join("init"), init)?;
    std::fs::remove_dir_all(&dl)?;
    std::fs::remove_dir_all(&x)?;
    Ok(())
}

fn find_file(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        if e.file_type()?.is_dir() {
            if let Some(f) = find_file(&p, name)? {
                return Ok(Some(f));
            }
        } else if e.file_name() == name {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// A newc ("070701") cpio archive, the initramfs format, written without `cpio` or root
/// (device nodes are just headers).
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() & 3 != 0 {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// How the vhost-user socket is set up between the switch and QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketMode {
    /// The switch creates and listens on the socket; QEMU connects (start the switch first).
    SwitchServer,
    /// QEMU listens (`server=on,wait=off`); the switch connects (`client=1`).
    SwitchClient,
}

/// The switch's vhost-user implementation a port uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhostKind {
    /// DPDK's `net_vhost` PMD: `net_vhost<n>,iface=<path>[,client=1]`.
    DpdkNetVhost,
    /// The switch's own vhost-user port kind: `vhost-user-<n>,iface=<path>[,client=1]`.
    Native,
}

impl VhostKind {
    /// Devargs of port number `index` on socket `path`.
    pub fn devargs(self, index: u32, path: &Path, mode: SocketMode) -> String {
        let client = match mode {
            SocketMode::SwitchServer => "",
            SocketMode::SwitchClient => ",client=1",
        };
        let dev = match self {
            VhostKind::DpdkNetVhost => "net_vhost",
            VhostKind::Native => "vhost-user-",
        };
        format!("{dev}{index},iface={}{client}", path.display())
    }
}

/// What the guest's `/init` does once eth0 is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestRole {
    /// Probe `peer` once a second until it answers (at most `probes` times), then ping it
    /// `count` times every `interval_ms`, print [`MARK_PING_PASS`] or [`MARK_PING_FAIL`] with
    /// the loss line, and stay up `linger` (so that the peer can ping back) before powering
    /// off.
    Ping {
        /// Peer IPv4 address.
        peer: String,
        /// Echo requests in the measured run.
        count: u32,
        /// Interval between them.
        interval_ms: u32,
        /// Probes (1 s each) allowed before the measured run.
        probes: u32,
        /// Time to stay up after the run.
        linger: Duration,
        /// ICMP payload bytes of the measured run (ping's default 56 when `None`).
        size: Option<u32>,
        /// A second run of `count` requests with this payload, expected to go unanswered
        /// (reported after [`MARK_BIG_PING`], not in the verdict).
        oversize: Option<u32>,
    },
    /// Answer pings (the kernel does) for `time`, then power off.
    Idle {
        /// Time to stay up.
        time: Duration,
    },
}

impl GuestRole {
    /// A ping role with 5 requests 200 ms apart, 60 probes, staying up 60 s afterwards.
    pub fn ping(peer: &str) -> GuestRole {
        GuestRole::Ping {
            peer: peer.to_owned(),
            count: 5,
            interval_ms: 200,
            probes: 60,
            linger: Duration::from_secs(60),
            size: None,
            oversize: None,
        }
    }

    fn cmdline(&self) -> String {
        match self {
            GuestRole::Ping {
                peer,
                count,
                interval_ms,
                probes,
                linger,
                size,
                oversize,
            } => {
                let mut c = format!(
                    "h_role=ping h_peer={peer} h_count={count} h_interval={}.{:03} h_probes={probes} h_time={}",
                    interval_ms / 1000,
                    interval_ms % 1000,
                    linger.as_secs()
                );
                if let Some(s) = size {
                    c += &format!(" h_size={s}");
                }
                if let Some(s) = oversize {
                    c += &format!(" h_big={s}");
                }
                c
            }
            GuestRole::Idle { time } => format!("h_role=idle h_time={}", time.as_secs()),
        }
    }
}

/// The accelerator QEMU runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation (much slower; the NIC then needs `vectors=0`).
    Tcg,
}

/// KVM when `HEDDLE_QEMU_ACCEL=kvm`, or when unset and the CPU shows vmx/svm and QEMU can
/// start with `-accel kvm`; TCG otherwise. Probed once per process.
pub fn accel() -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    *ACCEL.get_or_init(|| match std::env::var("HEDDLE_QEMU_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        Ok("tcg") => Accel::Tcg,
        _ => {
            let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let hw = flags
                .lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
            let probe = hw
                && Path::new("/dev/kvm").exists()
                && Command::new("qemu-system-x86_64")
                    .args([
                        "-accel",
                        "kvm",
                        "-M",
                        "none",
                        "-nodefaults",
                        "-display",
                        "none",
                    ])
                    .args(["-monitor", "none", "-S"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()
                    .is_some_and(|mut c| {
                        // Still running after a moment means the accelerator initialised.
                        std::thread::sleep(Duration::from_millis(500));
                        let alive = matches!(c.try_wait(), Ok(None));
                        let _ = c.kill();
                        let _ = c.wait();
                        alive
                    });
            if probe {
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        }
    })
}

/// Fails unless `qemu-system-x86_64` and the image tools are installed.
pub fn require_qemu() -> Result<()> {
    require_tool("qemu-system-x86_64").context(
        "qemu-system-x86_64 comes from the Debian package qemu-system-x86 (deploy/scripts/install-deps.sh)",
    )?;
    Ok(())
}

/// Settings of one guest.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// Name used in messages and the console file name.
    pub name: String,
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// Who listens on it.
    pub mode: SocketMode,
    /// The NIC's MAC.
    pub mac: String,
    /// eth0's address with prefix, e.g. `10.77.0.1/24`.
    pub ip: String,
    /// What `/init` does.
    pub role: GuestRole,
    /// Guest RAM in MiB (a shared memfd).
    pub memory_mib: u32,
    /// Directory for the console file.
    pub log_dir: PathBuf,
    /// The NIC asks for packed virtqueues (virtio 1.1, `packed=on`).
    pub packed: bool,
    /// [`SocketMode::SwitchServer`] only: QEMU reconnects every this many seconds when the
    /// switch goes away (`reconnect=` on the chardev), as a server-mode pod must; `None`: a
    /// lost switch leaves the NIC dead until QEMU restarts.
    pub reconnect_secs: Option<u32>,
    /// The NIC's `host_mtu=` (QEMU offers `VIRTIO_NET_F_MTU` to the guest, whose MTU then
    /// starts there, and sends `VHOST_USER_NET_SET_MTU` to the switch); `None`: not set.
    pub host_mtu: Option<u16>,
}

/// A running QEMU guest, killed on drop.
pub struct Guest {
    name: String,
    child: Option<Child>,
    console: PathBuf,
    started: Instant,
}

impl Guest {
    /// Starts QEMU for `cfg` on `image`. In [`SocketMode::SwitchServer`] the socket must
    /// already exist; in [`SocketMode::SwitchClient`] QEMU creates it (wait for it with
    /// [`crate::wait_for_socket`]) and holds the guest until the switch connects.
    pub fn spawn(image: &GuestImage, cfg: &GuestConfig) -> Result<Guest> {
        require_qemu()?;
        let console = cfg.log_dir.join(format!("{}.console", cfg.name));
        let out = std::fs::File::create(&console)
            .with_context(|| format!("creating {}", console.display()))?;
        let (accel_args, nic_extra): (&[&str], &str) = match accel() {
            Accel::Kvm => (&["-accel", "kvm", "-cpu", "host"], ""),
            Accel::Tcg => (&["-accel", "tcg", "-cpu", "max"], ",vectors=0"),
        };
        let listen = match (cfg.mode, cfg.reconnect_secs) {
            (SocketMode::SwitchServer, None) => String::new(),
            (SocketMode::SwitchServer, Some(s)) => format!(",reconnect={s}"),
            (SocketMode::SwitchClient, _) => ",server=on,wait=off".to_owned(),
        };
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(accel_args)
            .args(["-m", &format!("{}M", cfg.memory_mib), "-smp", "1"])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-no-reboot",
                "-display",
                "none",
            ])
            .arg("-object")
            .arg(format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                cfg.memory_mib
            ))
            .args(["-numa", "node,memdev=mem"])
            .arg("-kernel")
            .arg(&image.vmlinux)
            .arg("-initrd")
            .arg(&image.initramfs)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 quiet panic=-1 h_ip={} {}",
                cfg.ip,
                cfg.role.cmdline()
            ))
            .arg("-chardev")
            .arg(format!(
                "socket,id=c0,path={}{listen}",
                cfg.socket.display()
            ))
            .args(["-netdev", "vhost-user,id=n0,chardev=c0"])
            .arg("-device")
            .arg(format!(
                "virtio-net-pci,netdev=n0,mac={},romfile={nic_extra}{}{}",
                cfg.mac,
                if cfg.packed { ",packed=on" } else { "" },
                cfg.host_mtu
                    .map(|m| format!(",host_mtu={m}"))
                    .unwrap_or_default()
            ))
            .args(["-serial", "stdio"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe, between fork
        // and exec. It makes the kernel kill QEMU when the spawning thread dies, so a killed
        // test run leaves no guest behind.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning qemu-system-x86_64 for {}", cfg.name))?;
        Ok(Guest {
            name: cfg.name.clone(),
            child: Some(child),
            console,
            started: Instant::now(),
        })
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The console file (serial console and QEMU's own messages).
    pub fn console_path(&self) -> &Path {
        &self.console
    }

    /// Everything on the console so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// The last `lines` lines of the console, framed with the guest's name.
    pub fn console_tail(&self, lines: usize) -> String {
        let text = self.console();
        let all: Vec<&str> = text.lines().collect();
        let mut s = format!(
            "--- console of guest {} ({}), last {} lines ---\n",
            self.name,
            self.console.display(),
            lines.min(all.len())
        );
        for l in &all[all.len().saturating_sub(lines)..] {
            let _ = writeln!(s, "{l}");
        }
        s
    }

    /// Time since QEMU was spawned.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// QEMU's exit status, if it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits until the console has a line containing `marker`; returns that line. Fails on
    /// timeout or when QEMU exits first, with the console tail in the error.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.console().lines().find(|l| l.contains(marker)) {
                return Ok(line.to_owned());
            }
            if let Some(st) = self.exit_status() {
                // The last lines may have landed between the read and the exit check.
                if let Some(line) = self.console().lines().find(|l| l.contains(marker)) {
                    return Ok(line.to_owned());
                }
                bail!(
                    "guest {} exited ({st}) after {:.1?} without printing {marker:?}\n{}",
                    self.name,
                    self.uptime(),
                    self.console_tail(60)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "guest {} did not print {marker:?} within {timeout:?} ({:.1?} since launch)\n{}",
                    self.name,
                    self.uptime(),
                    self.console_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the first of several markers; returns `(index, line)`.
    pub fn wait_for_any(&mut self, markers: &[&str], timeout: Duration) -> Result<(usize, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console();
            for l in text.lines() {
                if let Some(i) = markers.iter().position(|m| l.contains(m)) {
                    return Ok((i, l.to_owned()));
                }
            }
            let exited = self.exit_status();
            if exited.is_some() || Instant::now() >= deadline {
                let text = self.console();
                for l in text.lines() {
                    if let Some(i) = markers.iter().position(|m| l.contains(m)) {
                        return Ok((i, l.to_owned()));
                    }
                }
                bail!(
                    "guest {} printed none of {markers:?} ({}; {:.1?} since launch)\n{}",
                    self.name,
                    exited
                        .map_or_else(|| format!("timeout {timeout:?}"), |s| format!("exited {s}")),
                    self.uptime(),
                    self.console_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills QEMU (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devargs_per_kind_and_mode() {
        let p = Path::new("/tmp/x/a.sock");
        assert_eq!(
            VhostKind::DpdkNetVhost.devargs(0, p, SocketMode::SwitchServer),
            "net_vhost0,iface=/tmp/x/a.sock"
        );
        assert_eq!(
            VhostKind::DpdkNetVhost.devargs(1, p, SocketMode::SwitchClient),
            "net_vhost1,iface=/tmp/x/a.sock,client=1"
        );
        assert_eq!(
            VhostKind::Native.devargs(2, p, SocketMode::SwitchClient),
            "vhost-user-2,iface=/tmp/x/a.sock,client=1"
        );
    }

    #[test]
    fn cpio_is_aligned_newc_with_trailer() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", 0o755, b"#!/bin/sh\n");
        let out = c.finish();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn role_command_lines() {
        assert_eq!(
            GuestRole::ping("10.0.0.2").cmdline(),
            "h_role=ping h_peer=10.0.0.2 h_count=5 h_interval=0.200 h_probes=60 h_time=60"
        );
        assert_eq!(
            GuestRole::Idle {
                time: Duration::from_secs(30)
            }
            .cmdline(),
            "h_role=idle h_time=30"
        );
    }
}
