//! A native memif port: its control socket (the switch as master, listening), and the
//! thread that serves the protocol on it, one connection at a time.
//!
//! One thread per port, as for native vhost-user ([`crate::vhost::port`]): a peer that sends
//! half a handshake or stops reading stalls only its own port's thread, never a worker or
//! another port. When the connection ends (`DISCONNECT`, the peer closed its socket or was
//! killed, a refused message), the thread takes the rings out of the workers' reach, waits
//! for every worker's quiescent state and only then drops them and unmaps the peer's
//! regions. Dropping the port stops the thread, closes every descriptor the peer sent and
//! removes the socket file.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::protocol::{Msg, MSG_SIZE};
use super::ring::MemifRings;
use super::session::{Session, Step};
use crate::vhost::device::Quiesce;
use crate::vhost::port::{clear_stale_socket, VhostError, MAX_SOCKET_PATH};

/// Devargs prefix of a native memif port, e.g.
/// `memif0,socket=/run/heddle/pod/m.sock,role=server,id=0,queues=1`.
pub const PREFIX: &str = "memif";

/// Most queue pairs a native memif port offers.
pub const MAX_PAIRS: u16 = 16;

/// Why a native memif port's devargs were refused or its socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemifError {
    /// A devargs field without `=`.
    #[error("memif devargs {0:?} is not key=value: keys are socket, role, id, queues, rsize, owner, group, perm")]
    NotKeyValue(String),
    /// A number that is not one.
    #[error("memif devargs {key}={value:?} is not a number: write e.g. {key}=0")]
    NotANumber {
        /// Key.
        key: String,
        /// Value as written.
        value: String,
    },
    /// `role=` other than server/client.
    #[error("memif devargs role={0:?}: write role=server (the switch listens) or role=client")]
    BadRole(String),
    /// `role=client` asked of the native backend.
    #[error("native memif ports serve role=server only (the pod connects as client): for a pod that listens, use DPDK's net_memif (memif backend dpdk, devargs net_memif...,role=client)")]
    ClientRole,
    /// `queues` out of range.
    #[error(
        "memif devargs queues={0} is outside 1-{MAX_PAIRS}: pick a queue-pair count in that range"
    )]
    QueuesOutOfRange(u32),
    /// `rsize` out of range.
    #[error("memif devargs rsize={0} is outside 1-14 (log2 of the ring size)")]
    RingSize(u32),
    /// `perm` not octal.
    #[error("memif devargs perm={0:?} is not an octal mode: write e.g. perm=0660")]
    BadPerm(String),
    /// A key Heddle does not know.
    #[error("memif devargs key {0:?} is unknown: keys are socket, role, id, queues, rsize, owner, group, perm")]
    UnknownKey(String),
    /// No socket.
    #[error("memif port {0:?} has no socket: add socket=/run/heddle/<pod>/<name>.sock")]
    NoSocket(String),
    /// Socket path too long.
    #[error("memif socket path {path:?} is {len} bytes, over the {MAX_SOCKET_PATH}-byte limit of a Unix socket path: use a shorter directory")]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// Relative socket path.
    #[error("memif socket path {0:?} is relative: give an absolute path")]
    RelativePath(PathBuf),
    /// Stale-socket handling refused (in use, not a socket).
    #[error(transparent)]
    Socket(#[from] VhostError),
    /// `socket`/`bind`/`listen` failed.
    #[error("cannot create memif socket {path:?}: {source} (does the directory exist and is it writable?)")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// chown/chmod failed.
    #[error("cannot set owner, group or mode of {path:?}: {source}")]
    Permissions {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No eventfd or thread.
    #[error("cannot start the memif thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl MemifError {
    /// The socket path is held by something else.
    pub fn is_conflict(&self) -> bool {
        matches!(self, MemifError::Socket(e) if e.is_conflict())
    }
}

/// A native memif port's settings, parsed from its devargs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemifConfig {
    /// Device name (before the first comma), unique per switch.
    pub device: String,
    /// The control socket (a file, not the abstract namespace).
    pub path: PathBuf,
    /// Interface id the peer must send in `INIT`.
    pub id: u32,
    /// Queue pairs offered.
    pub pairs: u16,
    /// Socket owner (uid).
    pub owner: Option<u32>,
    /// Socket group (gid).
    pub group: Option<u32>,
    /// Socket mode, e.g. `0o660`.
    pub perm: Option<u32>,
}

impl MemifConfig {
    /// True when `devargs` names a native memif port (`net_memif` is DPDK's).
    pub fn is_native(devargs: &str) -> bool {
        devargs.trim_start().starts_with(PREFIX)
    }

