//! Native memif: the rings against an in-process slave, the handshake over a real socket,
//! and a hostile slave.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::port::{connect, recv, send, MemifConfig, MemifPort};
use super::protocol::{AddRegion, AddRing, Init, Msg, MODE_ETHERNET, RING_FLAG_S2M, VERSION};
use super::queue::{
    BurstStats, Desc, Direction, MemifMemory, MemifQueue, RegionsBuilder, RING_FLAG_MASK_INT,
};
use super::ring::MemifRings;
use super::testing::{expect, memfd, Slave, SlaveMemory};
use crate::switch::io::{Burst, Packet};
use crate::switch::testing::{frame, mac, TestPacket};
use crate::vhost::testing::VecPool;

fn mapped(m: &SlaveMemory) -> Arc<MemifMemory> {
    let mut b = RegionsBuilder::default();
    b.add(0, m.size, m.file.try_clone().unwrap()).unwrap();
    Arc::new(b.build())
}

fn queues(m: &SlaveMemory) -> (MemifQueue, MemifQueue) {
    let mem = mapped(m);
    let rx = MemifQueue::new(
        mem.clone(),
        Direction::S2m,
        0,
        m.ring_offset(Direction::S2m, 0),
        m.log2,
    )
    .unwrap();
    let tx = MemifQueue::new(
        mem,
        Direction::M2s,
        0,
        m.ring_offset(Direction::M2s, 0),
        m.log2,
    )
    .unwrap();
    (rx, tx)
}

#[test]
fn frames_cross_both_ways_byte_identical_with_chains() {
    let mut m = SlaveMemory::new(1, 6, 1024);
    let (mut rx, mut tx) = queues(&m);
    assert_ne!(
        m.flags(Direction::S2m, 0) & RING_FLAG_MASK_INT,
        0,
        "the switch polls"
    );
    let frames: Vec<Vec<u8>> = [60, 1024, 1500, 3000]
        .iter()
        .map(|n| frame(mac(1), mac(2), Some(7), *n))
        .collect();
    for f in &frames {
        assert!(m.send(0, f));
    }
    let mut pool = VecPool::new(4096, 64);
    let mut out = Burst::new();
    let mut st = BurstStats::default();
    assert_eq!(rx.dequeue(&mut pool, &mut out, &mut st), 4);
    let got: Vec<Vec<u8>> = out.as_slice().iter().map(|p| p.data().to_vec()).collect();
    assert_eq!(got, frames);
    assert_eq!(st.packets, 4);
    assert_eq!(
        m.tail(Direction::S2m, 0),
        1 + 1 + 2 + 3,
        "slots handed back"
    );
    let pkts: Vec<TestPacket> = frames.iter().map(|f| TestPacket::new(f)).collect();
    assert_eq!(tx.enqueue(&pkts, &mut st), 4);
    assert_eq!(m.recv(0), frames);
    pool.give_back(out.drain());
}

#[test]
fn a_full_peer_ring_drops_counts_and_resumes() {
    let mut m = SlaveMemory::new(1, 2, 2048); // 4 slots
    let (_, mut tx) = queues(&m);
    let pkts: Vec<TestPacket> = (0..6)
        .map(|i| TestPacket::new(&frame(mac(1), mac(i), None, 64)))
        .collect();
    let mut st = BurstStats::default();
    assert_eq!(tx.enqueue(&pkts, &mut st), 4);
    assert_eq!(st.no_peer_buffers, 2);
    assert_eq!(
        tx.enqueue(&pkts, &mut st),
        0,
        "nothing posted: nothing taken"
    );
    assert_eq!(m.recv(0).len(), 4);
    assert_eq!(tx.enqueue(&pkts[..1], &mut st), 1, "posted again: taken");
}

#[test]
fn head_lies_break_the_ring_and_bad_descriptors_cost_one_frame() {
    let mut m = SlaveMemory::new(1, 4, 2048);
    let (mut rx, mut tx) = queues(&m);
    let mut pool = VecPool::new(2048, 64);
    let mut out = Burst::new();
    let mut st = BurstStats::default();
    // A descriptor past the region's end, one with a region that does not exist, one too
    // long for the region, then a good frame.
    let good = frame(mac(5), mac(6), None, 100);
    for _ in 0..3 {
        assert!(m.send(0, &good));
    }
    // Overwrite the first three descriptors with the bad ones.
    let bads = [
        Desc {
            flags: 0,
            region: 0,
            length: 64,
            offset: m.size as u32 - 10,
            metadata: 0,
        },
        Desc {
            flags: 0,
            region: 3,
            length: 64,
            offset: 0,
            metadata: 0,
        },
        Desc {
            flags: 0,
            region: 0,
            length: u32::MAX,
            offset: 0,
            metadata: 0,
        },
    ];
    for (s, d) in bads.iter().enumerate() {
        m.set_desc(Direction::S2m, 0, s as u16, *d);
    }
    assert!(m.send(0, &good));
    assert_eq!(rx.dequeue(&mut pool, &mut out, &mut st), 1);
    assert_eq!(out.as_slice()[0].data(), &good[..]);
    assert_eq!(st.bad_descs, 3);
    assert_eq!(m.tail(Direction::S2m, 0), 4, "bad slots handed back too");
    pool.give_back(out.drain());
    // A head more than the ring size ahead breaks the ring for good.
    m.set_head(Direction::S2m, 0, 4 + 17);
    assert_eq!(rx.dequeue(&mut pool, &mut out, &mut st), 0);
    assert!(rx.is_broken());
    // Transmit: the peer claims more buffers than the ring holds.
    m.set_head(Direction::M2s, 0, 40);
    assert_eq!(tx.enqueue(&[TestPacket::new(&good)], &mut st), 0);
    assert!(tx.is_broken());
}

