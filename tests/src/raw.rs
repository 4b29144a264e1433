//! Raw Ethernet frames on a Linux interface through `AF_PACKET` sockets, with 802.1Q tags.
//!
//! There is no 8021q module on the project's machines, so VLAN subinterfaces cannot be used;
//! tests send and receive tagged frames on the plain interface instead.
//!
//! On receive the kernel strips the outer VLAN tag into skb metadata (`skb_vlan_untag`, done
//! for every device, veth included), so the bytes read from an `AF_PACKET` socket carry no tag.
//! [`RawSocket`] enables `PACKET_AUXDATA`, reads the tag from the control message
//! (`tp_vlan_tci`, valid when `TP_STATUS_VLAN_VALID` is set) and puts it back into the frame,
//! so [`Frame::data`] is the frame as it was on the wire. On send, a tag written into the
//! frame bytes goes out unchanged.

use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

/// The 802.1Q TPID.
pub const ETH_P_8021Q: u16 = 0x8100;
/// An EtherType from the IEEE "local experimental" range, used for test payloads.
pub const ETH_P_TEST: u16 = 0x88b5;

// Kernel ABI from <linux/if_packet.h>; defined here so the code does not depend on which libc
// release exports them.
const SOL_PACKET: libc::c_int = 263;
const PACKET_AUXDATA: libc::c_int = 8;
const PACKET_OUTGOING: u8 = 4;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;

/// `struct tpacket_auxdata` from <linux/if_packet.h>.
#[repr(C)]
#[derive(Clone, Copy)]
struct TpacketAuxdata {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
}

