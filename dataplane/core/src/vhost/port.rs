//! A native vhost-user port: its socket (the switch as server, or as client of a frontend
//! listening with `server=1`), and the thread that serves the protocol on it.
//!
//! One thread per port handles the control messages; the data path is the PMD workers'
//! (see [`super::ring`]). A blocking thread per connection keeps a frontend that sends half a
//! message from stalling any other port or the daemon's API. As client, the thread
//! reconnects with a short backoff for as long as the port exists, so a switch restart needs
//! nothing from the pod. Dropping the port stops the thread, stops the rings and removes the
//! server socket.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::message::{FrontendReq, VhostUserHeaderFlag};
use vhost::vhost_user::{BackendReqHandler, Error as VuError};
use vmm_sys_util::eventfd::EventFd;

pub use super::device::MAX_PAIRS;
use super::device::{Quiesce, VhostDevice};
use super::ring::PortRings;

/// Devargs prefix of a native vhost-user port, e.g.
/// `vhost-user0,iface=/run/heddle/pod/a.sock,client=1,queues=2,owner=107,group=107,perm=0660`.
pub const PREFIX: &str = "vhost-user";

/// Longest Unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Why a native vhost-user port's devargs were refused or its socket could not be set up.
/// Each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    /// A devargs field without `=`.
    #[error("vhost-user devargs {0:?} is not key=value: keys are iface, client, queues, owner, group, perm")]
    NotKeyValue(String),
    /// `owner`, `group` or `queues` is not a number.
    #[error("vhost-user devargs {key}={value:?} is not a number: write e.g. {key}=1")]
    NotANumber {
        /// The key.
        key: String,
        /// Its value as written.
        value: String,
    },
    /// `client` is neither 0 nor 1.
    #[error("vhost-user devargs client={0:?}: write client=0 or client=1")]
    BadClient(String),
    /// `queues` is 0 or more than [`MAX_PAIRS`].
    #[error("vhost-user devargs queues={0} is outside 1-{MAX_PAIRS}: pick a queue-pair count in that range")]
    QueuesOutOfRange(u32),
    /// `perm` is not an octal mode.
    #[error("vhost-user devargs perm={0:?} is not an octal mode: write e.g. perm=0660")]
    BadPerm(String),
    /// `packed=` other than 0 or 1.
    #[error("vhost-user devargs packed={0:?}: write packed=0 or packed=1")]
    BadPacked(String),
    /// A key Heddle does not know.
    #[error("vhost-user devargs key {0:?} is unknown: keys are iface, client, queues, owner, group, perm, packed")]
    UnknownKey(String),
    /// No `iface=`.
    #[error("vhost-user port {0:?} has no socket: add iface=/run/heddle/<pod>/<name>.sock")]
    NoSocket(String),
    /// The socket path does not fit in `sun_path`.
    #[error("vhost-user socket path {path:?} is {len} bytes, over the {MAX_SOCKET_PATH}-byte limit of a Unix socket path: use a shorter directory")]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// The socket path is relative.
    #[error("vhost-user socket path {0:?} is relative: give an absolute path")]
    RelativePath(PathBuf),
    /// Another process listens on the socket.
    #[error("vhost-user socket {0:?} is in use by another process: stop it or choose another iface path")]
    SocketInUse(PathBuf),
    /// Something other than a socket is at the path.
    #[error("{0:?} exists and is not a socket: choose another iface path for the vhost-user port")]
    NotASocket(PathBuf),
    /// A stale socket could not be removed.
    #[error("cannot remove stale socket {path:?}: {source}")]
    RemoveStale {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `bind` failed.
    #[error("cannot create vhost-user socket {path:?}: {source} (does the directory exist and is it writable?)")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `chown` of the server socket failed.
    #[error("cannot set owner/group of {path:?}: {source}")]
    Chown {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `chmod` of the server socket failed.
    #[error("cannot set mode {perm:o} on {path:?}: {source}")]
    Chmod {
        /// The socket.
        path: PathBuf,
        /// The mode asked for.
        perm: u32,
        /// Why.
        source: std::io::Error,
    },
    /// No eventfd for the port thread's wake-up.
    #[error("cannot create an eventfd for the vhost-user thread: {0}")]
    EventFd(#[source] std::io::Error),
    /// The port thread did not start.
    #[error("cannot start the vhost-user thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl VhostError {
    /// The socket path is held by something else (a listening process, or a file that is
    /// not a socket): a conflict with what exists, not a malformed request.
    pub fn is_conflict(&self) -> bool {
        matches!(self, VhostError::SocketInUse(_) | VhostError::NotASocket(_))
    }
}

/// A native vhost-user port's settings, parsed from its devargs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostConfig {
    /// Device name (the devargs before the first comma), unique per switch.
    pub device: String,
    /// The Unix socket.
    pub path: PathBuf,
    /// The switch connects (the frontend listens, `server=1` in virtio-user).
    pub client: bool,
    /// Queue pairs offered to the frontend.
    pub pairs: u16,
    /// Server socket owner (uid).
    pub owner: Option<u32>,
    /// Server socket group (gid).
    pub group: Option<u32>,
    /// Server socket permission bits, e.g. `0o660`.
    pub perm: Option<u32>,
    /// Offer packed virtqueues (`VIRTIO_F_RING_PACKED`) to the frontend (`packed=1`). Off by
    /// default until packed rings are measured as fast as split ones (docs/vhost-user.md).
    pub packed: bool,
    /// The port's MTU (from the port spec, not the devargs): offered in the device config
    /// (`VIRTIO_NET_F_MTU`) and the most `NET_SET_MTU` accepts.
    pub mtu: u16,
}

impl VhostConfig {
    /// True when `devargs` names a native vhost-user port.
    pub fn is_native(devargs: &str) -> bool {
        devargs.trim_start().starts_with(PREFIX)
    }

    /// Parses `vhost-user<id>,iface=<path>[,client=0|1][,queues=N][,owner=UID][,group=GID][,perm=OCTAL]`.
    /// `queues` in the port spec is the default for `queues`.
    pub fn parse(devargs: &str, spec_queues: Option<u16>) -> Result<VhostConfig, VhostError> {
        let mut parts = devargs.split(',');
        let device = parts.next().unwrap_or_default().trim().to_owned();
        let mut cfg = VhostConfig {
            device,
            path: PathBuf::new(),
            client: false,
            pairs: spec_queues.unwrap_or(1),
            owner: None,
            group: None,
            perm: None,
            packed: false,
            mtu: crate::switch::config::DEFAULT_MTU,
        };
        let num = |k: &str, v: &str| -> Result<u32, VhostError> {
            v.trim().parse::<u32>().map_err(|_| VhostError::NotANumber {
                key: k.to_owned(),
                value: v.to_owned(),
            })
        };
        for kv in parts.filter(|s| !s.trim().is_empty()) {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(VhostError::NotKeyValue(kv.to_owned()));
            };
            match k.trim() {
                "iface" | "path" => cfg.path = PathBuf::from(v.trim()),
                "client" => match v.trim() {
                    "0" => cfg.client = false,
                    "1" => cfg.client = true,
                    _ => return Err(VhostError::BadClient(v.to_owned())),
                },
                "queues" => {
                    let q = num(k, v)?;
                    if q == 0 || q > u32::from(MAX_PAIRS) {
                        return Err(VhostError::QueuesOutOfRange(q));
                    }
                    cfg.pairs = q as u16;
                }
                "owner" => cfg.owner = Some(num(k, v)?),
                "group" => cfg.group = Some(num(k, v)?),
                "perm" => {
                    let p = u32::from_str_radix(v.trim().trim_start_matches("0o"), 8)
                        .ok()
                        .filter(|p| *p <= 0o777)
                        .ok_or_else(|| VhostError::BadPerm(v.to_owned()))?;
                    cfg.perm = Some(p);
                }
                "packed" => match v.trim() {
                    "0" => cfg.packed = false,
                    "1" => cfg.packed = true,
                    _ => return Err(VhostError::BadPacked(v.to_owned())),
                },
                other => return Err(VhostError::UnknownKey(other.to_owned())),
            }
        }
        if cfg.path.as_os_str().is_empty() {
            return Err(VhostError::NoSocket(cfg.device));
        }
        let len = cfg.path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(VhostError::PathTooLong {
                path: cfg.path,
                len,
            });
        }
        if !cfg.path.is_absolute() {
            return Err(VhostError::RelativePath(cfg.path));
        }
        Ok(cfg)
    }
}

