//! [`PacketIo`] over DPDK ethdev ports, one instance per PMD worker.
//!
//! Each worker transmits on its own TX queue of every port when the device has one queue per
//! worker. When a device has fewer TX queues than there are workers, the queue is shared
//! and a small spin lock ([`TxLock`]) is taken around `rte_eth_tx_burst`, only for that port.

use std::sync::Arc;

use super::rxpool::MbufPool;
use super::{Mbuf, Mempool};
use heddle_core::memif::ring::MemifRings;
use heddle_core::switch::io::{Burst, Packet, PacketIo, PortIndex, TxLock, MAX_PORTS};
use heddle_core::vhost::ring::PortRings;

/// How one worker reaches one port.
#[derive(Clone)]
pub enum PortPath {
    /// A DPDK ethdev: its id and this worker's TX queue, with the lock to take when that
    /// queue is shared.
    Eth {
        /// DPDK port id.
        eth: u16,
        /// This worker's TX queue on the port.
        txq: u16,
        /// Present when other workers transmit on the same queue.
        tx_lock: Option<Arc<TxLock>>,
    },
    /// A native vhost-user port: its rings, and the queue pair this worker transmits on.
    Vhost {
        /// The port's vrings.
        rings: Arc<PortRings>,
        /// This worker's queue pair for transmitting into the guest.
        pair: u16,
    },
    /// A native memif port: its rings, and the queue this worker transmits on.
    Memif {
        /// The port's rings.
        rings: Arc<MemifRings>,
        /// This worker's transmit queue.
        queue: u16,
    },
}

/// The per-worker table of port paths, indexed by [`PortIndex`]. Built by the control plane
/// for each configuration snapshot.
pub type PortPaths = Box<[Option<PortPath>]>;

/// An empty path table.
pub fn empty_paths() -> PortPaths {
    vec![None; MAX_PORTS].into_boxed_slice()
}

/// The DPDK [`PacketIo`] of one PMD worker.
pub struct DpdkIo {
    paths: Arc<PortPaths>,
    pool: Arc<Mempool>,
    /// Buffers for frames copied out of native vhost-user guests and memif peers.
    rx_pool: MbufPool,
    /// Jumbo buffers for flood copies of frames that do not fit `pool`'s, and the largest
    /// frame `pool`'s buffers take.
    jumbo: Option<Arc<Mempool>>,
    small_max: usize,
}

impl DpdkIo {
    /// An I/O for a worker with this path table and buffer pool (for flood copies).
    pub fn new(paths: Arc<PortPaths>, pool: Arc<Mempool>) -> DpdkIo {
        let small_max =
            usize::from(pool.data_room()).saturating_sub(dpdk_sys::RTE_PKTMBUF_HEADROOM as usize);
        DpdkIo {
            paths,
            rx_pool: MbufPool::new(pool.clone()),
            pool,
            jumbo: None,
            small_max,
        }
    }

    /// As [`DpdkIo::new`], with `jumbo` buffers for frames larger than `pool`'s (guest TX
    /// from native vhost-user ports and flood copies of such frames).
    pub fn with_jumbo(paths: Arc<PortPaths>, pool: Arc<Mempool>, jumbo: Arc<Mempool>) -> DpdkIo {
        let mut io = DpdkIo::new(paths, pool.clone());
        io.rx_pool = MbufPool::with_jumbo(pool, jumbo.clone());
        io.jumbo = Some(jumbo);
        io
    }

    /// Switches to the path table of a new configuration snapshot.
    pub fn set_paths(&mut self, paths: Arc<PortPaths>) {
        self.paths = paths;
    }
}

impl PacketIo for DpdkIo {
    type Pkt = Mbuf;

    #[inline]
    fn rx_burst(&mut self, port: PortIndex, queue: u16, out: &mut Burst<Mbuf>) {
        let eth = match self.paths.get(port as usize) {
            Some(Some(PortPath::Eth { eth, .. })) => *eth,
            Some(Some(PortPath::Vhost { rings, .. })) => {
                rings.rx_burst(queue, &mut self.rx_pool, out);
                return;
            }
            Some(Some(PortPath::Memif { rings, .. })) => {
                rings.rx_burst(queue, &mut self.rx_pool, out);
                return;
            }
            _ => return,
        };
        let room = out.room() as u16;
        let have = out.len();
        // SAFETY: `out` has `room` free slots after its `have` packets; Mbuf is
        // repr(transparent) over `rte_mbuf *`, so the driver writes up to `room` valid owned
        // mbuf pointers there. The port is started and stays so until every worker has moved
        // past this snapshot (the control plane waits for that before stopping a port).
        let n = unsafe {
            dpdk_sys::heddle_rte_eth_rx_burst(
                eth,
                queue,
                out.as_mut_ptr().add(have).cast::<*mut dpdk_sys::rte_mbuf>(),
                room,
            )
        };
        // SAFETY: the driver initialised `n <= room` slots after the first `have`.
        unsafe { out.set_len(have + n as usize) };
    }

    #[inline]
    fn tx_burst(&mut self, port: PortIndex, burst: &mut Burst<Mbuf>) -> usize {
        let len = burst.len();
        if len == 0 {
            return 0;
        }
        let sent = match self.paths.get(port as usize) {
            Some(Some(PortPath::Vhost { rings, pair })) => {
                let sent = rings.tx_burst(*pair, burst.as_slice());
                // Vhost copies into guest buffers: every mbuf is done with.
                Mbuf::free_bulk(burst.as_mut_slice());
                // SAFETY: every mbuf of the burst was freed just above; it is emptied
                // without dropping any.
                unsafe { burst.set_len(0) };
                return sent;
            }
            Some(Some(PortPath::Memif { rings, queue })) => {
                let sent = rings.tx_burst(*queue, burst.as_slice());
                // memif copies into the peer's buffers: every mbuf is done with.
                Mbuf::free_bulk(burst.as_mut_slice());
                // SAFETY: every mbuf of the burst was freed just above; it is emptied
                // without dropping any.
                unsafe { burst.set_len(0) };
                return sent;
            }
            Some(Some(PortPath::Eth { eth, txq, tx_lock })) => {
                if let Some(lock) = tx_lock {
                    lock.lock();
                }
                // SAFETY: the burst's first `len` slots are owned mbufs laid out as an
                // `rte_mbuf *` array; the driver takes ownership of the first `sent`. The
                // queue is this worker's own, or the lock above serialises it.
                let sent = unsafe {
                    dpdk_sys::heddle_rte_eth_tx_burst(
                        *eth,
                        *txq,
                        burst.as_mut_ptr().cast::<*mut dpdk_sys::rte_mbuf>(),
                        len as u16,
                    )
                } as usize;
                if let Some(lock) = tx_lock {
                    lock.unlock();
                }
                sent
            }
            _ => 0,
        };
        let unsent = &mut burst.as_mut_slice()[sent..];
        Mbuf::free_bulk(unsent);
        // SAFETY: the first `sent` mbufs now belong to the driver and the rest were freed in
        // bulk just above, so the burst owns nothing: it is emptied without dropping any.
        unsafe { burst.set_len(0) };
        sent
    }

    #[inline]
    fn copy(&mut self, pkt: &Mbuf) -> Option<Mbuf> {
        if pkt.len() > self.small_max {
            // A copy into smaller buffers would be a chain, which the pipeline does not
            // carry: jumbo buffers, or none (counted as `no_buffer`).
            return pkt.copy(self.jumbo.as_ref()?);
        }
        pkt.copy(&self.pool)
    }
}