/// A 48-bit MAC address.
pub type Mac = [u8; 6];

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<Mac> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("`{s}` is not a MAC address");
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).with_context(|| format!("`{s}` is not a MAC address"))?;
    }
    Ok(mac)
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Builds an Ethernet frame `dst, src, [0x8100, TCI], ethertype, payload`, zero-padded to
/// the 60-byte minimum (no FCS). `vlan` is the full TCI (priority bits included; a plain VLAN
/// id below 4096 means priority 0).
pub fn ethernet_frame(
    dst: Mac,
    src: Mac,
    vlan: Option<u16>,
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(64 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(tci) = vlan {
        f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

/// The VLAN id (low 12 bits of the TCI) of an in-band 802.1Q tag, if the frame has one.
pub fn frame_vlan(frame: &[u8]) -> Option<u16> {
    (frame.len() >= 18 && u16::from_be_bytes([frame[12], frame[13]]) == ETH_P_8021Q)
        .then(|| u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff)
}

/// The EtherType after any 802.1Q tag.
pub fn frame_ethertype(frame: &[u8]) -> Option<u16> {
    let at = if frame_vlan(frame).is_some() { 16 } else { 12 };
    frame
        .get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// One received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame as on the wire: a VLAN tag the kernel moved into metadata is re-inserted.
    pub data: Vec<u8>,
    /// The VLAN id (low 12 bits of the TCI) if the frame was tagged.
    pub vlan: Option<u16>,
    /// True when the tag came from `PACKET_AUXDATA` (kernel stripped it), false when it was
    /// still in the bytes or there was none.
    pub tag_from_auxdata: bool,
    /// `sll_pkttype` (`PACKET_HOST`, `PACKET_BROADCAST`, `PACKET_OTHERHOST`, ...).
    pub pkttype: u8,
}

impl Frame {
    /// Destination MAC.
    pub fn dst(&self) -> Mac {
        self.data[0..6]
            .try_into()
            .expect("frames are at least 14 bytes")
    }

    /// Source MAC.
    pub fn src(&self) -> Mac {
        self.data[6..12]
            .try_into()
            .expect("frames are at least 14 bytes")
    }

    /// EtherType after any VLAN tag.
    pub fn ethertype(&self) -> Option<u16> {
        frame_ethertype(&self.data)
    }
}

/// Outcome of one non-blocking read.
enum Received {
    Frame(Frame),
    /// Our own outgoing frame, or a runt.
    Skipped,
    /// Nothing queued.
    Nothing,
}

/// An `AF_PACKET`/`SOCK_RAW` socket bound to one interface, receiving every protocol, with
/// `PACKET_AUXDATA` on. Outgoing frames (our own sends) are skipped on receive.
#[derive(Debug)]
pub struct RawSocket {
    fd: OwnedFd,
    ifname: String,
    ifindex: libc::c_int,
}

impl RawSocket {
    /// Opens a socket on `ifname`, inside `netns` when given (the socket is created on a
    /// thread that joined the namespace, and keeps working from any thread).
    pub fn open(ifname: &str, netns: Option<&Netns>) -> Result<Self> {
        match netns {
            Some(ns) => {
                let name = ifname.to_owned();
                ns.run_in(move || Self::open_here(&name)).with_context(|| {
                    format!("opening raw socket on {ifname} in netns {}", ns.name())
                })
            }
            None => Self::open_here(ifname),
        }
    }

    fn open_here(ifname: &str) -> Result<Self> {
        let cname = std::ffi::CString::new(ifname)?;
        // SAFETY: `cname` is a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("interface {ifname} not found"));
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call with constant arguments; the result is checked below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                proto.into(),
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET) (needs root)");
        }
        // SAFETY: `raw` is a freshly created descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        // SAFETY: `one` is a live c_int and the length passed matches its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                SOL_PACKET,
                PACKET_AUXDATA,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("setsockopt(PACKET_AUXDATA)");
        }
        let rcvbuf: libc::c_int = 4 << 20;
        // SAFETY: as above; a failure only leaves the default buffer size, so it is ignored.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&rcvbuf as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: `sll` is a fully initialised sockaddr_ll and the length matches its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("bind to {ifname}"));
        }
        Ok(Self {
            fd,
            ifname: ifname.to_owned(),
            ifindex: ifindex as libc::c_int,
        })
    }

    /// Interface name this socket is bound to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Sends one complete Ethernet frame (any VLAN tag in the bytes goes out as is).
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` is a live slice of `frame.len()` bytes and `sll` a valid address of
        // the length given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("send on {}", self.ifname));
        }
        if n as usize != frame.len() {
            bail!(
                "short send on {}: {n} of {} bytes",
                self.ifname,
                frame.len()
            );
        }
        Ok(())
    }

    /// Receives the next incoming frame, waiting at most `timeout`; `None` on timeout.
    pub fn recv(&self, timeout: Duration) -> Result<Option<Frame>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
            // SAFETY: `pfd` is one valid pollfd and nfds is 1.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err).context("poll");
            }
            if rc == 0 {
                return Ok(None);
            }
            match self.recv_one()? {
                Received::Frame(frame) => return Ok(Some(frame)),
                // Skipped frames do not end the wait: poll decides whether more are queued.
                Received::Skipped => {}
                Received::Nothing if Instant::now() >= deadline => return Ok(None),
                Received::Nothing => {}
            }
        }
    }

    /// Reads one queued frame without blocking.
    fn recv_one(&self) -> Result<Received> {
        let mut buf = vec![0u8; 65536 + 4];
        // Leave 4 bytes of room at the front to re-insert a VLAN tag without moving memory twice.
        let mut iov = libc::iovec {
            iov_base: buf[4..].as_mut_ptr().cast(),
            iov_len: buf.len() - 4,
        };
        // u64 storage keeps the control buffer aligned for cmsghdr.
        let mut cbuf = [0u64; 16];
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        // SAFETY: msghdr is plain old data; all-zero is a valid value, filled in below.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = (&mut sll as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 16]>();
        // SAFETY: every pointer in `msg` refers to a live buffer of the stated length
        // (`buf`, `sll`, `cbuf`), all of which outlive the call.
        let n = unsafe {
            libc::recvmsg(
                self.fd.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(Received::Nothing);
            }
            return Err(err).with_context(|| format!("recvmsg on {}", self.ifname));
        }
        if sll.sll_pkttype == PACKET_OUTGOING {
            return Ok(Received::Skipped);
        }
        let len = (n as usize).min(buf.len() - 4);
        let mut aux: Option<TpacketAuxdata> = None;
        // SAFETY: `msg` was filled in by recvmsg; CMSG_FIRSTHDR/CMSG_NXTHDR only walk inside
        // `msg_control[..msg_controllen]`, and each data read is bounds-checked by cmsg_len.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                let c = &*cmsg;
                if c.cmsg_level == SOL_PACKET
                    && c.cmsg_type == PACKET_AUXDATA
                    && c.cmsg_len as usize
                        >= libc::CMSG_LEN(size_of::<TpacketAuxdata>() as u32) as usize
                {
                    aux = Some(std::ptr::read_unaligned(
                        libc::CMSG_DATA(cmsg).cast::<TpacketAuxdata>(),
                    ));
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        let mut data = buf[4..4 + len].to_vec();
        let mut tag_from_auxdata = false;
        if let Some(a) = aux {
            // tp_vlan_tci can be 0 for a priority-tagged frame, so trust the status bit only.
            if a.tp_status & TP_STATUS_VLAN_VALID != 0 && data.len() >= 12 {
                let tpid = if a.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 {
                    a.tp_vlan_tpid
                } else {
                    ETH_P_8021Q
                };
                let mut tag = [0u8; 4];
                tag[..2].copy_from_slice(&tpid.to_be_bytes());
                tag[2..].copy_from_slice(&a.tp_vlan_tci.to_be_bytes());
                data.splice(12..12, tag);
                tag_from_auxdata = true;
            }
        }
        if data.len() < 14 {
            return Ok(Received::Skipped);
        }
        Ok(Received::Frame(Frame {
            vlan: frame_vlan(&data),
            data,
            tag_from_auxdata,
            pkttype: sll.sll_pkttype,
        }))
    }

    /// Discards everything queued now.
    pub fn drain(&self) -> Result<usize> {
        let mut n = 0;
        while self.recv(Duration::ZERO)?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    /// Receives until `timeout` passes or `want` frames matched `pred`; returns the matching
    /// frames (fewer than `want` on timeout). Frames that do not match are dropped.
    pub fn collect(
        &self,
        want: usize,
        timeout: Duration,
        mut pred: impl FnMut(&Frame) -> bool,
    ) -> Result<Vec<Frame>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.recv(left)? {
                Some(f) if pred(&f) => out.push(f),
                Some(_) => {}
                None => break,
            }
        }
        Ok(out)
    }

    /// Counts frames carrying VLAN id `vlan` (tag in the bytes or in auxdata) that arrive
    /// within `timeout`, stopping early once `want` were seen.
    pub fn count_vlan(&self, vlan: u16, want: usize, timeout: Duration) -> Result<usize> {
        Ok(self.collect(want, timeout, |f| f.vlan == Some(vlan))?.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_tagged_frame() {
        let dst = parse_mac("02:00:00:00:00:02").unwrap();
        let src = parse_mac("02:00:00:00:00:01").unwrap();
        let f = ethernet_frame(dst, src, Some(100), ETH_P_TEST, b"hello");
        assert_eq!(f.len(), 60);
        assert_eq!(&f[12..16], &[0x81, 0x00, 0x00, 100]);
        assert_eq!(frame_vlan(&f), Some(100));
        assert_eq!(frame_ethertype(&f), Some(ETH_P_TEST));
        assert_eq!(&f[18..23], b"hello");
        let untagged = ethernet_frame(dst, src, None, ETH_P_TEST, b"x");
        assert_eq!(frame_vlan(&untagged), None);
        assert_eq!(frame_ethertype(&untagged), Some(ETH_P_TEST));
    }

    #[test]
    fn priority_bits_do_not_leak_into_vlan_id() {
        let f = ethernet_frame(
            [0xff; 6],
            [2, 0, 0, 0, 0, 1],
            Some((5 << 13) | 42),
            ETH_P_TEST,
            &[],
        );
        assert_eq!(frame_vlan(&f), Some(42));
    }

    #[test]
    fn mac_round_trip() {
        let m = parse_mac("02:AB:cd:00:00:ff").unwrap();
        assert_eq!(format_mac(&m), "02:ab:cd:00:00:ff");
        assert!(parse_mac("02:00:00").is_err());
        assert!(parse_mac("zz:00:00:00:00:00").is_err());
    }
}
