//! The vhost-user device: what one frontend connection negotiates, and when each of its
//! vrings starts and stops running on the PMD workers.
//!
//! The `vhost` crate reads, validates and answers the protocol messages; this type keeps the
//! device state behind them (features, memory table, vring setups) and turns it into
//! [`ActiveRing`]s installed in the port's [`PortRings`]. A vring runs when the memory
//! table, its size and addresses, its kick and (with `VHOST_USER_F_PROTOCOL_FEATURES`) its
//! `SET_VRING_ENABLE` are all in place; it stops on `GET_VRING_BASE`, on a new memory table
//! (and restarts against the new one), on disable, on reset and on disconnect.

use std::fs::File;
use std::sync::Arc;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Backend, Error, GpuBackend, VhostUserBackendReqHandlerMut};
use vhost::VhostUserMemoryRegionBase;

use super::inflight::{self, GuestRing, InflightRegion};
use super::memory::{GuestMemory, RegionSpec};
use super::queue::Virtqueue;
use super::ring::{ActiveRing, PortRings};
use super::virtq::{feature, RingAddrs};

type Result<T> = std::result::Result<T, Error>;

/// Most queue pairs a port offers.
pub const MAX_PAIRS: u16 = 64;

/// Virtio features offered to the frontend (plus `RING_PACKED` on ports with `packed=1`,
/// see [`VhostDevice::offer_packed`]).
pub const VIRTIO_FEATURES: u64 = feature::VERSION_1
    | VIRTIO_NET_F_MTU
    | feature::MRG_RXBUF
    | feature::INDIRECT_DESC
    | feature::EVENT_IDX
    | feature::IN_ORDER
    | VIRTIO_NET_F_MQ
    | VHOST_USER_F_PROTOCOL_FEATURES;

/// `VIRTIO_NET_F_MTU`: the device config's `mtu` is the largest frame (without its
/// Ethernet header) the port takes; the driver keeps its MTU at or below it.
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
/// `VIRTIO_NET_F_MQ`: several queue pairs.
const VIRTIO_NET_F_MQ: u64 = 1 << 22;
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Largest ring the switch accepts (the virtio maximum for split rings).
const MAX_RING: u32 = 32768;

/// Waits until no PMD worker can still hold a ring taken out of a slot. It must not return
/// before that, however long a worker stalls (the switch's `Shared::synchronize_unless`
/// waits without a timeout, reporting the stall); rings are freed right after it returns.
pub type Quiesce = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct Vring {
    size: u16,
    addrs: Option<RingAddrs>,
    base: u16,
    kicked: bool,
    /// Kept open so the frontend's kicks do not fail; the switch polls instead of reading it.
    _kick: Option<File>,
    call: Option<File>,
    enabled: bool,
    running: bool,
}

/// The device state behind one vhost-user connection.
pub struct VhostDevice {
    name: String,
    rings: Arc<PortRings>,
    quiesce: Quiesce,
    features: u64,
    protocol: u64,
    mem: Option<Arc<GuestMemory>>,
    vrings: Vec<Vring>,
    /// This connection read the queue-pair count (`GET_QUEUE_NUM`).
    queue_num_read: bool,
    /// This connection sent a memory table (what a frontend does once it starts the device).
    setup_started: bool,
    /// The most queue pairs a vring index of this connection implied, beyond what the port
    /// offers.
    pairs_wanted: u16,
    /// Features offered: `VIRTIO_FEATURES`, with `RING_PACKED` when the port says so.
    offered: u64,
    /// The in-flight region the frontend shared (`SET_INFLIGHT_FD`), or the one this
    /// connection allocated (`GET_INFLIGHT_FD`).
    inflight: Option<Arc<InflightRegion>>,
    /// The port's MTU: in the config space (`VIRTIO_NET_F_MTU`) and the most
    /// `VHOST_USER_NET_SET_MTU` accepts.
    mtu: u16,
}

