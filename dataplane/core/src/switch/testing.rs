//! Test doubles for the pipeline: a heap-backed [`TestPacket`] and an in-memory
//! [`TestIo`]. Used by unit tests, property tests and the criterion benches; never by the
//! switch itself.

use std::cell::Cell;
use std::collections::VecDeque;

use super::io::{Burst, Packet, PacketIo, PortIndex, MAX_PORTS};

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

/// Test packets alive on this thread (to prove nothing leaks or is duplicated).
pub fn live_packets() -> i64 {
    LIVE.with(Cell::get)
}

/// A frame in a `Vec` with headroom in front, like an mbuf.
#[derive(Debug, PartialEq, Eq)]
pub struct TestPacket {
    buf: Vec<u8>,
    start: usize,
}

impl TestPacket {
    /// A packet holding `frame` with 128 bytes of headroom (DPDK's default).
    pub fn new(frame: &[u8]) -> TestPacket {
        Self::with_headroom(frame, 128)
    }

    /// A packet holding `frame` with `headroom` bytes in front.
    pub fn with_headroom(frame: &[u8], headroom: usize) -> TestPacket {
        let mut buf = vec![0u8; headroom + frame.len()];
        buf[headroom..].copy_from_slice(frame);
        LIVE.with(|l| l.set(l.get() + 1));
        TestPacket {
            buf,
            start: headroom,
        }
    }
}

impl Clone for TestPacket {
    fn clone(&self) -> Self {
        LIVE.with(|l| l.set(l.get() + 1));
        TestPacket {
            buf: self.buf.clone(),
            start: self.start,
        }
    }
}

impl Drop for TestPacket {
    fn drop(&mut self) {
        LIVE.with(|l| l.set(l.get() - 1));
    }
}

impl Packet for TestPacket {
    fn data(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..]
    }

    fn prepend(&mut self, n: usize) -> bool {
        if n > self.start {
            return false;
        }
        self.start -= n;
        true
    }

    fn trim_front(&mut self, n: usize) -> bool {
        if n > self.buf.len() - self.start {
            return false;
        }
        self.start += n;
        true
    }
}

/// An in-memory [`PacketIo`]: per-port RX queues to fill, per-port TX captures.
pub struct TestIo {
    /// Frames waiting to be received, per port.
    pub rx: Vec<VecDeque<TestPacket>>,
    /// Frames sent, per port.
    pub tx: Vec<Vec<TestPacket>>,
    /// Most frames a port takes per `tx_burst` (`None`: all).
    pub tx_room: Vec<Option<usize>>,
    /// When true, `copy` fails (pool exhausted).
    pub copy_fails: bool,
    /// When true, frames "sent" are dropped at once instead of captured (for benches).
    pub discard_tx: bool,
    /// Frames sent, per port, also when discarded.
    pub sent: Vec<u64>,
    /// Calls of `tx_burst`, per port.
    pub tx_bursts: Vec<u64>,
    /// Successful `copy` calls.
    pub copies: u64,
}

impl Default for TestIo {
    fn default() -> Self {
        Self::new()
    }
}

impl TestIo {
    /// Empty queues for every port index.
    pub fn new() -> TestIo {
        TestIo {
            rx: (0..MAX_PORTS).map(|_| VecDeque::new()).collect(),
            tx: (0..MAX_PORTS).map(|_| Vec::new()).collect(),
            tx_room: vec![None; MAX_PORTS],
            copy_fails: false,
            discard_tx: false,
            sent: vec![0; MAX_PORTS],
            tx_bursts: vec![0; MAX_PORTS],
            copies: 0,
        }
    }

    /// Queues `frame` for reception on `port`.
    pub fn inject(&mut self, port: PortIndex, frame: &[u8]) {
        self.rx[port as usize].push_back(TestPacket::new(frame));
    }

    /// Queues `pkt` itself for reception on `port` (e.g. one built with little headroom).
    pub fn inject_packet(&mut self, port: PortIndex, pkt: TestPacket) {
        self.rx[port as usize].push_back(pkt);
    }

    /// Takes the frames sent on `port`, as byte vectors.
    pub fn take_sent(&mut self, port: PortIndex) -> Vec<Vec<u8>> {
        self.tx[port as usize]
            .drain(..)
            .map(|p| p.data().to_vec())
            .collect()
    }
}

impl PacketIo for TestIo {
    type Pkt = TestPacket;

    fn rx_burst(&mut self, port: PortIndex, _queue: u16, out: &mut Burst<TestPacket>) {
        let q = &mut self.rx[port as usize];
        while out.room() > 0 {
            let Some(p) = q.pop_front() else { break };
            if let Err(p) = out.push(p) {
                q.push_front(p);
                break;
            }
        }
    }

    fn tx_burst(&mut self, port: PortIndex, burst: &mut Burst<TestPacket>) -> usize {
        let room = self.tx_room[port as usize].unwrap_or(usize::MAX);
        self.tx_bursts[port as usize] += 1;
        let mut sent = 0;
        for p in burst.drain() {
            if sent < room {
                sent += 1;
                if !self.discard_tx {
                    self.tx[port as usize].push(p);
                }
            }
        }
        self.sent[port as usize] += sent as u64;
        sent
    }

    fn copy(&mut self, pkt: &TestPacket) -> Option<TestPacket> {
        if self.copy_fails {
            return None;
        }
        self.copies += 1;
        Some(pkt.clone())
    }
}

/// An Ethernet frame of `len` bytes (at least 18): `dst`, `src`, an optional 802.1Q tag
/// with this TCI, ethertype 0x88b5, and a payload of the frame's length.
pub fn frame(dst: [u8; 6], src: [u8; 6], tci: Option<u16>, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len.max(18));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(t) = tci {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&t.to_be_bytes());
    }
    f.extend_from_slice(&0x88b5u16.to_be_bytes());
    while f.len() < len.max(18) {
        f.push((f.len() & 0xff) as u8);
    }
    f
}

/// A locally administered unicast MAC with `n` in its low bytes.
pub fn mac(n: u32) -> [u8; 6] {
    let b = n.to_be_bytes();
    [0x02, 0, b[0], b[1], b[2], b[3]]
}
