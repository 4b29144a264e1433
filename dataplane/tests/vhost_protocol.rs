//! A hostile vhost-user frontend against a native port's control thread: truncated and
//! oversized messages, unknown requests, missing file descriptors, memory tables that lie
//! about their files, rings outside memory, out-of-range vring indexes. Each is refused or
//! ends that connection, adds exactly its own count of protocol errors (a header cut short
//! by the peer closing is a disconnect and adds none; a body cut short adds one), and the
//! port then serves a well-behaved frontend as if nothing happened. No EAL needed: the port's rings are not
//! polled here.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use heddle_dataplane::vhost::device::VIRTIO_FEATURES;
use heddle_dataplane::vhost::port::{VhostConfig, VhostPort};
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

fn start(dir: &std::path::Path) -> VhostPort {
    let cfg = VhostConfig::parse(
        &format!(
            "vhost-user0,iface={}/p.sock,queues=2,perm=0600",
            dir.display()
        ),
        None,
    )
    .unwrap();
    VhostPort::start("p", cfg, 1, Arc::new(|| {})).unwrap()
}

/// A frontend that follows the protocol still gets the right answers.
fn well_behaved(port: &VhostPort) {
    let mut f = Frontend::connect(&port.config().path, 2).expect("connect");
    f.set_owner().unwrap();
    assert_eq!(f.get_features().unwrap(), VIRTIO_FEATURES);
    let pf = f.get_protocol_features().unwrap();
    assert!(pf.contains(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK));
    f.set_protocol_features(pf).unwrap();
    assert_eq!(f.get_queue_num().unwrap(), 2);
}

fn header(code: u32, flags: u32, size: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&code.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&size.to_le_bytes());
    h
}

/// Sends raw bytes and waits until the switch closes the connection or stops answering.
/// Returns what the switch replied.
fn raw(port: &VhostPort, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(&port.config().path).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    sink
}

fn wait_disconnected(port: &VhostPort, n: u64) {
    let t = Instant::now();
    while port.link().disconnects.load(Ordering::Relaxed) < n {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "connection not closed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn memfd(len: u64) -> std::fs::File {
    // SAFETY: a valid NUL-terminated name; the returned fd is owned by the File.
    let fd = unsafe { libc::memfd_create(c"heddle-test".as_ptr(), 0) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    f
}

#[test]
fn malformed_messages_are_refused_and_the_port_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let port = start(dir.path());
    well_behaved(&port);
    // The well-behaved frontend's connection is the port's first.
    let mut closed = 1;
    wait_disconnected(&port, closed);
    assert_eq!(port.link().protocol_errors.load(Ordering::Relaxed), 0);

    let version = 0x1;
    // What each case sends, and how many protocol errors it must add. None gets a reply:
    // none of them is a request that has one.
    let cases: Vec<(&str, Vec<u8>, u64)> = vec![
        ("truncated header", vec![1, 0, 0], 0),
        ("oversized body", header(1, version, u32::MAX), 1),
        ("unknown request", header(9999, version, 0), 1),
        (
            "SET_MEM_TABLE without fds",
            [
                header(5, version, 8 + 32),
                vec![1, 0, 0, 0, 0, 0, 0, 0],
                vec![0xff; 32],
            ]
            .concat(),
            1,
        ),
        (
            "SET_VRING_NUM on vring 200",
            [
                header(8, version | 0x8, 8),
                200u32.to_le_bytes().to_vec(),
                256u32.to_le_bytes().to_vec(),
            ]
            .concat(),
            // Refused (and counted) without ending the connection; no reply, as REPLY_ACK
            // is not negotiated on these connections.
            1,
        ),
        (
            "SET_VRING_NUM of 3",
            [
                header(8, version, 8),
                0u32.to_le_bytes().to_vec(),
                3u32.to_le_bytes().to_vec(),
            ]
            .concat(),
            1,
        ),
        (
            "body shorter than announced",
            [header(2, version, 8), vec![1, 2]].concat(),
            1,
        ),
        (
            "garbage",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761u32) >> 13) as u8)
                .collect(),
            1,
        ),
    ];
    for (what, bytes, errors) in cases {
        let before = port.link().protocol_errors.load(Ordering::Relaxed);
        let got = raw(&port, &bytes);
        closed += 1;
        wait_disconnected(&port, closed);
        let added = port.link().protocol_errors.load(Ordering::Relaxed) - before;
        eprintln!("{what}: protocol errors +{added}, reply {got:?}");
        assert_eq!(added, errors, "{what}: protocol errors counted");
        assert_eq!(got, Vec::<u8>::new(), "{what}: the switch's reply");
        well_behaved(&port);
        closed += 1;
        wait_disconnected(&port, closed);
        assert_eq!(
            port.link().protocol_errors.load(Ordering::Relaxed),
            before + errors,
            "{what}: the well-behaved frontend after it adds no error"
        );
    }
}