/// Why `VHOST_USER_NET_SET_MTU` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MtuRefused {
    /// Above the port's MTU: the switch would drop the guest's largest frames.
    #[error(
        "the frontend set MTU {asked}, above the port's mtu {port}: set mtu: {asked} (at most 9216) on the port (heddlectl add-port --mtu, the CNI config's mtu) or lower the frontend's (QEMU host_mtu=)"
    )]
    AbovePort {
        /// The MTU the frontend sent.
        asked: u64,
        /// The port's.
        port: u16,
    },
    /// Below virtio's minimum of 68.
    #[error("the frontend set MTU {asked}, below the minimum of 68")]
    TooSmall {
        /// The MTU the frontend sent.
        asked: u64,
    },
}

/// Why a frontend could not use the port: it wants more queue pairs than offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueMismatch {
    /// It set up a vring of queue pair `wanted - 1`.
    Asked {
        /// Queue pairs the frontend asked for (at least).
        wanted: u16,
        /// Queue pairs the port offers.
        offered: u16,
    },
    /// It read the queue-pair count and left before sending a memory table (QEMU does this
    /// when its `queues=` is larger; the count it wanted is not sent). Only meaningful for a
    /// short connection: a frontend that waits long before starting the device and is then
    /// stopped looks the same.
    LeftAfterCount {
        /// Queue pairs the port offers.
        offered: u16,
    },
}

impl std::fmt::Display for QueueMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            QueueMismatch::Asked { wanted, offered } => write!(
                f,
                "frontend asked for {wanted} queue pairs, port offers {offered}: set queues={wanted} in the port's devargs (or queues={offered} in the frontend)"
            ),
            QueueMismatch::LeftAfterCount { offered } => write!(
                f,
                "frontend disconnected right after reading that the port offers {offered} queue pair(s): it wants more; set queues= in the port's devargs to the frontend's queue pairs (QEMU -netdev vhost-user,queues=N; virtio-user queues=N), or lower the frontend's"
            ),
        }
    }
}

fn invalid(what: &'static str) -> Error {
    Error::InvalidOperation(what)
}

/// The used ring's `idx` field, read from guest memory.
fn ring_used_idx(mem: &GuestMemory, used_uva: u64) -> Option<u16> {
    let p = mem.translate_uva(used_uva.checked_add(2)?, 2)?;
    if p.as_ptr().align_offset(2) != 0 {
        return None;
    }
    // SAFETY: `translate_uva` checked that the two bytes lie inside one mapped region, which
    // `mem` keeps mapped; the alignment is checked above. The guest may write it at any time:
    // a volatile read of a plain u16 gives some value, which is only used as an index the
    // ring code bounds anyway.
    Some(u16::from_le(unsafe {
        std::ptr::read_volatile(p.as_ptr().cast::<u16>())
    }))
}

impl VhostDevice {
    /// A device for port `name`, installing its rings in `rings`.
    pub fn new(name: String, rings: Arc<PortRings>, quiesce: Quiesce) -> VhostDevice {
        let n = 2 * usize::from(rings.pairs());
        VhostDevice {
            name,
            rings,
            quiesce,
            features: 0,
            protocol: 0,
            mem: None,
            vrings: (0..n).map(|_| Vring::default()).collect(),
            queue_num_read: false,
            setup_started: false,
            pairs_wanted: 0,
            offered: VIRTIO_FEATURES,
            inflight: None,
            mtu: crate::switch::config::DEFAULT_MTU,
        }
    }

    /// Sets the MTU the device offers (`VIRTIO_NET_F_MTU`'s config field); the port's MTU.
    pub fn set_mtu(&mut self, mtu: u16) {
        self.mtu = mtu;
    }

