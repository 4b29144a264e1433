//! One memif connection, master side, as a state machine over parsed messages: the switch
//! says `HELLO`, the slave answers `INIT`, adds its regions and rings, and `CONNECT`s; the
//! switch checks each step and answers `ACK` or, at the end, `CONNECTED` with the running
//! rings. Anything malformed, out of order, or outside what the port offers is refused with
//! an error that ends the connection (the caller sends `DISCONNECT` with its text and
//! counts it). No socket here: the port thread moves the bytes, the fuzz target feeds them.

use std::fs::File;
use std::sync::Arc;

use super::protocol::{
    self, AddRing, Hello, Init, Msg, ParseError, MODE_ETHERNET, NAME_LEN, RING_FLAG_S2M, VERSION,
};
use super::queue::{
    Direction, MemifMemory, MemifQueue, RegionError, RegionsBuilder, RingError, MAX_LOG2_RING,
    MAX_REGIONS,
};
use super::ring::ActiveQueue;

/// Why a connection was refused. Each message says what the peer must change.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Not a memif message.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A message the protocol does not allow at this point.
    #[error("memif {got} is not allowed {when}")]
    OutOfOrder {
        /// The message.
        got: &'static str,
        /// Where the connection was.
        when: &'static str,
    },
    /// Version other than 2.0.
    #[error("memif version {0:#06x} is not supported: Heddle speaks 2.0 (0x0200)")]
    Version(u16),
    /// Interface id other than the port's.
    #[error("memif interface id {got} is not this socket's: use id={want}")]
    Id {
        /// Sent.
        got: u32,
        /// The port's.
        want: u32,
    },
    /// Mode other than Ethernet.
    #[error("memif mode {0} is not supported: use mode ethernet (0)")]
    Mode(u8),
    /// A secret the port does not have.
    #[error("memif secret does not match: this port has no secret, connect without one")]
    Secret,
    /// `ADD_REGION` without its file descriptor.
    #[error("memif ADD_REGION {0} came without the region's file descriptor")]
    NoRegionFd(u16),
    /// The region was refused.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// The ring was refused.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// A ring index over what the port offers.
    #[error("memif {dir} ring {index} is over this port's {pairs} queue(s): use at most {pairs} queue(s) or set queues= on the port")]
    RingIndex {
        /// "S2M" or "M2S".
        dir: &'static str,
        /// Index sent.
        index: u16,
        /// Pairs offered.
        pairs: u16,
    },
    /// The same ring twice.
    #[error("memif {dir} ring {index} was added twice")]
    DuplicateRing {
        /// "S2M" or "M2S".
        dir: &'static str,
        /// Index.
        index: u16,
    },
    /// `CONNECT` without a ring in each direction from index 0 up.
    #[error("memif CONNECT with {s2m} S2M and {m2s} M2S rings: send rings 0..n in both directions first")]
    MissingRings {
        /// S2M rings added.
        s2m: usize,
        /// M2S rings added.
        m2s: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `HELLO` sent, waiting for `INIT`.
    AwaitInit,
    /// `INIT` acked: regions and rings until `CONNECT`.
    Setup,
    /// `CONNECTED` sent: only `DISCONNECT` may come.
    Connected,
}

struct PendingRing {
    spec: AddRing,
    interrupt: Option<File>,
}

/// What the port thread does after a message.
pub enum Step {
    /// Send this reply and go on.
    Reply(Msg),
    /// Send `CONNECTED` and install these rings: (receive rings, transmit rings), each
    /// indexed by queue.
    Connected {
        /// The reply.
        reply: Msg,
        /// Slave-to-master rings, queue 0 first.
        rx: Vec<ActiveQueue>,
        /// Master-to-slave rings, queue 0 first.
        tx: Vec<ActiveQueue>,
    },
    /// The peer said `DISCONNECT`: close without reply.
    Disconnect(String),
}

/// One connection's protocol state.
pub struct Session {
    id: u32,
    pairs: u16,
    state: State,
    regions: RegionsBuilder,
    rings: Vec<PendingRing>,
    peer: String,
}

fn dir_name(flags: u16) -> &'static str {
    if flags & RING_FLAG_S2M != 0 {
        "S2M"
    } else {
        "M2S"
    }
}

impl Session {
    /// A session for interface `id` offering `pairs` queue pairs (at least 1).
    pub fn new(id: u32, pairs: u16) -> Session {
        Session {
            id,
            pairs: pairs.max(1),
            state: State::AwaitInit,
            regions: RegionsBuilder::default(),
            rings: Vec::new(),
            peer: String::new(),
        }
    }

    /// The `HELLO` the master opens with.
    pub fn hello(&self) -> Msg {
        Msg::Hello(Hello {
            min_version: VERSION,
            max_version: VERSION,
            max_region: (MAX_REGIONS - 1) as u16,
            max_m2s_ring: self.pairs - 1,
            max_s2m_ring: self.pairs - 1,
            max_log2_ring_size: MAX_LOG2_RING,
        })
    }

    /// The slave's name from `INIT` (empty before).
    pub fn peer_name(&self) -> &str {
        &self.peer
    }