/// Connection counters of a port.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Frontend connections accepted or made.
    pub connects: AtomicU64,
    /// Connections that ended.
    pub disconnects: AtomicU64,
    /// Messages the frontend got wrong (refused, or the connection was dropped for them).
    pub protocol_errors: AtomicU64,
    /// Connections the frontend ended because the port offers fewer queue pairs than it
    /// wants.
    pub queue_pair_mismatches: AtomicU64,
    /// A frontend is connected now.
    pub connected: AtomicBool,
    /// The MTU the frontend last set (`VHOST_USER_NET_SET_MTU`), 0 when it did not.
    pub frontend_mtu: AtomicU16,
}

/// Connection log lines a port writes per `LOG_WINDOW` before it only counts them.
const LOG_BURST: u32 = 4;
/// The window of `LOG_BURST`.
const LOG_WINDOW: Duration = Duration::from_secs(60);
/// A connection shorter than this did not work: the next reconnect (client) backs off.
const SHORT_CONNECTION: Duration = Duration::from_secs(1);
/// Longest pause between reconnects after connections that did not work.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Per-port limit on connection log lines: a frontend that reconnects in a loop gets a few
/// lines, then one summary per window.
#[derive(Debug)]
struct LogLimit {
    window: std::time::Instant,
    lines: u32,
    suppressed: u64,
}

