use std::ffi::CString;
use std::ptr::NonNull;

use super::error::{errno, strerror, DpdkError};

/// A DPDK packet-buffer pool in hugepage memory.
#[derive(Debug)]
pub struct Mempool {
    raw: NonNull<dpdk_sys::rte_mempool>,
    name: String,
    data_room: u16,
    count: u32,
}

// SAFETY: a DPDK mempool is designed for concurrent get/put from many lcores (per-lcore
// caches plus a lock-free ring); the pointer stays valid for the life of the process.
unsafe impl Send for Mempool {}
// SAFETY: as above; shared references only allocate and free through thread-safe calls.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `count` mbufs with `data_room` bytes each (headroom included) and
    /// a per-lcore cache of `cache` mbufs, on NUMA `socket` (`None`: any).
    pub fn create(
        name: &str,
        count: u32,
        cache: u32,
        data_room: u16,
        socket: Option<u32>,
    ) -> Result<Mempool, DpdkError> {
        let cname = CString::new(name).map_err(|_| DpdkError::NulByte(name.to_owned()))?;
        let socket = socket.map_or(dpdk_sys::SOCKET_ID_ANY, |s| s as i32);
        // SAFETY: the EAL is running (a caller-side invariant of every Mempool: it is created
        // after Eal::init); `cname` is a valid C string that DPDK copies.
        let raw = unsafe {
            dpdk_sys::rte_pktmbuf_pool_create(cname.as_ptr(), count, cache, 0, data_room, socket)
        };
        match NonNull::new(raw) {
            Some(raw) => Ok(Mempool {
                raw,
                name: name.to_owned(),
                data_room,
                count,
            }),
            None => Err(DpdkError::Mempool {
                name: name.to_owned(),
                count,
                msg: strerror(errno()),
            }),
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes of each mbuf's data room, headroom included (as passed to `create`).
    pub fn data_room(&self) -> u16 {
        self.data_room
    }

    /// Raw pointer for DPDK calls that take the pool.
    pub fn as_ptr(&self) -> *mut dpdk_sys::rte_mempool {
        self.raw.as_ptr()
    }

    /// Mbufs the pool was created with.
    pub fn size(&self) -> u32 {
        self.count
    }

    /// Mbufs currently free in the pool (approximate under concurrency).
    pub fn available(&self) -> u32 {
        // SAFETY: the pool pointer is valid for the process lifetime.
        unsafe { dpdk_sys::heddle_rte_mempool_avail_count(self.raw.as_ptr()) }
    }
}