#[test]
fn memory_tables_and_rings_that_lie_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = start(dir.path());
    let mut f = Frontend::connect(&port.config().path, 2).expect("connect");
    f.set_owner().unwrap();
    assert_eq!(f.get_features().unwrap(), VIRTIO_FEATURES);
    f.set_features(VIRTIO_FEATURES).unwrap();
    f.get_protocol_features().unwrap();
    f.set_protocol_features(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK)
        .unwrap();
    // Ask for an acknowledgement of every request, so refusals come back as errors.
    f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);

    // A 64 KiB file claimed to be 1 GiB: mapping it would SIGBUS on access.
    let small = memfd(64 << 10);
    let lie = VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: 1 << 30,
        userspace_addr: 0x7000_0000_0000,
        mmap_offset: 0,
        mmap_handle: small.as_raw_fd(),
    };
    assert!(
        f.set_mem_table(&[lie]).is_err(),
        "a short file must be refused"
    );

    // Overlapping regions.
    let a = memfd(2 << 20);
    let b = memfd(2 << 20);
    let r = |fd: &std::fs::File, gpa: u64, uva: u64| VhostUserMemoryRegionInfo {
        guest_phys_addr: gpa,
        memory_size: 2 << 20,
        userspace_addr: uva,
        mmap_offset: 0,
        mmap_handle: fd.as_raw_fd(),
    };
    assert!(
        f.set_mem_table(&[r(&a, 0, 0x1000_0000), r(&b, 1 << 20, 0x2000_0000)])
            .is_err(),
        "overlapping guest ranges must be refused"
    );

    // A good table, then a ring placed outside it: the ring never runs.
    f.set_mem_table(&[r(&a, 0, 0x1000_0000)]).unwrap();
    f.set_vring_num(1, 256).unwrap();
    f.set_vring_addr(
        1,
        &VringConfigData {
            queue_max_size: 256,
            queue_size: 256,
            flags: 0,
            desc_table_addr: 0x9000_0000,
            used_ring_addr: 0x9000_2000,
            avail_ring_addr: 0x9000_1000,
            log_addr: None,
        },
    )
    .unwrap();
    f.set_vring_base(1, 0).unwrap();
    let kick = EventFd::new(0).unwrap();
    f.set_vring_kick(1, &kick).unwrap();
    f.set_vring_enable(1, true).unwrap();
    let slot_active = port.rings().slot(1).unwrap().is_active();
    assert!(!slot_active, "a ring outside guest memory must not run");
    assert!(port.rings().counters.broken_rings.load(Ordering::Relaxed) >= 1);
    assert!(
        f.set_vring_num(300, 256).is_err(),
        "vring index out of range"
    );
    drop(f);
    well_behaved(&port);
}

/// The protocol fuzzer's entry point on pseudo-random inputs, briefly (the cargo-fuzz target
/// in `dataplane/fuzz` runs the same function for as long as one likes): random bytes, and
/// streams of well-formed headers with random codes, flags, sizes and bodies.
#[test]
fn protocol_fuzz_smoke() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let started = Instant::now();
    let mut runs = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let mut input = Vec::new();
        if next() % 4 == 0 {
            let n = (next() % 512) as usize;
            input.extend((0..n).map(|_| next() as u8));
        } else {
            for _ in 0..(next() % 12) {
                let code = (next() % 45) as u32;
                let size = match next() % 8 {
                    0 => (next() % 0x1_0000) as u32,
                    _ => (next() % 64) as u32,
                };
                input.extend_from_slice(&header(code, 1 | (next() as u32 & 0xc), size));
                let body = size.min(256);
                input.extend((0..body).map(|_| next() as u8));
            }
        }
        heddle_dataplane::vhost::fuzz::fuzz_protocol(&input);
        runs += 1;
    }
    eprintln!("{runs} protocol inputs in 3 s");
    assert!(runs > 100);
}

/// The fuzz harness reads the backend's replies: 330 GET_FEATURES / GET_PROTOCOL_FEATURES
/// requests (the committed reproducer `fuzz/corpus/vhost_protocol/get-features-flood`)
/// produce more replies than the socket holds, and once left the backend blocked in
/// `sendmsg` for good.
#[test]
fn protocol_fuzz_reads_the_replies_of_a_get_features_flood() {
    let mut input = Vec::new();
    for i in 0..330 {
        input.extend_from_slice(&header(if i % 2 == 0 { 1 } else { 15 }, 1, 0));
    }
    let committed = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/vhost_protocol/get-features-flood"),
    )
    .unwrap();
    assert_eq!(committed, input, "the committed reproducer is this flood");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        heddle_dataplane::vhost::fuzz::fuzz_protocol(&input);
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the flood is handled within 10 s");
}

