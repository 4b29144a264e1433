//! The memif control protocol, version 2.0, as DPDK's `net_memif` and libmemif speak it:
//! fixed 128-byte messages on a `SOCK_SEQPACKET` Unix socket, each a little-endian `u16`
//! type followed by that type's packed fields. `ADD_REGION` carries the region's file
//! descriptor and `ADD_RING` the ring's interrupt eventfd as `SCM_RIGHTS` ancillary data.
//!
//! [`Msg::parse`] is the only way bytes from a peer become a message: it checks the length
//! and the type and reads each field from a fixed offset, so no peer input is ever
//! reinterpreted in place. Values (sizes, indexes, versions) are checked by the session
//! ([`super::session`]) that knows what the port offers.

/// Size of every control message (the C `memif_msg_t`, 128-byte aligned).
pub const MSG_SIZE: usize = 128;
/// Protocol version 2.0 as `major << 8 | minor`.
pub const VERSION: u16 = 0x0200;
/// The value a ring's `cookie` field holds once the slave initialised it.
pub const COOKIE: u32 = 0x03E3_1F20;
/// Longest name (`HELLO`, `INIT`, `CONNECT`, `CONNECTED`), NUL padded.
pub const NAME_LEN: usize = 32;
/// Secret length in `INIT`.
pub const SECRET_LEN: usize = 24;
/// Longest reason in `DISCONNECT`.
pub const REASON_LEN: usize = 96;
/// `ADD_RING` flag: the ring carries slave-to-master traffic (the master receives on it).
pub const RING_FLAG_S2M: u16 = 1;
/// `INIT` mode: Ethernet frames (the only mode Heddle serves).
pub const MODE_ETHERNET: u8 = 0;

/// Message type codes.
pub mod kind {
    /// Acknowledges `INIT`, `ADD_REGION` and `ADD_RING`.
    pub const ACK: u16 = 1;
    /// Master to slave: the limits the master accepts.
    pub const HELLO: u16 = 2;
    /// Slave to master: version, interface id, mode, secret, name.
    pub const INIT: u16 = 3;
    /// Slave to master: one shared memory region (fd attached).
    pub const ADD_REGION: u16 = 4;
    /// Slave to master: one ring in a region (interrupt eventfd attached).
    pub const ADD_RING: u16 = 5;
    /// Slave to master: everything is sent, start.
    pub const CONNECT: u16 = 6;
    /// Master to slave: started.
    pub const CONNECTED: u16 = 7;
    /// Either side: the connection ends, with a reason.
    pub const DISCONNECT: u16 = 8;
}

/// Why bytes from the peer are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The message is not 128 bytes long.
    #[error("memif message of {0} bytes: every message is {MSG_SIZE} bytes")]
    Length(usize),
    /// An unknown type code.
    #[error("memif message type {0} is unknown (types are 1-8)")]
    UnknownType(u16),
}

/// The master's limits, sent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Lowest version spoken.
    pub min_version: u16,
    /// Highest version spoken.
    pub max_version: u16,
    /// Highest region index accepted.
    pub max_region: u16,
    /// Highest master-to-slave ring index accepted.
    pub max_m2s_ring: u16,
    /// Highest slave-to-master ring index accepted.
    pub max_s2m_ring: u16,
    /// Largest log2 ring size accepted.
    pub max_log2_ring_size: u8,
}

/// The slave's introduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Init {
    /// Version the slave speaks.
    pub version: u16,
    /// Interface id: selects the master's interface on a shared socket.
    pub id: u32,
    /// Interface mode (0 Ethernet, 1 IP, 2 punt/inject).
    pub mode: u8,
    /// Shared secret, NUL padded (all zero: none).
    pub secret: [u8; SECRET_LEN],
}

/// One shared memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddRegion {
    /// Region index (regions are sent in order from 0).
    pub index: u16,
    /// Size in bytes.
    pub size: u64,
}

/// One ring inside a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddRing {
    /// [`RING_FLAG_S2M`] or 0 (master-to-slave).
    pub flags: u16,
    /// Ring index within its direction (the queue).
    pub index: u16,
    /// Region holding the ring.
    pub region: u16,
    /// Offset of the ring header in the region.
    pub offset: u32,
    /// log2 of the number of descriptors.
    pub log2_ring_size: u8,
    /// Bytes of private header before the buffers (unused by Ethernet mode).
    pub private_hdr_size: u16,
}