#[test]
fn a_transmit_buffer_outside_its_region_is_handed_back_empty() {
    let mut m = SlaveMemory::new(1, 3, 2048);
    let (_, mut tx) = queues(&m);
    m.set_desc(
        Direction::M2s,
        0,
        0,
        Desc {
            flags: 0,
            region: 0,
            length: 2048,
            offset: m.size as u32 - 100,
            metadata: 0,
        },
    );
    let f = frame(mac(1), mac(2), None, 200);
    let mut st = BurstStats::default();
    assert_eq!(tx.enqueue(&[TestPacket::new(&f)], &mut st), 1);
    assert_eq!(st.bad_descs, 1);
    let got = m.recv(0);
    assert_eq!(
        got,
        vec![Vec::new(), f],
        "the bad slot comes back with length 0"
    );
}

#[test]
fn rings_that_do_not_fit_or_are_not_initialised_are_refused() {
    let m = SlaveMemory::new(1, 4, 256);
    let mem = mapped(&m);
    let e = |r: Result<MemifQueue, super::queue::RingError>| r.unwrap_err().to_string();
    assert!(e(MemifQueue::new(mem.clone(), Direction::S2m, 1, 0, 4)).contains("region 1"));
    assert!(e(MemifQueue::new(mem.clone(), Direction::S2m, 0, 4, 4)).contains("multiple of 8"));
    assert!(e(MemifQueue::new(mem.clone(), Direction::S2m, 0, 0, 15)).contains("1-14"));
    assert!(e(MemifQueue::new(
        mem.clone(),
        Direction::S2m,
        0,
        m.size as u32 - 64,
        4
    ))
    .contains("does not fit"));
    // Offset 8 is inside ring 0's header: no cookie there.
    assert!(e(MemifQueue::new(mem, Direction::S2m, 0, 8, 4)).contains("cookie"));
}

#[test]
fn regions_must_be_sealable_in_order_and_as_long_as_claimed() {
    let mut b = RegionsBuilder::default();
    let e = b.add(1, 4096, memfd(4096)).unwrap_err().to_string();
    assert!(e.contains("out of order"), "{e}");
    let e = b.add(0, 8192, memfd(4096)).unwrap_err().to_string();
    assert!(e.contains("8192"), "{e}");
    let e = b.add(0, 0, memfd(4096)).unwrap_err().to_string();
    assert!(e.contains("size 0"), "{e}");
    let plain = tempfile::tempfile().unwrap();
    plain.set_len(4096).unwrap();
    let e = b.add(0, 4096, plain).unwrap_err().to_string();
    assert!(e.contains("sealed"), "{e}");
    b.add(0, 4096, memfd(4096)).unwrap();
    assert_eq!(b.len(), 1);
}

fn start(dir: &std::path::Path, workers: usize) -> MemifPort {
    let cfg = MemifConfig::parse(
        &format!("memif0,socket={}/m.sock,id=3", dir.display()),
        Some(1),
    )
    .unwrap();
    MemifPort::start("m", cfg, workers, Arc::new(|| {})).unwrap()
}