/// One request on `s` and, when `reply`, its answer's payload.
fn request(s: &mut UnixStream, code: u32, flags: u32, body: &[u8], reply: bool) -> Vec<u8> {
    let mut m = header(code, 0x1 | flags, body.len() as u32);
    m.extend_from_slice(body);
    s.write_all(&m).unwrap();
    if !reply {
        return Vec::new();
    }
    let mut h = [0u8; 12];
    s.read_exact(&mut h).unwrap();
    assert_eq!(u32::from_le_bytes(h[0..4].try_into().unwrap()), code);
    let size = u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize;
    let mut p = vec![0u8; size];
    s.read_exact(&mut p).unwrap();
    p
}

fn u64_of(p: &[u8]) -> u64 {
    u64::from_le_bytes(p[..8].try_into().unwrap())
}

#[test]
fn mtu_is_in_the_config_space_and_net_set_mtu_is_bounded_by_the_port_mtu() {
    const GET_FEATURES: u32 = 1;
    const SET_FEATURES: u32 = 2;
    const GET_PROTOCOL_FEATURES: u32 = 15;
    const SET_PROTOCOL_FEATURES: u32 = 16;
    const NET_SET_MTU: u32 = 20;
    const GET_CONFIG: u32 = 24;
    const NEED_REPLY: u32 = 0x8;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = VhostConfig::parse(
        &format!("vhost-user0,iface={}/m.sock", dir.path().display()),
        None,
    )
    .unwrap();
    cfg.mtu = 9000;
    let port = VhostPort::start("m", cfg, 1, Arc::new(|| {})).unwrap();
    let mut s = UnixStream::connect(&port.config().path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    let features = u64_of(&request(&mut s, GET_FEATURES, 0, &[], true));
    assert_ne!(features & (1 << 3), 0, "VIRTIO_NET_F_MTU is offered");
    request(&mut s, SET_FEATURES, 0, &features.to_le_bytes(), false);
    let pf = u64_of(&request(&mut s, GET_PROTOCOL_FEATURES, 0, &[], true));
    let want = VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MTU
        | VhostUserProtocolFeatures::REPLY_ACK;
    assert_eq!(
        pf & want.bits(),
        want.bits(),
        "CONFIG, NET_MTU and REPLY_ACK offered"
    );
    request(
        &mut s,
        SET_PROTOCOL_FEATURES,
        0,
        &want.bits().to_le_bytes(),
        false,
    );

    // GET_CONFIG of struct virtio_net_config's first 12 bytes: the MTU at offset 10, the
    // queue pairs at 8; and of the MTU alone.
    let config = |s: &mut UnixStream, offset: u32, size: u32| {
        let mut body = Vec::new();
        body.extend_from_slice(&offset.to_le_bytes());
        body.extend_from_slice(&size.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend(std::iter::repeat_n(0u8, size as usize));
        let r = request(s, GET_CONFIG, 0, &body, true);
        assert_eq!(u32::from_le_bytes(r[4..8].try_into().unwrap()), size);
        r[12..].to_vec()
    };
    let whole = config(&mut s, 0, 12);
    assert_eq!(u16::from_le_bytes([whole[10], whole[11]]), 9000);
    assert_eq!(u16::from_le_bytes([whole[8], whole[9]]), 1);
    assert_eq!(config(&mut s, 10, 2), 9000u16.to_le_bytes());

    // NET_SET_MTU: up to the port's MTU it is acked (0) and shown; above it, refused (1)
    // and counted, and the connection stays.
    let errors = || port.link().protocol_errors.load(Ordering::Relaxed);
    let set = |s: &mut UnixStream, mtu: u64| {
        u64_of(&request(
            s,
            NET_SET_MTU,
            NEED_REPLY,
            &mtu.to_le_bytes(),
            true,
        ))
    };
    assert_eq!(set(&mut s, 9000), 0);
    assert_eq!(port.link().frontend_mtu.load(Ordering::Relaxed), 9000);
    assert_eq!(errors(), 0);
    assert_eq!(set(&mut s, 9001), 1);
    assert_eq!(errors(), 1);
    assert_eq!(set(&mut s, 67), 1);
    assert_eq!(errors(), 2);
    assert_eq!(port.link().frontend_mtu.load(Ordering::Relaxed), 9000);
    assert_eq!(set(&mut s, 1500), 0);
    assert_eq!(port.link().frontend_mtu.load(Ordering::Relaxed), 1500);
    // Still the same connection, still answering.
    assert_eq!(
        u64_of(&request(&mut s, GET_FEATURES, 0, &[], true)),
        features
    );
    assert_eq!(port.link().connects.load(Ordering::Relaxed), 1);
    drop(s);
    wait_disconnected(&port, 1);
    assert_eq!(port.link().frontend_mtu.load(Ordering::Relaxed), 0);
}
