//! An in-process memif *slave* (the client side a pod's DPDK `net_memif` or libmemif plays):
//! it allocates a sealed memfd holding its rings and buffers, speaks the handshake on a real
//! `SOCK_SEQPACKET` socket, sends and receives frames through the rings, and can misbehave
//! on purpose (lie about `head`, point descriptors outside their region, send malformed or
//! out-of-order messages). For unit tests, the hostile-peer integration test, the fuzz
//! target and the bench; never used by the switch.
//!
//! Layout of region 0: S2M rings `0..pairs`, then M2S rings `0..pairs`, each
//! [`ring_bytes`] long, then one buffer of `buf_size` bytes per descriptor of every ring.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use super::port::{connect, recv, send};
use super::protocol::{
    AddRegion, AddRing, Init, Msg, COOKIE, MODE_ETHERNET, RING_FLAG_S2M, VERSION,
};
use super::queue::{
    ring_bytes, Desc, Direction, DESC_FLAG_NEXT, DESC_SIZE, HEAD_OFFSET, RING_HEADER, TAIL_OFFSET,
};

/// A sealed-capable memfd of `len` bytes.
pub fn memfd(len: u64) -> File {
    // SAFETY: the name is a valid C string; memfd_create has no other precondition.
    let fd = unsafe {
        libc::memfd_create(
            c"heddle-memif-test".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).expect("memfd set_len");
    f
}

/// The slave's shared memory: one region with every ring and buffer, mapped here too.
pub struct SlaveMemory {
    /// The region's file (sent with `ADD_REGION`).
    pub file: File,
    base: *mut u8,
    /// Region size.
    pub size: u64,
    /// Queue pairs.
    pub pairs: u16,
    /// log2 ring size.
    pub log2: u8,
    /// Bytes per buffer.
    pub buf_size: u32,
    /// Producer index per S2M ring (the slave's own copy).
    s2m_head: Vec<u16>,
    /// Consumer index per M2S ring.
    m2s_next: Vec<u16>,
    /// Posted index per M2S ring.
    m2s_head: Vec<u16>,
}

// SAFETY: the mapping is owned by the value and unmapped on drop only.
unsafe impl Send for SlaveMemory {}

impl Drop for SlaveMemory {
    fn drop(&mut self) {
        // SAFETY: `base`/`size` are exactly what mmap returned.
        unsafe { libc::munmap(self.base.cast(), self.size as usize) };
    }
}

impl SlaveMemory {
    /// Rings for `pairs` queue pairs of `2^log2` descriptors, `buf_size`-byte buffers,
    /// initialised as a slave does before `CONNECT` (cookie set, indexes 0, descriptors
    /// pointing at their buffers).
    pub fn new(pairs: u16, log2: u8, buf_size: u32) -> SlaveMemory {
        let rings = 2 * u64::from(pairs);
        let slots = 1u64 << log2;
        let size = rings * ring_bytes(log2) + rings * slots * u64::from(buf_size);
        let file = memfd(size);
        // SAFETY: a fresh shared mapping of the whole file, chosen by the kernel.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap");
        let mut m = SlaveMemory {
            file,
            base: base.cast(),
            size,
            pairs,
            log2,
            buf_size,
            s2m_head: vec![0; usize::from(pairs)],
            m2s_next: vec![0; usize::from(pairs)],
            m2s_head: vec![0; usize::from(pairs)],
        };
        for dir in [Direction::S2m, Direction::M2s] {
            for q in 0..pairs {
                let r = m.ring_offset(dir, q);
                m.write_u32(r, COOKIE);
                for s in 0..slots as u16 {
                    let d = Desc {
                        flags: 0,
                        region: 0,
                        length: buf_size,
                        offset: m.buffer_offset(dir, q, s),
                        metadata: 0,
                    };
                    m.set_desc(dir, q, s, d);
                }
            }
        }
        for q in 0..pairs {
            m.post_rx(q);
        }
        m
    }

    /// Slots per ring.
    pub fn slots(&self) -> u16 {
        1 << self.log2
    }

    /// Offset of ring `q` of `dir` in the region.
    pub fn ring_offset(&self, dir: Direction, q: u16) -> u32 {
        let i = match dir {
            Direction::S2m => u64::from(q),
            Direction::M2s => u64::from(self.pairs + q),
        };
        (i * ring_bytes(self.log2)) as u32
    }

    /// Offset of the buffer of slot `s` of ring `q` of `dir`.
    pub fn buffer_offset(&self, dir: Direction, q: u16, s: u16) -> u32 {
        let rings = 2 * u64::from(self.pairs);
        let ring = u64::from(self.ring_offset(dir, q)) / ring_bytes(self.log2);
        let slot = ring * u64::from(self.slots()) + u64::from(s & (self.slots() - 1));
        (rings * ring_bytes(self.log2) + slot * u64::from(self.buf_size)) as u32
    }

    fn write_u32(&mut self, off: u32, v: u32) {
        // SAFETY: callers pass offsets inside the mapping, 4-byte aligned.
        unsafe { std::ptr::write_volatile(self.base.add(off as usize).cast::<u32>(), v) };
    }

    fn word(&self, dir: Direction, q: u16, off: usize) -> &AtomicU16 {
        let r = self.ring_offset(dir, q) as usize;
        // SAFETY: inside the ring header in the mapping, 2-byte aligned.
        unsafe { &*self.base.add(r + off).cast::<AtomicU16>() }
    }

    /// Sets ring `q`'s `head` (a lie, for hostile tests).
    pub fn set_head(&self, dir: Direction, q: u16, v: u16) {
        self.word(dir, q, HEAD_OFFSET).store(v, Ordering::Release);
    }

    /// Ring `q`'s `tail` as the switch published it.
    pub fn tail(&self, dir: Direction, q: u16) -> u16 {
        self.word(dir, q, TAIL_OFFSET).load(Ordering::Acquire)
    }

    /// Ring `q`'s `flags`.
    pub fn flags(&self, dir: Direction, q: u16) -> u16 {
        self.word(dir, q, 4).load(Ordering::Acquire)
    }

    fn desc_off(&self, dir: Direction, q: u16, s: u16) -> usize {
        self.ring_offset(dir, q) as usize
            + RING_HEADER
            + DESC_SIZE * usize::from(s & (self.slots() - 1))
    }

    /// Writes descriptor `s` of ring `q`.
    pub fn set_desc(&mut self, dir: Direction, q: u16, s: u16, d: Desc) {
        let off = self.desc_off(dir, q, s);
        // SAFETY: inside the ring in the mapping, 4-byte aligned.
        unsafe { std::ptr::write_volatile(self.base.add(off).cast::<Desc>(), d) };
    }

    /// Reads descriptor `s` of ring `q`.
    pub fn desc(&self, dir: Direction, q: u16, s: u16) -> Desc {
        let off = self.desc_off(dir, q, s);
        // SAFETY: as in `set_desc`.
        unsafe { std::ptr::read_volatile(self.base.add(off).cast::<Desc>()) }
    }

    fn write(&mut self, off: u32, bytes: &[u8]) {
        assert!(u64::from(off) + bytes.len() as u64 <= self.size);
        // SAFETY: bounds checked just above.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(off as usize), bytes.len())
        };
    }

    fn read(&self, off: u32, len: usize) -> Vec<u8> {
        assert!(u64::from(off) + len as u64 <= self.size);
        let mut v = vec![0u8; len];
        // SAFETY: bounds checked just above.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(off as usize), v.as_mut_ptr(), len) };
        v
    }

    /// Sends `frame` on S2M ring `q`, split over buffers as needed. False when the ring has
    /// no room (the switch has not handed enough slots back).
    pub fn send(&mut self, q: u16, frame: &[u8]) -> bool {
        let qi = usize::from(q);
        let head = self.s2m_head[qi];
        let tail = self.tail(Direction::S2m, q);
        let free = self.slots() - head.wrapping_sub(tail);
        let need = frame.len().div_ceil(self.buf_size as usize).max(1);
        if need > usize::from(free) {
            return false;
        }
        let mut slot = head;
        for (i, chunk) in frame
            .chunks(self.buf_size as usize)
            .chain(frame.is_empty().then_some(&[][..]))
            .enumerate()
        {
            let off = self.buffer_offset(Direction::S2m, q, slot);
            self.write(off, chunk);
            self.set_desc(
                Direction::S2m,
                q,
                slot,
                Desc {
                    flags: if i + 1 < need { DESC_FLAG_NEXT } else { 0 },
                    region: 0,
                    length: chunk.len() as u32,
                    offset: off,
                    metadata: 0,
                },
            );
            slot = slot.wrapping_add(1);
        }
        self.s2m_head[qi] = slot;
        self.set_head(Direction::S2m, q, slot);
        true
    }

    /// Publishes `d` as the next slot of S2M ring `q`, as is (a hostile peer's descriptor).
    pub fn push_desc(&mut self, q: u16, d: Desc) {
        let qi = usize::from(q);
        let slot = self.s2m_head[qi];
        self.set_desc(Direction::S2m, q, slot, d);
        self.s2m_head[qi] = slot.wrapping_add(1);
        self.set_head(Direction::S2m, q, self.s2m_head[qi]);
    }

    /// The slave's own `head` of S2M ring `q`.
    pub fn s2m_head(&self, q: u16) -> u16 {
        self.s2m_head[usize::from(q)]
    }

    /// Posts every free M2S slot of ring `q` as an empty `buf_size` buffer.
    pub fn post_rx(&mut self, q: u16) {
        let qi = usize::from(q);
        let target = self.m2s_next[qi].wrapping_add(self.slots());
        let mut s = self.m2s_head[qi];
        while s != target {
            let off = self.buffer_offset(Direction::M2s, q, s);
            let len = self.buf_size;
            self.set_desc(
                Direction::M2s,
                q,
                s,
                Desc {
                    flags: 0,
                    region: 0,
                    length: len,
                    offset: off,
                    metadata: 0,
                },
            );
            s = s.wrapping_add(1);
        }
        self.m2s_head[qi] = s;
        self.set_head(Direction::M2s, q, s);
    }

    /// Takes the frames the switch wrote on M2S ring `q`, then posts the buffers again.
    pub fn recv(&mut self, q: u16) -> Vec<Vec<u8>> {
        let qi = usize::from(q);
        let tail = self.tail(Direction::M2s, q);
        let mut out = Vec::new();
        let mut cur = self.m2s_next[qi];
        let mut frame = Vec::new();
        while cur != tail {
            let d = self.desc(Direction::M2s, q, cur);
            frame.extend(self.read(d.offset, d.length as usize));
            cur = cur.wrapping_add(1);
            if d.flags & DESC_FLAG_NEXT == 0 {
                out.push(std::mem::take(&mut frame));
            }
        }
        self.m2s_next[qi] = cur;
        self.post_rx(q);
        out
    }
}