/// A parsed control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// `ACK`.
    Ack,
    /// `HELLO`.
    Hello(Hello),
    /// `INIT`.
    Init(Init),
    /// `ADD_REGION`.
    AddRegion(AddRegion),
    /// `ADD_RING`.
    AddRing(AddRing),
    /// `CONNECT` with the slave's interface name.
    Connect([u8; NAME_LEN]),
    /// `CONNECTED` with the master's interface name.
    Connected([u8; NAME_LEN]),
    /// `DISCONNECT` with a code and a reason.
    Disconnect {
        /// Error code (0 when none).
        code: u32,
        /// Reason, NUL padded.
        reason: [u8; REASON_LEN],
    },
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}
fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}
fn bytes_at<const N: usize>(b: &[u8], i: usize) -> [u8; N] {
    let mut w = [0u8; N];
    w.copy_from_slice(&b[i..i + N]);
    w
}

/// `s` as a NUL-padded field of `N` bytes (cut to `N - 1` bytes so a NUL always ends it).
pub fn padded<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut w = [0u8; N];
    let n = s.len().min(N - 1);
    w[..n].copy_from_slice(&s[..n]);
    w
}

/// A NUL-padded field as text, for logs (lossy, up to the first NUL).
pub fn text(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

impl Msg {
    /// Parses one message as received (exactly [`MSG_SIZE`] bytes).
    pub fn parse(b: &[u8]) -> Result<Msg, ParseError> {
        if b.len() != MSG_SIZE {
            return Err(ParseError::Length(b.len()));
        }
        let p = 2; // the union follows the 16-bit type
        Ok(match u16_at(b, 0) {
            kind::ACK => Msg::Ack,
            kind::HELLO => Msg::Hello(Hello {
                min_version: u16_at(b, p + NAME_LEN),
                max_version: u16_at(b, p + NAME_LEN + 2),
                max_region: u16_at(b, p + NAME_LEN + 4),
                max_m2s_ring: u16_at(b, p + NAME_LEN + 6),
                max_s2m_ring: u16_at(b, p + NAME_LEN + 8),
                max_log2_ring_size: b[p + NAME_LEN + 10],
            }),
            kind::INIT => Msg::Init(Init {
                version: u16_at(b, p),
                id: u32_at(b, p + 2),
                mode: b[p + 6],
                secret: bytes_at(b, p + 7),
            }),
            kind::ADD_REGION => Msg::AddRegion(AddRegion {
                index: u16_at(b, p),
                size: u64_at(b, p + 2),
            }),
            kind::ADD_RING => Msg::AddRing(AddRing {
                flags: u16_at(b, p),
                index: u16_at(b, p + 2),
                region: u16_at(b, p + 4),
                offset: u32_at(b, p + 6),
                log2_ring_size: b[p + 10],
                private_hdr_size: u16_at(b, p + 11),
            }),
            kind::CONNECT => Msg::Connect(bytes_at(b, p)),
            kind::CONNECTED => Msg::Connected(bytes_at(b, p)),
            kind::DISCONNECT => Msg::Disconnect {
                code: u32_at(b, p),
                reason: bytes_at(b, p + 4),
            },
            other => return Err(ParseError::UnknownType(other)),
        })
    }

    /// The message's wire form.
    pub fn encode(&self, name: &[u8]) -> [u8; MSG_SIZE] {
        let mut b = [0u8; MSG_SIZE];
        let p = 2;
        let put16 = |b: &mut [u8; MSG_SIZE], i: usize, v: u16| {
            b[i..i + 2].copy_from_slice(&v.to_le_bytes())
        };
        let ty = match self {
            Msg::Ack => kind::ACK,
            Msg::Hello(h) => {
                b[p..p + NAME_LEN].copy_from_slice(&padded::<NAME_LEN>(name));
                put16(&mut b, p + NAME_LEN, h.min_version);
                put16(&mut b, p + NAME_LEN + 2, h.max_version);
                put16(&mut b, p + NAME_LEN + 4, h.max_region);
                put16(&mut b, p + NAME_LEN + 6, h.max_m2s_ring);
                put16(&mut b, p + NAME_LEN + 8, h.max_s2m_ring);
                b[p + NAME_LEN + 10] = h.max_log2_ring_size;
                kind::HELLO
            }
            Msg::Init(i) => {
                put16(&mut b, p, i.version);
                b[p + 2..p + 6].copy_from_slice(&i.id.to_le_bytes());
                b[p + 6] = i.mode;
                b[p + 7..p + 7 + SECRET_LEN].copy_from_slice(&i.secret);
                let at = p + 7 + SECRET_LEN;
                b[at..at + NAME_LEN].copy_from_slice(&padded::<NAME_LEN>(name));
                kind::INIT
            }
            Msg::AddRegion(r) => {
                put16(&mut b, p, r.index);
                b[p + 2..p + 10].copy_from_slice(&r.size.to_le_bytes());
                kind::ADD_REGION
            }
            Msg::AddRing(r) => {
                put16(&mut b, p, r.flags);
                put16(&mut b, p + 2, r.index);
                put16(&mut b, p + 4, r.region);
                b[p + 6..p + 10].copy_from_slice(&r.offset.to_le_bytes());
                b[p + 10] = r.log2_ring_size;
                put16(&mut b, p + 11, r.private_hdr_size);
                kind::ADD_RING
            }
            Msg::Connect(n) => {
                b[p..p + NAME_LEN].copy_from_slice(n);
                kind::CONNECT
            }
            Msg::Connected(n) => {
                b[p..p + NAME_LEN].copy_from_slice(n);
                kind::CONNECTED
            }
            Msg::Disconnect { code, reason } => {
                b[p..p + 4].copy_from_slice(&code.to_le_bytes());
                b[p + 4..p + 4 + REASON_LEN].copy_from_slice(reason);
                kind::DISCONNECT
            }
        };
        put16(&mut b, 0, ty);
        b
    }

    /// A `DISCONNECT` carrying `reason` (cut to fit).
    pub fn disconnect(code: u32, reason: &str) -> Msg {
        Msg::Disconnect {
            code,
            reason: padded::<REASON_LEN>(reason.as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_survives_encode_and_parse() {
        let msgs = [
            Msg::Ack,
            Msg::Hello(Hello {
                min_version: VERSION,
                max_version: VERSION,
                max_region: 3,
                max_m2s_ring: 1,
                max_s2m_ring: 2,
                max_log2_ring_size: 14,
            }),
            Msg::Init(Init {
                version: VERSION,
                id: 7,
                mode: MODE_ETHERNET,
                secret: padded(b"s3cret"),
            }),
            Msg::AddRegion(AddRegion {
                index: 1,
                size: 1 << 33,
            }),
            Msg::AddRing(AddRing {
                flags: RING_FLAG_S2M,
                index: 2,
                region: 0,
                offset: 0x1_0080,
                log2_ring_size: 10,
                private_hdr_size: 0,
            }),
            Msg::Connect(padded(b"pod")),
            Msg::Connected(padded(b"heddle")),
            Msg::disconnect(3, "bye"),
        ];
        for m in msgs {
            assert_eq!(Msg::parse(&m.encode(b"x")).unwrap(), m);
        }
    }

    /// Field offsets as DPDK's and libmemif's packed C structs lay them out.
    #[test]
    fn wire_offsets_match_the_c_layout() {
        let b = Msg::AddRing(AddRing {
            flags: 1,
            index: 0x0203,
            region: 0x0405,
            offset: 0x0a09_0807,
            log2_ring_size: 11,
            private_hdr_size: 0x0d0c,
        })
        .encode(b"");
        assert_eq!(&b[..15], &[5, 0, 1, 0, 3, 2, 5, 4, 7, 8, 9, 10, 11, 12, 13]);
        let h = Msg::Hello(Hello {
            min_version: VERSION,
            max_version: VERSION,
            max_region: 1,
            max_m2s_ring: 2,
            max_s2m_ring: 3,
            max_log2_ring_size: 14,
        })
        .encode(b"heddle");
        assert_eq!(&h[2..8], b"heddle");
        assert_eq!(&h[34..45], &[0, 2, 0, 2, 1, 0, 2, 0, 3, 0, 14]);
        let i = Msg::Init(Init {
            version: VERSION,
            id: 0x0102_0304,
            mode: 0,
            secret: [0; SECRET_LEN],
        })
        .encode(b"pod");
        assert_eq!(&i[..9], &[3, 0, 0, 2, 4, 3, 2, 1, 0]);
        assert_eq!(&i[33..36], b"pod");
    }

    #[test]
    fn refuses_wrong_lengths_and_unknown_types() {
        assert_eq!(Msg::parse(&[0u8; 127]), Err(ParseError::Length(127)));
        assert_eq!(Msg::parse(&[0u8; 129]), Err(ParseError::Length(129)));
        assert_eq!(Msg::parse(&[0u8; 128]), Err(ParseError::UnknownType(0)));
        let mut b = [0u8; 128];
        b[0] = 9;
        assert_eq!(Msg::parse(&b), Err(ParseError::UnknownType(9)));
    }
}
