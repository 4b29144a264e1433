//! The harness both hostile-frontend tests share (`vhost_hostile.rs` on split rings,
//! `vhost_hostile_packed.rs` on packed rings): the guest's shared memory, the vhost-user
//! negotiation and ring set-up, the PMD worker stand-in with its quiescent-state handshake,
//! and `wait`. Only the ring layout (how a guest posts and reaps) stays in each test.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use heddle_dataplane::switch::io::Burst;
use heddle_dataplane::vhost::device::{Quiesce, VIRTIO_FEATURES};
use heddle_dataplane::vhost::port::{VhostConfig, VhostPort};
use heddle_dataplane::vhost::ring::PortRings;
use heddle_dataplane::vhost::testing::{VecPacket, VecPool};
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

/// Queue size of the TX ring.
pub const SIZE: u16 = 256;
/// Bytes of guest memory.
pub const MEM: usize = 4 << 20;
/// Offset of the descriptor table (split) or ring (packed).
pub const DESC: usize = 0;
/// Offset of the data buffers.
pub const BUFS: usize = 0x10000;
/// Virtio-net header length (VERSION_1).
pub const HDR: usize = 12;

/// The guest's memory: a `MEM`-byte memfd (named `name`) mapped shared.
pub fn guest_memory(name: &std::ffi::CStr) -> (File, *mut u8) {
    // SAFETY: a valid NUL-terminated name; the fd is owned by the File below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` is fresh and owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(MEM as u64).unwrap();
    // SAFETY: mapping MEM bytes of a file that long, shared, at an address of the
    // kernel's choosing; the mapping lives until the test process ends.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    (file, base.cast())
}

/// Connects to `port` and negotiates `features` (plus the event-index bit the device
/// offers), MQ and REPLY_ACK; returns the frontend and the features the device offered.
pub fn negotiate(port: &VhostPort, features: u64) -> (Frontend, u64) {
    let mut frontend = Frontend::connect(&port.config().path, 2).expect("connect");
    frontend.set_owner().unwrap();
    let offered = frontend.get_features().unwrap();
    frontend
        .set_features(features | (VIRTIO_FEATURES & (1 << 30)))
        .unwrap();
    frontend.get_protocol_features().unwrap();
    frontend
        .set_protocol_features(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK)
        .unwrap();
    frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    (frontend, offered)
}

/// Sends the memory table: the `MEM` bytes at `base` (backed by `file`) at guest address 0.
pub fn send_mem_table(frontend: &mut Frontend, file: &File, base: *mut u8) {
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM as u64,
        userspace_addr: base as u64,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    };
    frontend.set_mem_table(&[region]).expect("memory table");
}

/// Sets up and enables the TX ring (vring 1): descriptors at `DESC`, the avail ring or
/// driver area at `driver`, the used ring or device area at `device` (offsets from `base`),
/// starting at `ring_base` (as `SET_VRING_BASE` sends it), kicked through `kick`.
pub fn set_up_tx_ring(
    frontend: &mut Frontend,
    base: *mut u8,
    driver: usize,
    device: usize,
    ring_base: u16,
    kick: &EventFd,
) {
    let uva = base as u64;
    frontend.set_vring_num(1, SIZE).unwrap();
    frontend
        .set_vring_addr(
            1,
            &VringConfigData {
                queue_max_size: SIZE,
                queue_size: SIZE,
                flags: 0,
                desc_table_addr: uva + DESC as u64,
                used_ring_addr: uva + device as u64,
                avail_ring_addr: uva + driver as u64,
                log_addr: None,
            },
        )
        .unwrap();
    frontend.set_vring_base(1, ring_base).unwrap();
    frontend.set_vring_kick(1, kick).unwrap();
    frontend.set_vring_enable(1, true).unwrap();
}

/// Writes `v` at `off` of the guest memory at `base`.
pub fn write<T: Copy>(base: *mut u8, off: usize, v: T) {
    assert!(off + std::mem::size_of::<T>() <= MEM);
    // SAFETY: in bounds of the mapping (checked above); the switch reads this memory
    // concurrently, as a real guest's would be, and only through volatile accesses.
    unsafe { std::ptr::write_volatile(base.add(off).cast::<T>(), v) }
}