    /// `VHOST_USER_NET_SET_MTU`: the frontend tells the MTU it gives the guest. Accepted up
    /// to the port's MTU (frames the guest then sends fit); refused above it, so a frontend
    /// that waits for the answer (QEMU) fails to start the device instead of losing its
    /// large frames unseen.
    pub fn set_frontend_mtu(&self, mtu: u64) -> std::result::Result<u16, MtuRefused> {
        if mtu < 68 {
            return Err(MtuRefused::TooSmall { asked: mtu });
        }
        if mtu > u64::from(self.mtu) {
            return Err(MtuRefused::AbovePort {
                asked: mtu,
                port: self.mtu,
            });
        }
        Ok(mtu as u16)
    }

    /// The virtio-net device config space (`struct virtio_net_config` up to `mtu`): no MAC
    /// (`VIRTIO_NET_F_MAC` is not offered), status 0, the queue pairs offered, the MTU.
    fn net_config(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[8..10].copy_from_slice(&self.rings.pairs().to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        c
    }

    /// Offer packed virtqueues (`VIRTIO_F_RING_PACKED`) to frontends, or not (the default).
    pub fn offer_packed(&mut self, on: bool) {
        if on {
            self.offered |= feature::RING_PACKED;
        } else {
            self.offered &= !feature::RING_PACKED;
        }
    }

    fn vring(&mut self, index: u32) -> Result<&mut Vring> {
        if index as usize >= self.vrings.len() && index < 2 * u32::from(MAX_PAIRS) {
            self.pairs_wanted = self.pairs_wanted.max((index / 2 + 1) as u16);
        }
        self.vrings
            .get_mut(index as usize)
            .ok_or(Error::InvalidParam)
    }

    /// Whether this connection showed that the frontend wants more queue pairs than the
    /// port offers. Read it before the connection's state is reset.
    pub fn queue_mismatch(&self) -> Option<QueueMismatch> {
        let offered = self.rings.pairs();
        if self.pairs_wanted > offered {
            return Some(QueueMismatch::Asked {
                wanted: self.pairs_wanted,
                offered,
            });
        }
        (self.queue_num_read && !self.setup_started)
            .then_some(QueueMismatch::LeftAfterCount { offered })
    }

    fn protocol_negotiated(&self) -> bool {
        self.features & VHOST_USER_F_PROTOCOL_FEATURES != 0
    }

    /// Stops vring `i` if it runs: takes it from the workers, waits for them, and keeps its
    /// next avail index as the base to resume from.
    fn stop(&mut self, i: usize) {
        if !self.vrings[i].running {
            return;
        }
        self.vrings[i].running = false;
        let taken = self.rings.slot(i).and_then(|s| s.take());
        (self.quiesce)();
        if let Some(ring) = taken {
            self.vrings[i].base = ring.queue.last_avail_idx();
            // Dropped here, on this thread: the memory is unmapped when the last ring and
            // the device let go of it.
            drop(ring);
        }
        self.update_up();
    }

    fn stop_all(&mut self) {
        // Take every ring first and wait once, not once per ring.
        let mut taken = Vec::new();
        for (i, v) in self.vrings.iter_mut().enumerate() {
            if v.running {
                v.running = false;
                taken.push((i, self.rings.slot(i).and_then(|s| s.take())));
            }
        }
        if taken.is_empty() {
            return;
        }
        (self.quiesce)();
        for (i, ring) in taken {
            if let Some(ring) = ring {
                self.vrings[i].base = ring.queue.last_avail_idx();
            }
        }
        self.update_up();
    }

    /// Starts vring `i` when everything it needs is in place.
    fn refresh(&mut self, i: usize) {
        let negotiated = self.protocol_negotiated();
        let v = &self.vrings[i];
        let ready = v.addrs.is_some()
            && v.size != 0
            && v.kicked
            && (v.enabled || !negotiated)
            && self.mem.is_some();
        if !ready {
            tracing::trace!(
                port = %self.name,
                vring = i,
                addrs = v.addrs.is_some(),
                size = v.size,
                kicked = v.kicked,
                enabled = v.enabled,
                negotiated,
                mem = self.mem.is_some(),
                "vring not ready"
            );
            self.stop(i);
            return;
        }
        if v.running {
            return;
        }
        let (Some(mem), Some(addrs)) = (self.mem.clone(), v.addrs) else {
            return;
        };
        // A frontend that reconnects to a restarted switch (DPDK virtio-user as server) sends
        // base 0 for split rings; the ring itself says where the device left off. Every
        // chain this switch took was returned before it could stop, so the used index is
        // the resume point. A consistent frontend's base equals it anyway.
        let packed = self.features & feature::RING_PACKED != 0;
        let mut base = v.base;
        if let Some(used_idx) = (!packed)
            .then(|| ring_used_idx(&mem, addrs.used_uva))
            .flatten()
        {
            if used_idx != base {
                tracing::info!(port = %self.name, vring = i, base, used_idx, "resuming the vring at the guest's used index");
                base = used_idx;
            }
        }
        // With an in-flight region the resume point comes from it (packed rings have no
        // index in memory to read it from), checked against the ring.
        let mut tracker = None;
        if let Some(region) = &self.inflight {
            let view = GuestRing { mem: &mem, addrs };
            match inflight::attach(region, i, addrs.size, self.features, base, &view) {
                Ok(Some((t, b))) => {
                    if b != base {
                        tracing::info!(port = %self.name, vring = i, base, resume = b, "resuming the vring where the in-flight region says");
                    }
                    base = b;
                    tracker = Some(t);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(port = %self.name, vring = i, error = %e, "vring refused");
                    self.rings
                        .counters
                        .broken_rings
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
            }
        }
        let mut queue = match Virtqueue::new(&mem, &addrs, base, self.features) {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(port = %self.name, vring = i, error = %e, "vring refused");
                self.rings
                    .counters
                    .broken_rings
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        };
        queue.suppress_notifications();
        if let Some(t) = tracker {
            queue.set_inflight(t);
        }
        let call = v.call.as_ref().and_then(|f| f.try_clone().ok());
        let ring = Box::new(ActiveRing::new(queue, mem, call));
        if let Some(slot) = self.rings.slot(i) {
            if let Some(old) = slot.install(ring) {
                // Not expected (a running ring is stopped before it is rebuilt), but never
                // free a ring a worker may hold.
                (self.quiesce)();
                drop(old);
            }
            self.vrings[i].running = true;
            tracing::debug!(port = %self.name, vring = i, base = self.vrings[i].base, "vring running");
        }
        self.update_up();
    }

    fn refresh_all(&mut self) {
        for i in 0..self.vrings.len() {
            self.refresh(i);
        }
    }

    fn update_up(&self) {
        let up = self.vrings.iter().any(|v| v.running);
        self.rings
            .up
            .store(up, std::sync::atomic::Ordering::Relaxed);
        self.rings.packed.store(
            up && self.features & feature::RING_PACKED != 0,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.rings
            .pairs_in_use
            .store(self.running_pairs(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Forgets everything the frontend set up (disconnect, `RESET_OWNER`).
    pub fn reset(&mut self) {
        self.stop_all();
        for v in &mut self.vrings {
            *v = Vring::default();
        }
        self.mem = None;
        self.inflight = None;
        self.features = 0;
        self.protocol = 0;
        self.queue_num_read = false;
        self.setup_started = false;
        self.pairs_wanted = 0;
        self.update_up();
    }

    /// True once the frontend acked `VHOST_USER_F_PROTOCOL_FEATURES`.
    pub fn protocol_features_acked(&self) -> bool {
        self.protocol_negotiated()
    }

    /// True when the frontend negotiated `REPLY_ACK`.
    pub fn reply_ack(&self) -> bool {
        self.protocol & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0
    }

    /// `SET_VRING_ENABLE`, also when it comes before the features (see `port`).
    pub fn enable_vring(&mut self, index: u32, enable: bool) -> Result<()> {
        let i = index as usize;
        self.vring(index)?.enabled = enable;
        self.refresh(i);
        Ok(())
    }

    /// Queue pairs whose two vrings run.
    pub fn running_pairs(&self) -> u16 {
        self.vrings
            .chunks(2)
            .filter(|p| p.iter().all(|v| v.running))
            .count() as u16
    }
}

impl Drop for VhostDevice {
    fn drop(&mut self) {
        self.reset();
    }
}

impl VhostUserBackendReqHandlerMut for VhostDevice {
    fn set_owner(&mut self) -> Result<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> Result<()> {
        self.reset();
        Ok(())
    }

    fn reset_device(&mut self) -> Result<()> {
        self.reset();
        Ok(())
    }

    fn get_features(&mut self) -> Result<u64> {
        Ok(self.offered)
    }

    fn set_features(&mut self, features: u64) -> Result<()> {
        tracing::debug!(port = %self.name, features = format_args!("{features:#x}"), "SET_FEATURES");
        if features & !self.offered != 0 {
            return Err(invalid("frontend acked features the switch did not offer"));
        }
        if features != self.features {
            // The ring layout (header size, event index) depends on the features.
            self.stop_all();
            self.features = features;
            self.refresh_all();
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        if ctx.len() != files.len() {
            return Err(Error::IncorrectFds);
        }
        let regions = ctx
            .iter()
            .zip(files)
            .map(|(r, f)| {
                (
                    RegionSpec {
                        guest_phys_addr: r.guest_phys_addr,
                        size: r.memory_size,
                        user_addr: r.user_addr,
                        mmap_offset: r.mmap_offset,
                    },
                    f,
                )
            })
            .collect();
        self.setup_started = true;
        let mem = match GuestMemory::map(regions) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                tracing::warn!(port = %self.name, error = %e, "memory table refused");
                return Err(invalid("memory table refused"));
            }
        };
        // Rings were translated against the old table: stop them, swap, restart.
        self.stop_all();
        self.mem = Some(mem);
        self.refresh_all();
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        if num == 0 || num > MAX_RING || !num.is_power_of_two() {
            return Err(Error::InvalidParam);
        }
        let i = index as usize;
        self.vring(index)?;
        self.stop(i);
        self.vrings[i].size = num as u16;
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        if flags.contains(VhostUserVringAddrFlags::VHOST_VRING_F_LOG) {
            return Err(invalid("dirty-page logging is not supported"));
        }
        let i = index as usize;
        let size = self.vring(index)?.size;
        self.stop(i);
        self.vrings[i].addrs = Some(RingAddrs {
            size,
            desc_uva: descriptor,
            avail_uva: available,
            used_uva: used,
        });
        self.refresh(i);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        let i = index as usize;
        self.vring(index)?;
        self.stop(i);
        self.vrings[i].base = base as u16;
        self.refresh(i);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        let i = index as usize;
        self.vring(index)?;
        self.stop(i);
        let v = &mut self.vrings[i];
        // The ring stays stopped until it is kicked again (vhost-user: "stop ring").
        v.kicked = false;
        v.call = None;
        let mut num = u32::from(v.base);
        if self.features & feature::RING_PACKED != 0 {
            // Packed: the used slot and wrap counter go in bits 16-31 (QEMU reads them back);
            // a stopped ring has returned every chain it took, so they equal the avail ones.
            num |= num << 16;
        }
        Ok(VhostUserVringState::new(index, num))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let i = usize::from(index);
        let v = self.vring(u32::from(index))?;
        v._kick = fd;
        v.kicked = true;
        self.refresh(i);
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let i = usize::from(index);
        self.vring(u32::from(index))?;
        // The running ring holds its own copy of the fd: restart it with the new one.
        let was = self.vrings[i].running;
        self.stop(i);
        self.vrings[i].call = fd;
        if was {
            self.refresh(i);
        }
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> Result<()> {
        self.vring(u32::from(index))?;
        Ok(())
    }

    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MTU)
    }

    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        tracing::debug!(port = %self.name, features = format_args!("{features:#x}"), "SET_PROTOCOL_FEATURES");
        self.protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> Result<u64> {
        self.queue_num_read = true;
        Ok(u64::from(self.rings.pairs()))
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        self.enable_vring(index, enable)
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> Result<Vec<u8>> {
        // The crate checked `offset + size` against the message's limit; bytes past the
        // fields the switch knows read as zero, as an absent feature's fields do.
        let config = self.net_config();
        Ok((offset..offset.saturating_add(size))
            .map(|i| config.get(i as usize).copied().unwrap_or(0))
            .collect())
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> Result<()> {
        Err(Error::InactiveOperation(VhostUserProtocolFeatures::CONFIG))
    }

    fn set_backend_req_fd(&mut self, _backend: Backend) {}

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> Result<()> {
        Err(invalid("not a GPU device"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> Result<File> {
        Err(Error::InactiveOperation(
            VhostUserProtocolFeatures::SHARED_OBJECT,
        ))
    }

    fn get_inflight_fd(&mut self, msg: &VhostUserInflight) -> Result<(VhostUserInflight, File)> {
        let max = self.vrings.len() as u16;
        let (region, file) = InflightRegion::allocate(msg.num_queues, msg.queue_size, max)
            .map_err(|e| {
                tracing::warn!(port = %self.name, error = %e, "GET_INFLIGHT_FD refused");
                invalid("in-flight region refused")
            })?;
        let size = region.mapped_len() as u64;
        tracing::debug!(port = %self.name, queues = msg.num_queues, queue_size = msg.queue_size, size, "GET_INFLIGHT_FD");
        // The frontend sends it back with SET_INFLIGHT_FD; until then nothing uses it.
        Ok((
            VhostUserInflight::new(size, 0, msg.num_queues, msg.queue_size),
            file,
        ))
    }

    fn set_inflight_fd(&mut self, msg: &VhostUserInflight, file: File) -> Result<()> {
        let max = self.vrings.len() as u16;
        let region = InflightRegion::open(
            &file,
            msg.mmap_size,
            msg.mmap_offset,
            msg.num_queues,
            msg.queue_size,
            max,
        )
        .map_err(|e| {
            tracing::warn!(port = %self.name, error = %e, "SET_INFLIGHT_FD refused");
            invalid("in-flight region refused")
        })?;
        tracing::debug!(port = %self.name, queues = msg.num_queues, queue_size = msg.queue_size, "SET_INFLIGHT_FD");
        // Running rings were started without (or with another) region: restart them on it.
        self.stop_all();
        self.inflight = Some(Arc::new(region));
        self.refresh_all();
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> Result<u64> {
        Err(Error::InactiveOperation(
            VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
        ))
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>> {
        Err(Error::InactiveOperation(
            VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
        ))
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> Result<()> {
        Err(Error::InactiveOperation(
            VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
        ))
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> Result<Option<File>> {
        Err(Error::InactiveOperation(
            VhostUserProtocolFeatures::DEVICE_STATE,
        ))
    }

    fn check_device_state(&mut self) -> Result<()> {
        Err(Error::InactiveOperation(
            VhostUserProtocolFeatures::DEVICE_STATE,
        ))
    }

    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        Err(Error::InactiveOperation(VhostUserProtocolFeatures::SHMEM))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> Result<()> {
        Err(Error::InactiveOperation(
            VhostUserProtocolFeatures::LOG_SHMFD,
        ))
    }
}

/// `VhostUserVirtioFeatures` is what the crate checks `SET_VRING_ENABLE` against; keep the
/// two views of the protocol-features bit in step.
const _: () =
    assert!(VHOST_USER_F_PROTOCOL_FEATURES == VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits());