    /// Parses `memif<n>,socket=<path>[,role=server][,id=N][,queues=N][,rsize=N][,owner=UID][,group=GID][,perm=OCTAL]`.
    /// `rsize` (log2) is accepted for devargs compatibility with `net_memif`; as master the
    /// switch takes the ring size the peer chose (up to 2^14).
    pub fn parse(devargs: &str, spec_queues: Option<u16>) -> Result<MemifConfig, MemifError> {
        let mut parts = devargs.split(',');
        let device = parts.next().unwrap_or_default().trim().to_owned();
        let mut cfg = MemifConfig {
            device,
            path: PathBuf::new(),
            id: 0,
            pairs: spec_queues.unwrap_or(1),
            owner: None,
            group: None,
            perm: None,
        };
        let num = |k: &str, v: &str| -> Result<u32, MemifError> {
            v.trim().parse::<u32>().map_err(|_| MemifError::NotANumber {
                key: k.to_owned(),
                value: v.to_owned(),
            })
        };
        for kv in parts.filter(|s| !s.trim().is_empty()) {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(MemifError::NotKeyValue(kv.to_owned()));
            };
            match k.trim() {
                "socket" => cfg.path = PathBuf::from(v.trim()),
                "socket-abstract" if v.trim() == "no" => {}
                "role" => match v.trim() {
                    "server" | "master" => {}
                    "client" | "slave" => return Err(MemifError::ClientRole),
                    _ => return Err(MemifError::BadRole(v.to_owned())),
                },
                "id" => cfg.id = num(k, v)?,
                "queues" => {
                    let q = num(k, v)?;
                    if q == 0 || q > u32::from(MAX_PAIRS) {
                        return Err(MemifError::QueuesOutOfRange(q));
                    }
                    cfg.pairs = q as u16;
                }
                "rsize" => {
                    let r = num(k, v)?;
                    if r == 0 || r > u32::from(super::queue::MAX_LOG2_RING) {
                        return Err(MemifError::RingSize(r));
                    }
                }
                "owner" => cfg.owner = Some(num(k, v)?),
                "group" => cfg.group = Some(num(k, v)?),
                "perm" => {
                    let p = u32::from_str_radix(v.trim().trim_start_matches("0o"), 8)
                        .ok()
                        .filter(|p| *p <= 0o777)
                        .ok_or_else(|| MemifError::BadPerm(v.to_owned()))?;
                    cfg.perm = Some(p);
                }
                other => return Err(MemifError::UnknownKey(other.to_owned())),
            }
        }
        if cfg.pairs == 0 || cfg.pairs > MAX_PAIRS {
            return Err(MemifError::QueuesOutOfRange(u32::from(cfg.pairs)));
        }
        if cfg.path.as_os_str().is_empty() {
            return Err(MemifError::NoSocket(cfg.device));
        }
        let len = cfg.path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(MemifError::PathTooLong {
                path: cfg.path,
                len,
            });
        }
        if !cfg.path.is_absolute() {
            return Err(MemifError::RelativePath(cfg.path));
        }
        Ok(cfg)
    }
}

/// Connection counters of a port.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Connections accepted.
    pub connects: AtomicU64,
    /// Connections that ended.
    pub disconnects: AtomicU64,
    /// Connections refused or ended for a bad message (each answered with `DISCONNECT`).
    pub protocol_errors: AtomicU64,
    /// Connections refused because a peer was connected already.
    pub busy_refusals: AtomicU64,
    /// A peer is connected (its rings run).
    pub connected: AtomicBool,
}