    /// True once `CONNECTED` was sent.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    fn when(&self) -> &'static str {
        match self.state {
            State::AwaitInit => "before INIT",
            State::Setup => "before CONNECT",
            State::Connected => "once connected",
        }
    }

    fn out_of_order(&self, got: &'static str) -> SessionError {
        SessionError::OutOfOrder {
            got,
            when: self.when(),
        }
    }

    /// Handles one message as received, with the file descriptor that came with it.
    pub fn handle(&mut self, bytes: &[u8], fd: Option<File>) -> Result<Step, SessionError> {
        let msg = Msg::parse(bytes)?;
        match msg {
            Msg::Disconnect { reason, .. } => Ok(Step::Disconnect(protocol::text(&reason))),
            Msg::Init(init) => {
                if self.state != State::AwaitInit {
                    return Err(self.out_of_order("INIT"));
                }
                self.init(&init, bytes)?;
                self.state = State::Setup;
                Ok(Step::Reply(Msg::Ack))
            }
            Msg::AddRegion(r) => {
                if self.state != State::Setup {
                    return Err(self.out_of_order("ADD_REGION"));
                }
                let file = fd.ok_or(SessionError::NoRegionFd(r.index))?;
                self.regions.add(r.index, r.size, file)?;
                Ok(Step::Reply(Msg::Ack))
            }
            Msg::AddRing(r) => {
                if self.state != State::Setup {
                    return Err(self.out_of_order("ADD_RING"));
                }
                self.add_ring(r, fd)?;
                Ok(Step::Reply(Msg::Ack))
            }
            Msg::Connect(_) => {
                if self.state != State::Setup {
                    return Err(self.out_of_order("CONNECT"));
                }
                let (rx, tx) = self.connect()?;
                self.state = State::Connected;
                Ok(Step::Connected {
                    reply: Msg::Connected(protocol::padded::<NAME_LEN>(b"heddle")),
                    rx,
                    tx,
                })
            }
            Msg::Ack => Err(self.out_of_order("ACK")),
            Msg::Hello(_) => Err(self.out_of_order("HELLO (from a slave)")),
            Msg::Connected(_) => Err(self.out_of_order("CONNECTED (from a slave)")),
        }
    }

    fn init(&mut self, init: &Init, bytes: &[u8]) -> Result<(), SessionError> {
        if init.version != VERSION {
            return Err(SessionError::Version(init.version));
        }
        if init.id != self.id {
            return Err(SessionError::Id {
                got: init.id,
                want: self.id,
            });
        }
        if init.mode != MODE_ETHERNET {
            return Err(SessionError::Mode(init.mode));
        }
        if init.secret.iter().any(|b| *b != 0) {
            return Err(SessionError::Secret);
        }
        // The name follows the secret: type (2) + version (2) + id (4) + mode (1) + secret.
        let at = 2 + 7 + protocol::SECRET_LEN;
        self.peer = protocol::text(&bytes[at..at + NAME_LEN]);
        Ok(())
    }

    fn add_ring(&mut self, r: AddRing, fd: Option<File>) -> Result<(), SessionError> {
        let dir = dir_name(r.flags);
        if r.index >= self.pairs {
            return Err(SessionError::RingIndex {
                dir,
                index: r.index,
                pairs: self.pairs,
            });
        }
        let s2m = r.flags & RING_FLAG_S2M != 0;
        if self
            .rings
            .iter()
            .any(|p| p.spec.index == r.index && (p.spec.flags & RING_FLAG_S2M != 0) == s2m)
        {
            return Err(SessionError::DuplicateRing {
                dir,
                index: r.index,
            });
        }
        if r.log2_ring_size == 0 || r.log2_ring_size > MAX_LOG2_RING {
            return Err(RingError::Size(r.log2_ring_size).into());
        }
        let Some(size) = self.regions.size(r.region) else {
            return Err(RingError::NoRegion {
                region: r.region,
                regions: self.regions.len(),
            }
            .into());
        };
        let bytes = super::queue::ring_bytes(r.log2_ring_size);
        if u64::from(r.offset) + bytes > size {
            return Err(RingError::OutOfRegion {
                region: r.region,
                offset: r.offset,
                bytes,
                size,
            }
            .into());
        }
        self.rings.push(PendingRing {
            spec: r,
            interrupt: fd,
        });
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    fn connect(&mut self) -> Result<(Vec<ActiveQueue>, Vec<ActiveQueue>), SessionError> {
        let count = |s2m: bool| {
            self.rings
                .iter()
                .filter(|p| (p.spec.flags & RING_FLAG_S2M != 0) == s2m)
                .count()
        };
        let (s2m, m2s) = (count(true), count(false));
        // Indexes are unique and below `pairs`, so n rings of a direction are 0..n exactly
        // when the largest index is n - 1; both directions must have the same count.
        let contiguous = |s2m_dir: bool, n: usize| {
            self.rings
                .iter()
                .filter(|p| (p.spec.flags & RING_FLAG_S2M != 0) == s2m_dir)
                .all(|p| usize::from(p.spec.index) < n)
        };
        if s2m == 0 || m2s == 0 || !contiguous(true, s2m) || !contiguous(false, m2s) {
            return Err(SessionError::MissingRings { s2m, m2s });
        }
        let mem: Arc<MemifMemory> = Arc::new(std::mem::take(&mut self.regions).build());
        let mut rx: Vec<Option<ActiveQueue>> = (0..s2m).map(|_| None).collect();
        let mut tx: Vec<Option<ActiveQueue>> = (0..m2s).map(|_| None).collect();
        for p in self.rings.drain(..) {
            let s = p.spec;
            let dir = if s.flags & RING_FLAG_S2M != 0 {
                Direction::S2m
            } else {
                Direction::M2s
            };
            let queue = MemifQueue::new(mem.clone(), dir, s.region, s.offset, s.log2_ring_size)?;
            let active = ActiveQueue {
                queue,
                interrupt: p.interrupt,
            };
            let table = if dir == Direction::S2m {
                &mut rx
            } else {
                &mut tx
            };
            table[usize::from(s.index)] = Some(active);
        }
        Ok((
            rx.into_iter().flatten().collect(),
            tx.into_iter().flatten().collect(),
        ))
    }
}