impl LogLimit {
    fn new() -> LogLimit {
        LogLimit {
            window: std::time::Instant::now(),
            lines: 0,
            suppressed: 0,
        }
    }

    /// True when a connection line may be written now. Writes the summary of a finished
    /// window of suppressed lines first.
    fn allow(&mut self, port: &str) -> bool {
        if self.window.elapsed() >= LOG_WINDOW {
            if self.suppressed > 0 {
                tracing::info!(port = %port, suppressed = self.suppressed, "{} vhost-user connection log lines suppressed in the last {} s (the frontend keeps reconnecting; heddlectl stats shows vhost.connects)", self.suppressed, LOG_WINDOW.as_secs());
            }
            self.window = std::time::Instant::now();
            self.lines = 0;
            self.suppressed = 0;
        }
        if self.lines < LOG_BURST {
            self.lines += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// A running native vhost-user port.
pub struct VhostPort {
    config: VhostConfig,
    rings: Arc<PortRings>,
    link: Arc<LinkCounters>,
    stop: Arc<AtomicBool>,
    /// Signalled when the port is dropped, to wake the thread from `poll`.
    wake: Arc<EventFd>,
    /// The current connection, so that dropping the port can cut a blocked read short.
    conn: Arc<Mutex<Option<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
}

/// A server socket left behind by a switch that was killed makes `bind` fail. Removes it
/// when nothing listens on it; refuses when something does or when it is not a socket.
pub fn clear_stale_socket(path: &Path) -> Result<(), VhostError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(VhostError::SocketInUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(|source| VhostError::RemoveStale {
                path: path.to_owned(),
                source,
            })?;
            tracing::info!(socket = %path.display(), "removed a stale vhost-user socket");
            Ok(())
        }
        Ok(_) => Err(VhostError::NotASocket(path.to_owned())),
        Err(_) => Ok(()),
    }
}

fn bind(cfg: &VhostConfig) -> Result<UnixListener, VhostError> {
    clear_stale_socket(&cfg.path)?;
    let path = || cfg.path.clone();
    let listener = UnixListener::bind(&cfg.path).map_err(|source| VhostError::Bind {
        path: path(),
        source,
    })?;
    let undo = |e: VhostError| {
        let _ = std::fs::remove_file(&cfg.path);
        e
    };
    if cfg.owner.is_some() || cfg.group.is_some() {
        std::os::unix::fs::chown(&cfg.path, cfg.owner, cfg.group).map_err(|source| {
            undo(VhostError::Chown {
                path: path(),
                source,
            })
        })?;
    }
    if let Some(perm) = cfg.perm {
        std::fs::set_permissions(&cfg.path, std::fs::Permissions::from_mode(perm)).map_err(
            |source| {
                undo(VhostError::Chmod {
                    path: path(),
                    perm,
                    source,
                })
            },
        )?;
    }
    Ok(listener)
}

/// Waits up to `ms` for `fd` to become readable (or hung up), or for `wake` to be signalled.
/// True when `fd` is ready.
fn readable(fd: i32, wake: &EventFd, ms: i32) -> bool {
    let mut p = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `p` is an array of two valid pollfds for the duration of the call.
    let n = unsafe { libc::poll(p.as_mut_ptr(), 2, ms) };
    n > 0 && p[0].revents != 0
}

/// Errors after which the connection cannot continue (the byte stream is no longer in step,
/// or the peer is gone). The others were answered with a failure and the frontend may go on.
pub(crate) fn ends_connection(e: &VuError) -> bool {
    !matches!(
        e,
        VuError::InvalidParam
            | VuError::InvalidOperation(_)
            | VuError::InactiveOperation(_)
            | VuError::InactiveFeature(_)
            | VuError::FeatureMismatch
            | VuError::ReqHandlerError(_)
            | VuError::BackendInternalError
    )
}

/// `VHOST_USER_SET_VRING_ENABLE`'s request code.
const SET_VRING_ENABLE: u32 = FrontendReq::SET_VRING_ENABLE as u32;
/// `VHOST_USER_NET_SET_MTU`'s request code.
const NET_SET_MTU: u32 = FrontendReq::NET_SET_MTU as u32;
/// Version 1 of the protocol, in the header's version bits (`VhostUserHeaderFlag::VERSION`
/// is the mask of those bits, not a version).
const PROTOCOL_VERSION_1: u32 = 0x1;

/// A vhost-user message header. Read here, not through the `vhost` crate, because the crate
/// keeps its header type private and only parses whole messages: the early
/// `SET_VRING_ENABLE` (see `Worker::early_vring_enable`) must be recognised before the
/// crate's handler refuses it.
struct Header {
    request: u32,
    flags: u32,
    size: u32,
}

/// The next message's header, left in the socket for the handler.
fn peek_header(fd: i32) -> Option<Header> {
    let mut hdr = [0u8; 12];
    // SAFETY: `hdr` is 12 writable bytes; MSG_PEEK leaves the message in place.
    let n = unsafe {
        libc::recv(
            fd,
            hdr.as_mut_ptr().cast(),
            hdr.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    (n == 12).then(|| Header {
        request: word(0),
        flags: word(4),
        size: word(8),
    })
}

struct Worker {
    name: String,
    log: Mutex<LogLimit>,
    /// The queue-pair mismatch last explained in the log (said once, then only counted).
    explained: Mutex<Option<super::device::QueueMismatch>>,
    config: VhostConfig,
    device: Arc<Mutex<VhostDevice>>,
    link: Arc<LinkCounters>,
    stop: Arc<AtomicBool>,
    wake: Arc<EventFd>,
    conn: Arc<Mutex<Option<UnixStream>>>,
}

impl Worker {
    fn lock_device(&self) -> std::sync::MutexGuard<'_, VhostDevice> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// QEMU 7.2 enables its vrings before it sets the features. The `vhost` crate refuses
    /// `SET_VRING_ENABLE` until `VHOST_USER_F_PROTOCOL_FEATURES` is acked (as the spec's
    /// wording allows), which would leave QEMU's rings disabled for good; DPDK's vhost
    /// library accepts it, and so does Heddle: the message is read and applied here.
    fn early_vring_enable(&self, hdr: &Header) -> std::io::Result<()> {
        use std::io::Read;
        let mut conn = {
            let guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_ref() {
                Some(c) => c.try_clone()?,
                None => return Err(std::io::ErrorKind::NotConnected.into()),
            }
        };
        let mut msg = [0u8; 20];
        conn.read_exact(&mut msg)?;
        let index = u32::from_le_bytes([msg[12], msg[13], msg[14], msg[15]]);
        let num = u32::from_le_bytes([msg[16], msg[17], msg[18], msg[19]]);
        let res = match num {
            0 | 1 => self.lock_device().enable_vring(index, num == 1),
            _ => Err(VuError::InvalidParam),
        };
        if let Err(e) = &res {
            self.link.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(port = %self.name, error = %e, index, num, "SET_VRING_ENABLE refused");
        }
        self.ack(&mut conn, hdr, SET_VRING_ENABLE, res.is_ok())
    }

    /// Answers a request the handler did not see, when the frontend asked for an answer
    /// (`NEED_REPLY` with `REPLY_ACK` negotiated): 0 for success, 1 for failure.
    fn ack(
        &self,
        conn: &mut UnixStream,
        hdr: &Header,
        request: u32,
        ok: bool,
    ) -> std::io::Result<()> {
        use std::io::Write;
        if hdr.flags & VhostUserHeaderFlag::NEED_REPLY.bits() != 0 && self.lock_device().reply_ack()
        {
            let mut reply = Vec::with_capacity(20);
            reply.extend_from_slice(&request.to_le_bytes());
            reply.extend_from_slice(
                &(PROTOCOL_VERSION_1 | VhostUserHeaderFlag::REPLY.bits()).to_le_bytes(),
            );
            reply.extend_from_slice(&8u32.to_le_bytes());
            reply.extend_from_slice(&u64::from(!ok).to_le_bytes());
            conn.write_all(&reply)?;
        }
        Ok(())
    }

    /// `VHOST_USER_NET_SET_MTU` (protocol feature `NET_MTU`), which the `vhost` crate does
    /// not dispatch (it would end the connection): read and answered here. An MTU above the
    /// port's is refused (failure in the reply, counted in `protocol_errors`, logged with the
    /// fix); an accepted one is shown in the port's stats (`frontend_mtu`).
    fn net_set_mtu(&self, hdr: &Header) -> std::io::Result<()> {
        use std::io::Read;
        let mut conn = {
            let guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_ref() {
                Some(c) => c.try_clone()?,
                None => return Err(std::io::ErrorKind::NotConnected.into()),
            }
        };
        let mut msg = [0u8; 20];
        conn.read_exact(&mut msg)?;
        let mut value = [0u8; 8];
        value.copy_from_slice(&msg[12..20]);
        let mtu = u64::from_le_bytes(value);
        let res = self.lock_device().set_frontend_mtu(mtu);
        match res {
            Ok(m) => {
                self.link.frontend_mtu.store(m, Ordering::Relaxed);
                tracing::info!(port = %self.name, mtu = m, "frontend set its MTU");
            }
            Err(e) => {
                self.link.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(port = %self.name, "vhost-user NET_SET_MTU refused: {e}");
            }
        }
        self.ack(&mut conn, hdr, NET_SET_MTU, res.is_ok())
    }

    fn log_allowed(&self) -> bool {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(&self.name)
    }

    /// Serves one connection; true when it worked (lasted at least `SHORT_CONNECTION` and
    /// did not end for a queue-pair mismatch).
    fn serve(&self, stream: UnixStream) -> bool {
        let began = std::time::Instant::now();
        let fd = stream.as_raw_fd();
        if let Ok(clone) = stream.try_clone() {
            *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(clone);
        }
        self.link.connects.fetch_add(1, Ordering::Relaxed);
        self.link.connected.store(true, Ordering::Relaxed);
        if self.log_allowed() {
            tracing::info!(port = %self.name, socket = %self.config.path.display(), "vhost-user frontend connected");
        }
        let mut handler = BackendReqHandler::from_stream(stream, self.device.clone());
        while !self.stop.load(Ordering::Relaxed) {
            if !readable(fd, &self.wake, 1000) {
                continue;
            }
            if let Some(hdr) = peek_header(fd) {
                tracing::trace!(port = %self.name, request = hdr.request, flags = hdr.flags, size = hdr.size, "vhost-user message");
                if hdr.request == SET_VRING_ENABLE
                    && hdr.size == 8
                    && !self.lock_device().protocol_features_acked()
                {
                    if self.early_vring_enable(&hdr).is_err() {
                        break;
                    }
                    continue;
                }
                if hdr.request == NET_SET_MTU && hdr.size == 8 {
                    if self.net_set_mtu(&hdr).is_err() {
                        break;
                    }
                    continue;
                }
            }
            match handler.handle_request() {
                Ok(()) => {}
                Err(VuError::Disconnected | VuError::PartialMessage) => break,
                Err(e) if ends_connection(&e) => {
                    if !matches!(e, VuError::SocketBroken(_) | VuError::SocketError(_)) {
                        self.link.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(port = %self.name, error = %e, "vhost-user frontend sent a bad message: closing the connection");
                    }
                    break;
                }
                // DPDK's virtio-user disables its queues before it has acked
                // VHOST_USER_F_PROTOCOL_FEATURES; the crate refuses that (as the spec says)
                // and the frontend carries on. Not worth an operator's attention.
                Err(e @ VuError::InactiveFeature(_)) => {
                    tracing::debug!(port = %self.name, error = %e, "vhost-user request refused");
                }
                Err(e) => {
                    self.link.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(port = %self.name, error = %e, "vhost-user request refused");
                }
            }
        }
        drop(handler);
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mismatch = {
            let mut device = self.lock_device();
            let m = device.queue_mismatch().filter(|m| {
                matches!(m, super::device::QueueMismatch::Asked { .. })
                    || began.elapsed() < SHORT_CONNECTION
            });
            device.reset();
            m
        };
        self.link.connected.store(false, Ordering::Relaxed);
        self.link.frontend_mtu.store(0, Ordering::Relaxed);
        self.link.disconnects.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = mismatch {
            self.link
                .queue_pair_mismatches
                .fetch_add(1, Ordering::Relaxed);
            let mut explained = self.explained.lock().unwrap_or_else(|e| e.into_inner());
            if *explained != Some(m) {
                *explained = Some(m);
                tracing::warn!(port = %self.name, "vhost-user {m} (said once per port; heddlectl stats counts vhost.queue_pair_mismatches)");
            }
        }
        if self.log_allowed() {
            tracing::info!(port = %self.name, "vhost-user frontend disconnected");
        }
        mismatch.is_none() && began.elapsed() >= SHORT_CONNECTION
    }

    /// Sleeps for `d`, or until the port is dropped.
    fn sleep(&self, d: Duration) {
        let mut p = libc::pollfd {
            fd: self.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `p` is one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut p, 1, d.as_millis().min(60_000) as i32) };
    }

    fn run_server(&self, listener: UnixListener) {
        let fd = listener.as_raw_fd();
        while !self.stop.load(Ordering::Relaxed) {
            if !readable(fd, &self.wake, 1000) {
                continue;
            }
            match listener.accept() {
                Ok((stream, _)) => {
                    // The frontend decides how fast it comes back (QEMU's `reconnect=`);
                    // its connection lines are rate-limited in `serve`.
                    self.serve(stream);
                }
                Err(e) => {
                    tracing::warn!(port = %self.name, error = %e, "accept failed");
                    self.sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn run_client(&self) {
        let mut backoff = Duration::from_millis(50);
        let mut logged = false;
        while !self.stop.load(Ordering::Relaxed) {
            match UnixStream::connect(&self.config.path) {
                Ok(stream) => {
                    logged = false;
                    if self.serve(stream) {
                        backoff = Duration::from_millis(50);
                    } else {
                        // The connection did not work (the frontend left at once, e.g. it
                        // wants more queue pairs): do not reconnect in a tight loop.
                        self.sleep(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                Err(e) => {
                    if !logged {
                        tracing::info!(port = %self.name, socket = %self.config.path.display(), error = %e, "waiting for the vhost-user frontend to listen");
                        logged = true;
                    }
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }
}

impl VhostPort {
    /// Creates the port: binds its server socket at once (so errors reach the caller), or
    /// starts connecting as client. `workers` is the number of PMD workers (it decides
    /// whether guest RX rings are shared); `quiesce` waits for every worker's quiescent state.
    pub fn start(
        name: &str,
        config: VhostConfig,
        workers: usize,
        quiesce: Quiesce,
    ) -> Result<VhostPort, VhostError> {
        let listener = if config.client {
            None
        } else {
            Some(bind(&config)?)
        };
        let rings = Arc::new(PortRings::new(config.pairs, workers));
        let link = Arc::new(LinkCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(EventFd::new(libc::EFD_CLOEXEC).map_err(VhostError::EventFd)?);
        let conn = Arc::new(Mutex::new(None));
        let worker = Worker {
            name: name.to_owned(),
            log: Mutex::new(LogLimit::new()),
            explained: Mutex::new(None),
            config: config.clone(),
            device: Arc::new(Mutex::new({
                let mut d = VhostDevice::new(name.to_owned(), rings.clone(), quiesce);
                d.offer_packed(config.packed);
                d.set_mtu(config.mtu);
                d
            })),
            link: link.clone(),
            stop: stop.clone(),
            wake: wake.clone(),
            conn: conn.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("vhost-{}", config.device))
            .spawn(move || match listener {
                Some(l) => worker.run_server(l),
                None => worker.run_client(),
            })
            .map_err(VhostError::Thread)?;
        Ok(VhostPort {
            config,
            rings,
            link,
            stop,
            wake,
            conn,
            thread: Some(thread),
        })
    }

    /// The parsed settings.
    pub fn config(&self) -> &VhostConfig {
        &self.config
    }

    /// The rings the workers poll.
    pub fn rings(&self) -> &Arc<PortRings> {
        &self.rings
    }

    /// Connection counters.
    pub fn link(&self) -> &LinkCounters {
        &self.link
    }

    /// True when a frontend is connected and a queue pair runs.
    pub fn is_up(&self) -> bool {
        self.link.connected.load(Ordering::Relaxed) && self.rings.up.load(Ordering::Relaxed)
    }
}

impl Drop for VhostPort {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.write(1);
        if let Some(c) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if !self.config.client {
            let _ = std::fs::remove_file(&self.config.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devargs() {
        let c = VhostConfig::parse(
            "vhost-user-ab,iface=/run/x.sock,client=1,queues=2,owner=107,group=108,perm=0660",
            None,
        )
        .unwrap();
        assert_eq!(c.device, "vhost-user-ab");
        assert_eq!(c.path, PathBuf::from("/run/x.sock"));
        assert!(c.client);
        assert_eq!(c.pairs, 2);
        assert_eq!(
            (c.owner, c.group, c.perm),
            (Some(107), Some(108), Some(0o660))
        );
        let d = VhostConfig::parse("vhost-user0,iface=/run/y.sock", Some(3)).unwrap();
        assert_eq!(
            (d.client, d.pairs, d.perm, d.packed),
            (false, 3, None, false)
        );
        let p = VhostConfig::parse("vhost-user0,iface=/run/y.sock,packed=1", None).unwrap();
        assert!(p.packed);
    }

    #[test]
    fn refuses_bad_devargs() {
        let long = format!("vhost-user0,iface=/{}", "a".repeat(107));
        for (devargs, needle) in [
            ("vhost-user0", "no socket"),
            ("vhost-user0,iface=rel.sock", "relative"),
            (long.as_str(), "107-byte"),
            ("vhost-user0,iface=/a,queues=0", "1-64"),
            ("vhost-user0,iface=/a,queues=65", "1-64"),
            ("vhost-user0,iface=/a,client=yes", "client=0"),
            ("vhost-user0,iface=/a,packed=on", "packed=1"),
            ("vhost-user0,iface=/a,perm=999", "octal"),
            ("vhost-user0,iface=/a,colour=red", "unknown"),
            ("vhost-user0,iface=/a,owner=root", "not a number"),
            ("vhost-user0,iface", "key=value"),
        ] {
            let e = VhostConfig::parse(devargs, None).unwrap_err().to_string();
            assert!(e.contains(needle), "{devargs}: {e}");
        }
    }

    /// Found by the `config` fuzz target: a device name or socket path holding a newline was
    /// printed raw, so the refusal spanned lines. Both are quoted now.
    #[test]
    fn refusals_quote_device_and_path_on_one_line() {
        let long = format!("vhost-user0,iface=/{}\n{}", "a".repeat(60), "b".repeat(60));
        for devargs in [
            "vhost-user0\n#h,client=0",
            "vhost-user0,iface=rel\n.sock",
            long.as_str(),
        ] {
            let e = VhostConfig::parse(devargs, None).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{devargs:?}: {e}");
            assert!(
                e.contains("\\n"),
                "{devargs:?}: the newline is shown escaped: {e}"
            );
        }
    }
}
