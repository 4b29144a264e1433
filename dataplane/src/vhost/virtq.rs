//! STUB (replaced by the real module from wip-virtq).
#![allow(missing_docs, unused)]
use super::memory::GuestMemory;
use crate::switch::io::{Burst, Packet};
#[derive(Debug, Clone, Copy)]
pub struct RingAddrs {
    pub size: u16,
    pub desc_uva: u64,
    pub avail_uva: u64,
    pub used_uva: u64,
}
pub mod feature {
    pub const VERSION_1: u64 = 1 << 32;
    pub const MRG_RXBUF: u64 = 1 << 15;
    pub const INDIRECT_DESC: u64 = 1 << 28;
    pub const EVENT_IDX: u64 = 1 << 29;
    pub const IN_ORDER: u64 = 1 << 35;
}
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("x")]
    X,
}
#[derive(Default, Clone, Copy, Debug)]
pub struct QueueStats {
    pub packets: u64,
    pub bytes: u64,
    pub bad_chains: u64,
    pub no_guest_buffers: u64,
    pub oversize: u64,
    pub no_mbufs: u64,
    pub interrupts: u64,
}
pub trait RxPool {
    type Pkt: Packet;
    fn alloc(&mut self, len: usize) -> Option<Self::Pkt>;
    fn max_len(&self) -> usize;
}
pub struct SplitQueue {}
impl SplitQueue {
    pub fn new(
        mem: &GuestMemory,
        addrs: &RingAddrs,
        base: u16,
        features: u64,
    ) -> Result<SplitQueue, RingError> {
        unimplemented!()
    }
    pub fn dequeue<P: RxPool>(
        &mut self,
        mem: &GuestMemory,
        pool: &mut P,
        out: &mut Burst<P::Pkt>,
        stats: &mut QueueStats,
    ) -> usize {
        unimplemented!()
    }
    pub fn enqueue<Q: Packet>(
        &mut self,
        mem: &GuestMemory,
        pkts: &[Q],
        stats: &mut QueueStats,
    ) -> usize {
        unimplemented!()
    }
    pub fn needs_interrupt(&mut self) -> bool {
        unimplemented!()
    }
    pub fn suppress_notifications(&mut self) {
        unimplemented!()
    }
    pub fn last_avail_idx(&self) -> u16 {
        unimplemented!()
    }
    pub fn is_broken(&self) -> bool {
        unimplemented!()
    }
}