/// A `SOCK_SEQPACKET` Unix socket bound at `path` and listening. Written with `libc`:
/// std's `UnixListener` makes stream sockets only, and memif needs message boundaries.
fn bind(cfg: &MemifConfig) -> Result<UnixListener, MemifError> {
    clear_stale_socket(&cfg.path)?;
    let err = |source| MemifError::Bind {
        path: cfg.path.clone(),
        source,
    };
    let listener = seqpacket().map_err(err)?;
    let addr = sockaddr(&cfg.path).map_err(err)?;
    // SAFETY: `addr` is a valid sockaddr_un of the given length; the fd is open.
    let rc = unsafe {
        libc::bind(
            listener.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    let undo = |e: MemifError| {
        let _ = std::fs::remove_file(&cfg.path);
        e
    };
    // SAFETY: the fd is an open, bound socket.
    if unsafe { libc::listen(listener.as_raw_fd(), 8) } != 0 {
        return Err(undo(err(std::io::Error::last_os_error())));
    }
    let perm_err = |source| MemifError::Permissions {
        path: cfg.path.clone(),
        source,
    };
    if cfg.owner.is_some() || cfg.group.is_some() {
        std::os::unix::fs::chown(&cfg.path, cfg.owner, cfg.group).map_err(|e| undo(perm_err(e)))?;
    }
    if let Some(perm) = cfg.perm {
        std::fs::set_permissions(&cfg.path, std::fs::Permissions::from_mode(perm))
            .map_err(|e| undo(perm_err(e)))?;
    }
    Ok(UnixListener::from(listener))
}

/// A fresh `SOCK_SEQPACKET` Unix socket (close-on-exec).
pub fn seqpacket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `path` as a `sockaddr_un`.
pub fn sockaddr(path: &std::path::Path) -> std::io::Result<libc::sockaddr_un> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: sockaddr_un is plain data; all zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = c.as_bytes_with_nul();
    if bytes.len() > addr.sun_path.len() {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(addr)
}

/// Connects a `SOCK_SEQPACKET` socket to `path` (the memif client side: tests, benches).
pub fn connect(path: &std::path::Path) -> std::io::Result<UnixStream> {
    let fd = seqpacket()?;
    let addr = sockaddr(path)?;
    // SAFETY: `addr` is a valid sockaddr_un; the fd is open.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// Sends one control message (with a descriptor, for a client).
pub fn send(conn: &UnixStream, msg: &Msg, fd: Option<i32>) -> std::io::Result<()> {
    let bytes = msg.encode(b"heddle");
    let fds: Vec<i32> = fd.into_iter().collect();
    conn.send_with_fds(&[&bytes[..]], &fds)
        .map(|_| ())
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Receives one message: its bytes (up to `buf.len()`) and the descriptor sent with it.
/// `Ok(None)` when the peer closed the connection.
pub fn recv(conn: &UnixStream, buf: &mut [u8]) -> std::io::Result<Option<(usize, Option<File>)>> {
    match conn.recv_with_fd(buf) {
        Ok((0, None)) => Ok(None),
        Ok((n, f)) => Ok(Some((n, f))),
        Err(e) => Err(std::io::Error::from_raw_os_error(e.errno())),
    }
}

/// Waits up to `ms` for any of `fds` to be readable; returns which are.
fn poll_fds<const N: usize>(fds: [i32; N], ms: i32) -> [bool; N] {
    let mut p = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: `p` is an array of N valid pollfds for the duration of the call.
    let n = unsafe { libc::poll(p.as_mut_ptr(), N as libc::nfds_t, ms) };
    if n <= 0 {
        return [false; N];
    }
    p.map(|x| x.revents != 0)
}

struct Worker {
    name: String,
    config: MemifConfig,
    rings: Arc<MemifRings>,
    quiesce: Quiesce,
    link: Arc<LinkCounters>,
    stop: Arc<AtomicBool>,
    wake: Arc<EventFd>,
    conn: Arc<Mutex<Option<UnixStream>>>,
}

impl Worker {
    fn run(&self, listener: UnixListener) {
        let lfd = listener.as_raw_fd();
        while !self.stop.load(Ordering::Relaxed) {
            let [ready, _] = poll_fds([lfd, self.wake.as_raw_fd()], 1000);
            if !ready {
                continue;
            }
            match listener.accept() {
                Ok((stream, _)) => self.serve(stream, &listener),
                Err(e) => {
                    tracing::warn!(port = %self.name, error = %e, "memif accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Refuses a second peer while one is connected.
    fn refuse_busy(&self, listener: &UnixListener) {
        if let Ok((other, _)) = listener.accept() {
            let _ = other.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = send(
                &other,
                &Msg::disconnect(1, "interface already connected"),
                None,
            );
            self.link.busy_refusals.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn serve(&self, stream: UnixStream, listener: &UnixListener) {
        // A peer that stops reading makes `send` fail after this, not block the thread.
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        if let Ok(c) = stream.try_clone() {
            *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
        }
        self.link.connects.fetch_add(1, Ordering::Relaxed);
        let mut session = Session::new(self.config.id, self.config.pairs);
        let mut reason = String::from("peer closed the connection");
        if send(&stream, &session.hello(), None).is_ok() {
            let fd = stream.as_raw_fd();
            let mut buf = [0u8; MSG_SIZE + 1];
            while !self.stop.load(Ordering::Relaxed) {
                let [conn_ready, listener_ready, _] =
                    poll_fds([fd, listener.as_raw_fd(), self.wake.as_raw_fd()], 1000);
                if !conn_ready {
                    // Only while this connection is live: a peer that left and came back
                    // at once has its end-of-file read first (below), then is accepted.
                    if listener_ready {
                        self.refuse_busy(listener);
                    }
                    continue;
                }
                let (n, file) = match recv(&stream, &mut buf) {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        reason = format!("receive failed: {e}");
                        break;
                    }
                };
                match session.handle(&buf[..n], file) {
                    Ok(Step::Reply(m)) => {
                        if send(&stream, &m, None).is_err() {
                            break;
                        }
                    }
                    Ok(Step::Connected { reply, rx, tx }) => {
                        self.install(rx, tx);
                        tracing::info!(port = %self.name, peer = %session.peer_name(), queues = self.rings.pairs_in_use.load(Ordering::Relaxed), "memif peer connected");
                        if send(&stream, &reply, None).is_err() {
                            break;
                        }
                    }
                    Ok(Step::Disconnect(r)) => {
                        reason = format!("peer disconnected: {r}");
                        break;
                    }
                    Err(e) => {
                        self.link.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(port = %self.name, error = %e, "memif peer sent a bad message: closing the connection");
                        let _ = send(&stream, &Msg::disconnect(1, &e.to_string()), None);
                        reason = e.to_string();
                        break;
                    }
                }
            }
        }
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
        drop(stream);
        let was_up = self.stop_rings();
        self.link.disconnects.fetch_add(1, Ordering::Relaxed);
        if was_up {
            tracing::info!(port = %self.name, reason = %reason, "memif peer disconnected");
        } else {
            tracing::debug!(port = %self.name, reason = %reason, "memif connection ended before CONNECT");
        }
    }

    fn install(&self, rx: Vec<super::ring::ActiveQueue>, tx: Vec<super::ring::ActiveQueue>) {
        let pairs = rx.len().min(tx.len());
        for (q, a) in rx.into_iter().enumerate() {
            if let Some(slot) = self.rings.rx_slot(q) {
                drop(slot.install(Box::new(a))); // slots are empty between connections
            }
        }
        for (q, a) in tx.into_iter().enumerate() {
            if let Some(slot) = self.rings.tx_slot(q) {
                drop(slot.install(Box::new(a)));
            }
        }
        self.rings
            .pairs_in_use
            .store(pairs as u16, Ordering::Relaxed);
        self.rings.up.store(true, Ordering::Release);
        self.link.connected.store(true, Ordering::Relaxed);
    }

    /// Takes every ring out of the workers' reach, waits for them, then frees the rings and
    /// the peer's regions. True when rings were running.
    fn stop_rings(&self) -> bool {
        self.rings.up.store(false, Ordering::Release);
        self.link.connected.store(false, Ordering::Relaxed);
        self.rings.pairs_in_use.store(0, Ordering::Relaxed);
        let mut taken = Vec::new();
        for q in 0..usize::from(self.rings.pairs()) {
            taken.extend(self.rings.rx_slot(q).and_then(|s| s.take()));
            taken.extend(self.rings.tx_slot(q).and_then(|s| s.take()));
        }
        if taken.is_empty() {
            return false;
        }
        (self.quiesce)();
        drop(taken);
        true
    }
}

/// A running native memif port.
pub struct MemifPort {
    config: MemifConfig,
    rings: Arc<MemifRings>,
    link: Arc<LinkCounters>,
    stop: Arc<AtomicBool>,
    wake: Arc<EventFd>,
    conn: Arc<Mutex<Option<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl MemifPort {
    /// Creates the port: binds its socket at once (so errors reach the caller) and starts
    /// its thread. `workers` is the number of PMD workers (whether transmit rings are
    /// shared); `quiesce` waits for every worker's quiescent state.
    pub fn start(
        name: &str,
        config: MemifConfig,
        workers: usize,
        quiesce: Quiesce,
    ) -> Result<MemifPort, MemifError> {
        let listener = bind(&config)?;
        let rings = Arc::new(MemifRings::new(config.pairs, workers));
        let link = Arc::new(LinkCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(EventFd::new(libc::EFD_CLOEXEC).map_err(MemifError::Thread)?);
        let conn = Arc::new(Mutex::new(None));
        let worker = Worker {
            name: name.to_owned(),
            config: config.clone(),
            rings: rings.clone(),
            quiesce,
            link: link.clone(),
            stop: stop.clone(),
            wake: wake.clone(),
            conn: conn.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("memif-{}", config.device))
            .spawn(move || worker.run(listener))
            .map_err(|e| {
                let _ = std::fs::remove_file(&config.path);
                MemifError::Thread(e)
            })?;
        Ok(MemifPort {
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
    pub fn config(&self) -> &MemifConfig {
        &self.config
    }

    /// The rings the workers poll.
    pub fn rings(&self) -> &Arc<MemifRings> {
        &self.rings
    }

    /// Connection counters.
    pub fn link(&self) -> &LinkCounters {
        &self.link
    }

    /// True when a peer is connected and its rings run.
    pub fn is_up(&self) -> bool {
        self.rings.up.load(Ordering::Relaxed)
    }
}

impl Drop for MemifPort {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.write(1);
        if let Some(c) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.config.path);
    }
}