/// Starts port `name` with its socket in `dir`; `extra` is appended to its spec (for
/// example `,packed=1`).
pub fn start_port(dir: &Path, name: &str, extra: &str, quiesce: Quiesce) -> VhostPort {
    let cfg = VhostConfig::parse(
        &format!(
            "vhost-user-{name},iface={}/{name}.sock{extra}",
            dir.display()
        ),
        None,
    )
    .unwrap();
    VhostPort::start(name, cfg, 1, quiesce).unwrap()
}

/// The PMD worker stand-in: polls every port's queue pair 0 and counts frames.
pub struct Worker {
    stop: Arc<AtomicBool>,
    /// Frames received, per port.
    pub received: Vec<Arc<AtomicU64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// Starts the worker on `ports`, counting its poll iterations in `iterations`.
    pub fn start(ports: Vec<Arc<PortRings>>, iterations: Arc<AtomicU64>) -> Worker {
        let stop = Arc::new(AtomicBool::new(false));
        let received: Vec<_> = ports.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
        let (s, r, it) = (stop.clone(), received.clone(), iterations);
        let thread = std::thread::spawn(move || {
            // Marks the worker gone when its loop ends, normally or by a panic: the quiesce
            // handshake then returns at once (nothing can hold a ring any more) and `wait`
            // fails the test.
            struct Gone(Arc<AtomicU64>);
            impl Drop for Gone {
                fn drop(&mut self) {
                    if std::thread::panicking() {
                        WORKER_PANICKED.store(true, Ordering::Relaxed);
                    }
                    self.0.store(u64::MAX, Ordering::Release);
                }
            }
            let _gone = Gone(it.clone());
            // Frames up to the switch's largest, as its jumbo buffers take.
            let mut pool = VecPool::new(heddle_dataplane::switch::config::MAX_FRAME, 64);
            let mut burst: Burst<VecPacket> = Burst::new();
            while !s.load(Ordering::Relaxed) {
                for (rings, count) in ports.iter().zip(&r) {
                    rings.rx_burst(0, &mut pool, &mut burst);
                    count.fetch_add(burst.len() as u64, Ordering::Relaxed);
                    pool.give_back(burst.drain());
                }
                it.fetch_add(1, Ordering::Release);
            }
        });
        Worker {
            stop,
            received,
            thread: Some(thread),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Set when the worker thread panicked.
static WORKER_PANICKED: AtomicBool = AtomicBool::new(false);

/// How long the worker may take to pass a quiescent state before the test gives up on it.
const QUIESCE_LIMIT: Duration = Duration::from_secs(10);

/// Quiescence as the switch does it: wait until the worker (counting its iterations in
/// `iterations`) started two new iterations, or ended (then it holds no ring). It runs on a
/// port's vhost-user thread, which is about to free a ring: if the worker is alive but
/// passes no quiescent state within QUIESCE_LIMIT, freeing the ring could pull it from
/// under the worker and returning without freeing would leave the thread stuck, so the
/// test process is aborted with a message (a failure, not a hang).
pub fn quiesce(iterations: &Arc<AtomicU64>) -> Quiesce {
    let it = iterations.clone();
    Arc::new(move || {
        let start = it.load(Ordering::Acquire);
        let t = Instant::now();
        loop {
            let now = it.load(Ordering::Acquire);
            if now == u64::MAX || now >= start.saturating_add(2) {
                return;
            }
            if t.elapsed() > QUIESCE_LIMIT {
                eprintln!(
                    "the worker passed no quiescent state in {} s (stuck in one poll iteration); aborting the test",
                    QUIESCE_LIMIT.as_secs()
                );
                std::process::abort();
            }
            std::hint::spin_loop();
        }
    })
}

/// Waits up to 10 s for `f`, failing the test (naming `what`) on timeout or when the
/// worker thread panicked.
pub fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            !WORKER_PANICKED.load(Ordering::Relaxed),
            "the worker thread panicked (its message is above) while waiting for: {what}"
        );
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}