/// A connected slave: the control socket and the memory.
pub struct Slave {
    /// The control connection.
    pub conn: UnixStream,
    /// The rings and buffers.
    pub mem: SlaveMemory,
    /// Eventfds sent with `ADD_RING` (kept open, as a real slave does).
    _interrupts: Vec<File>,
}

/// Reads one reply; `Err` with its text when it is not what was expected.
pub fn expect(conn: &UnixStream, what: &str) -> std::io::Result<Msg> {
    let mut buf = [0u8; 256];
    let (n, _) = recv(conn, &mut buf)?
        .ok_or_else(|| std::io::Error::other(format!("closed while waiting for {what}")))?;
    let msg = Msg::parse(&buf[..n]).map_err(|e| std::io::Error::other(e.to_string()))?;
    if let Msg::Disconnect { reason, .. } = &msg {
        return Err(std::io::Error::other(format!(
            "DISCONNECT instead of {what}: {}",
            super::protocol::text(reason)
        )));
    }
    Ok(msg)
}

fn eventfd() -> File {
    // SAFETY: plain eventfd(2); checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd");
    // SAFETY: a fresh descriptor nothing else owns.
    unsafe { File::from_raw_fd(fd) }
}

impl Slave {
    /// Connects to the master at `path`, retrying for up to 5 s while the socket appears.
    pub fn open(path: &Path) -> std::io::Result<UnixStream> {
        let began = std::time::Instant::now();
        loop {
            match connect(path) {
                Ok(c) => {
                    c.set_read_timeout(Some(Duration::from_secs(5)))?;
                    return Ok(c);
                }
                Err(e) if began.elapsed() > Duration::from_secs(5) => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Connects to the master at `path` as interface `id` and runs the whole handshake.
    pub fn connect(path: &Path, id: u32, mem: SlaveMemory) -> std::io::Result<Slave> {
        let conn = Slave::open(path)?;
        let hello = expect(&conn, "HELLO")?;
        let Msg::Hello(h) = hello else {
            return Err(std::io::Error::other(format!("{hello:?} instead of HELLO")));
        };
        if h.max_s2m_ring + 1 < mem.pairs || h.max_log2_ring_size < mem.log2 {
            return Err(std::io::Error::other(format!(
                "master limits too small: {h:?}"
            )));
        }
        let init = Msg::Init(Init {
            version: VERSION,
            id,
            mode: MODE_ETHERNET,
            secret: [0; super::protocol::SECRET_LEN],
        });
        send(&conn, &init, None)?;
        expect(&conn, "ACK of INIT")?;
        send(
            &conn,
            &Msg::AddRegion(AddRegion {
                index: 0,
                size: mem.size,
            }),
            Some(mem.file.as_raw_fd()),
        )?;
        expect(&conn, "ACK of ADD_REGION")?;
        let mut interrupts = Vec::new();
        for dir in [Direction::S2m, Direction::M2s] {
            for q in 0..mem.pairs {
                let efd = eventfd();
                send(
                    &conn,
                    &Msg::AddRing(AddRing {
                        flags: if dir == Direction::S2m {
                            RING_FLAG_S2M
                        } else {
                            0
                        },
                        index: q,
                        region: 0,
                        offset: mem.ring_offset(dir, q),
                        log2_ring_size: mem.log2,
                        private_hdr_size: 0,
                    }),
                    Some(efd.as_raw_fd()),
                )?;
                interrupts.push(efd);
                expect(&conn, "ACK of ADD_RING")?;
            }
        }
        send(
            &conn,
            &Msg::Connect(super::protocol::padded(b"heddle-test-slave")),
            None,
        )?;
        match expect(&conn, "CONNECTED")? {
            Msg::Connected(_) => Ok(Slave {
                conn,
                mem,
                _interrupts: interrupts,
            }),
            other => Err(std::io::Error::other(format!(
                "{other:?} instead of CONNECTED"
            ))),
        }
    }
}