fn wait_up(port: &MemifPort, up: bool) {
    let began = Instant::now();
    while port.is_up() != up {
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "port up={up} not reached"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_slave_connects_over_the_socket_and_frames_flow() {
    let dir = tempfile::tempdir().unwrap();
    let port = start(dir.path(), 1);
    let mut slave =
        Slave::connect(&dir.path().join("m.sock"), 3, SlaveMemory::new(1, 8, 2048)).unwrap();
    wait_up(&port, true);
    let rings: &MemifRings = port.rings();
    let f = frame(mac(9), mac(8), None, 128);
    assert!(slave.mem.send(0, &f));
    let mut pool = VecPool::new(2048, 64);
    let mut out = Burst::new();
    rings.rx_burst(0, &mut pool, &mut out);
    assert_eq!(out.as_slice()[0].data(), &f[..]);
    assert_eq!(rings.tx_burst(0, out.as_slice()), 1);
    assert_eq!(slave.mem.recv(0), vec![f]);
    pool.give_back(out.drain());
    // A second slave is refused while the first is connected.
    let second = Slave::open(&dir.path().join("m.sock")).unwrap();
    let e = expect(&second, "HELLO").unwrap_err().to_string();
    assert!(e.contains("already connected"), "{e}");
    drop(slave);
    wait_up(&port, false);
    assert_eq!(
        port.link()
            .disconnects
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    drop(port);
    assert!(
        !dir.path().join("m.sock").exists(),
        "socket removed with the port"
    );
}

#[test]
fn wrong_id_and_out_of_order_messages_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let port = start(dir.path(), 1);
    let path = dir.path().join("m.sock");
    let init = |id| {
        Msg::Init(Init {
            version: VERSION,
            id,
            mode: MODE_ETHERNET,
            secret: [0; 24],
        })
    };
    let cases: Vec<(Vec<(Msg, bool)>, &str)> = vec![
        (vec![(init(4), false)], "use id=3"),
        (
            vec![(Msg::Connect([0; 32]), false)],
            "not allowed before INIT",
        ),
        (
            vec![(init(3), false), (init(3), false)],
            "not allowed before CONNECT",
        ),
        (
            vec![
                (init(3), false),
                (
                    Msg::AddRegion(AddRegion {
                        index: 0,
                        size: 4096,
                    }),
                    false,
                ),
            ],
            "without the region's file",
        ),
        (
            vec![
                (init(3), false),
                (
                    Msg::AddRing(AddRing {
                        flags: RING_FLAG_S2M,
                        index: 1,
                        region: 0,
                        offset: 0,
                        log2_ring_size: 4,
                        private_hdr_size: 0,
                    }),
                    false,
                ),
            ],
            "over this port's 1 queue",
        ),
        (
            vec![(init(3), false), (Msg::Connect([0; 32]), false)],
            "send rings 0..n",
        ),
    ];
    for (i, (msgs, needle)) in cases.iter().enumerate() {
        let conn = Slave::open(&path).unwrap();
        expect(&conn, "HELLO").unwrap();
        let mut reason = String::new();
        for (m, _) in msgs {
            send(&conn, m, None).unwrap();
            match expect(&conn, "reply") {
                Ok(_) => {}
                Err(e) => {
                    reason = e.to_string();
                    break;
                }
            }
        }
        assert!(reason.contains(needle), "case {i}: {reason:?}");
    }
    // Bytes that are not a message at all.
    let conn = connect(&path).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    expect(&conn, "HELLO").unwrap();
    use std::io::Write;
    (&conn).write_all(&[1, 2, 3]).unwrap();
    let e = expect(&conn, "reply").unwrap_err().to_string();
    assert!(e.contains("3 bytes"), "{e}");
    let mut buf = [0u8; 256];
    assert!(
        recv(&conn, &mut buf).unwrap().is_none(),
        "closed after the refusal"
    );
    let errors = port
        .link()
        .protocol_errors
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(errors, cases.len() as u64 + 1);
    assert!(!port.is_up());
}

#[test]
fn devargs_parse_and_refuse_with_the_fix() {
    let c = MemifConfig::parse(
        "memif7,socket=/run/p/m.sock,role=server,socket-abstract=no,id=2,rsize=10,queues=2,perm=0660",
        None,
    )
    .unwrap();
    assert_eq!(
        (c.device.as_str(), c.id, c.pairs, c.perm),
        ("memif7", 2, 2, Some(0o660))
    );
    assert!(MemifConfig::is_native("memif7,socket=/a"));
    assert!(!MemifConfig::is_native("net_memif0,socket=/a"));
    for (d, needle) in [
        ("memif0", "no socket"),
        ("memif0,socket=rel.sock", "relative"),
        ("memif0,socket=/a,role=client", "net_memif"),
        ("memif0,socket=/a,role=boss", "role=server"),
        ("memif0,socket=/a,queues=17", "1-16"),
        ("memif0,socket=/a,rsize=15", "1-14"),
        ("memif0,socket=/a,colour=red", "unknown"),
        ("memif0,socket=/a,id=x", "not a number"),
    ] {
        let e = MemifConfig::parse(d, None).unwrap_err().to_string();
        assert!(e.contains(needle), "{d}: {e}");
    }
}

#[test]
fn the_protocol_fuzzer_takes_a_whole_handshake_and_empty_input() {
    super::fuzz::fuzz_protocol(&[]);
    let mut rec = vec![0u8];
    rec.extend(
        Msg::Init(Init {
            version: VERSION,
            id: 0,
            mode: 0,
            secret: [0; 24],
        })
        .encode(b"f"),
    );
    rec.push(1 | (1 << 1));
    rec.extend(
        Msg::AddRegion(AddRegion {
            index: 0,
            size: 8192,
        })
        .encode(b""),
    );
    for flags in [RING_FLAG_S2M, 0] {
        rec.push(0);
        rec.extend(
            Msg::AddRing(AddRing {
                flags,
                index: 0,
                region: 0,
                offset: if flags == 0 { 1024 } else { 0 },
                log2_ring_size: 4,
                private_hdr_size: 0,
            })
            .encode(b""),
        );
    }
    rec.push(0);
    rec.extend(Msg::Connect([0; 32]).encode(b""));
    super::fuzz::fuzz_protocol(&rec);
}
