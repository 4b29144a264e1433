//! Packed-ring unit tests: an in-process driver ([`PackedDriver`]) drives a [`PackedQueue`]
//! through wraps, chains, indirect tables, mergeable RX, in-order completion, event
//! suppression and hostile rings.

use super::packed::{
    PackedQueue, EVENT_F_DESC, EVENT_F_DISABLE, EVENT_F_ENABLE, MAX_FRAME_BUFFERS,
};
use super::packed_testing::{drain_tx_packed, fuzz_packed, PackedDesc, PackedDriver};
use super::testing::{TxLayout, VecPacket, VecPool, F_INDIRECT, F_NEXT, F_WRITE};
use super::virtq::{feature, QueueStats, RingError, MAX_CHAIN};
use crate::switch::io::{Burst, Packet};

const V1: u64 = feature::VERSION_1;

fn frame(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn pkt(bytes: &[u8]) -> VecPacket {
    let mut p = VecPool::new(bytes.len().max(1), 1).alloc_for_test(bytes.len());
    p.data_mut().copy_from_slice(bytes);
    p
}

trait AllocForTest {
    fn alloc_for_test(&mut self, len: usize) -> VecPacket;
}

impl AllocForTest for VecPool {
    fn alloc_for_test(&mut self, len: usize) -> VecPacket {
        use super::virtq::RxPool;
        self.alloc(len).expect("a packet")
    }
}

#[test]
fn tx_frames_in_every_layout_arrive_and_every_chain_is_returned() {
    let mut d = PackedDriver::new(64, V1 | feature::INDIRECT_DESC);
    let mut q = d.queue();
    let layouts = [
        TxLayout::Joined,
        TxLayout::SplitHeader,
        TxLayout::Pieces(4),
        TxLayout::Indirect(3),
    ];
    let mut sent = Vec::new();
    for (i, l) in layouts.iter().cycle().take(20).enumerate() {
        let f = frame(60 + 37 * i, i as u8);
        d.post_tx(&f, *l).expect("post");
        sent.push(f);
    }
    let mut pool = VecPool::new(2048, 64);
    let mut st = QueueStats::default();
    let got = drain_tx_packed(&mut q, &d, &mut pool, &mut st);
    assert_eq!(got, sent);
    assert_eq!(st.packets, 20);
    assert_eq!(st.bad_chains, 0);
    let used = d.reap();
    assert_eq!(used.len(), 20);
    assert!(used.iter().all(|e| e.len == 0));
    assert_eq!(d.free_descs(), 64);
    assert_eq!(q.last_avail_idx(), d.avail_position());
}

#[test]
fn chains_wrap_across_the_ring_end_for_many_laps() {
    // Size 8 with chains of 1-3 descriptors: chains regularly start near the end and
    // continue at slot 0 with the other wrap counter.
    let mut d = PackedDriver::new(8, V1);
    let mut q = d.queue();
    let mut pool = VecPool::new(2048, 8);
    let mut st = QueueStats::default();
    let mut burst: Burst<VecPacket> = Burst::new();
    for i in 0..300usize {
        let f = frame(64 + i % 50, i as u8);
        let layout = [TxLayout::Joined, TxLayout::SplitHeader, TxLayout::Pieces(2)][i % 3];
        d.post_tx(&f, layout).expect("room after reaping");
        assert_eq!(q.dequeue(&d.mem, &mut pool, &mut burst, &mut st), 1);
        let p = burst.pop().unwrap();
        assert_eq!(p.data(), &f[..], "frame {i}");
        pool.give_back([p]);
        assert_eq!(d.reap().len(), 1);
        assert_eq!(d.free_descs(), 8);
    }
    assert_eq!(q.last_avail_idx(), d.avail_position());
    assert!(!q.is_broken());
}

#[test]
fn a_queue_resumes_at_a_base_with_either_wrap_counter() {
    for base in [0x8000u16, 0x0000, 0x8005, 0x0007] {
        let mut d = PackedDriver::with(8, V1, base, 4096);
        let mut q = d.queue();
        assert_eq!(q.last_avail_idx(), base);
        let mut pool = VecPool::new(2048, 8);
        let mut st = QueueStats::default();
        for i in 0..5 {
            d.post_tx(&frame(100, i), TxLayout::Joined).unwrap();
        }
        let got = drain_tx_packed(&mut q, &d, &mut pool, &mut st);
        assert_eq!(got.len(), 5, "base {base:#x}");
        assert_eq!(d.reap().len(), 5);
        assert_eq!(q.last_avail_idx(), d.avail_position());
    }
}

#[test]
fn a_base_past_the_ring_is_refused_with_the_rule() {
    let d = PackedDriver::new(8, V1);
    let e = PackedQueue::new(&d.mem, &d.addrs(), 0x8009, d.features()).unwrap_err();
    assert_eq!(
        e,
        RingError::BadBase {
            base: 0x8009,
            size: 8
        }
    );
    assert!(e.to_string().contains("below the ring size"), "{e}");
}

#[test]
fn rx_without_mergeable_buffers_fills_one_chain_per_frame() {
    let mut d = PackedDriver::new(32, V1 | feature::INDIRECT_DESC);
    let mut q = d.queue();
    d.post_rx(2048, 1).unwrap();
    d.post_rx(2048, 3).unwrap();
    d.post_rx_indirect(2048, 4).unwrap();
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(1000 + i * 300, i as u8)).collect();
    let pkts: Vec<VecPacket> = frames.iter().map(|f| pkt(f)).collect();
    let mut st = QueueStats::default();
    assert_eq!(q.enqueue(&d.mem, &pkts, &mut st), 3);
    let got = d.recv();
    assert_eq!(got.len(), 3);
    for (g, f) in got.iter().zip(&frames) {
        assert_eq!(&g.frame, f);
        assert_eq!(g.num_buffers, 1);
        assert_eq!(g.header[..10], [0u8; 10]);
    }
    // No buffers left: the frame waits, counted.
    assert_eq!(q.enqueue(&d.mem, &pkts[..1], &mut st), 0);
    assert_eq!(st.no_guest_buffers, 1);
}

#[test]
fn rx_frame_larger_than_the_chain_is_dropped_and_the_chain_kept() {
    let mut d = PackedDriver::new(16, V1);
    let mut q = d.queue();
    d.post_rx(512, 2).unwrap();
    let big = pkt(&frame(1500, 1));
    let small = pkt(&frame(200, 2));
    let mut st = QueueStats::default();
    assert_eq!(q.enqueue(&d.mem, &[big, small], &mut st), 2);
    assert_eq!(st.oversize, 1);
    let got = d.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].frame, frame(200, 2));
}

#[test]
fn rx_with_mergeable_buffers_spans_buffers_and_sets_num_buffers() {
    let mut d = PackedDriver::new(64, V1 | feature::MRG_RXBUF);
    let mut q = d.queue();
    for _ in 0..40 {
        d.post_rx(256, 1).unwrap();
    }
    let frames = [frame(1514, 3), frame(60, 4), frame(244, 5), frame(3000, 6)];
    let pkts: Vec<VecPacket> = frames.iter().map(|f| pkt(f)).collect();
    let mut st = QueueStats::default();
    assert_eq!(q.enqueue(&d.mem, &pkts, &mut st), 4);
    let got = d.recv();
    assert_eq!(got.len(), 4);
    let want_bufs = [6u16, 1, 1, 12]; // (12 + len) / 256 rounded up
    for ((g, f), nb) in got.iter().zip(&frames).zip(want_bufs) {
        assert_eq!(&g.frame, f);
        assert_eq!(g.num_buffers, nb);
    }
}

#[test]
fn rx_mergeable_frame_short_of_buffers_gives_them_back_untouched() {
    let mut d = PackedDriver::new(16, V1 | feature::MRG_RXBUF);
    let mut q = d.queue();
    for _ in 0..3 {
        d.post_rx(256, 1).unwrap();
    }
    let f = frame(1000, 9); // needs 4 buffers
    let mut st = QueueStats::default();
    assert_eq!(q.enqueue(&d.mem, &[pkt(&f)], &mut st), 0);
    assert_eq!(st.no_guest_buffers, 1);
    assert!(
        d.reap().is_empty(),
        "nothing returned for a frame that did not fit"
    );
    assert_eq!(q.last_avail_idx(), 0x8000);
    d.post_rx(256, 1).unwrap();
    assert_eq!(q.enqueue(&d.mem, &[pkt(&f)], &mut st), 1);
    let got = d.recv();
    assert_eq!((got.len(), got[0].num_buffers), (1, 4));
    assert_eq!(got[0].frame, f);
}

#[test]
fn rx_mergeable_frame_over_tiny_buffers_is_bounded() {
    let n = (MAX_FRAME_BUFFERS + 8) as u16;
    let size = n.next_power_of_two();
    let mut d = PackedDriver::with(size, V1 | feature::MRG_RXBUF, 0x8000, 64);
    let mut q = d.queue();
    for _ in 0..n {
        d.post_rx(8, 1).unwrap();
    }
    let mut st = QueueStats::default();
    // 2100 bytes in 8-byte buffers would take 264 buffers: more than a frame may.
    let big = pkt(&frame(2100, 1));
    assert_eq!(q.enqueue(&d.mem, &[big], &mut st), 1);
    assert_eq!(st.oversize, 1);
    assert!(d.reap().is_empty());
    let small = pkt(&frame(20, 2));
    assert_eq!(q.enqueue(&d.mem, &[small], &mut st), 1);
    let got = d.recv();
    assert_eq!((got.len(), got[0].num_buffers), (1, 4));
}

#[test]
fn used_descriptors_come_back_in_order_at_each_chains_first_slot() {
    // Chains of different lengths: the driver's reap walks the ring by the length it
    // recorded for each id, so a used descriptor in the wrong slot or order shows.
    let mut d = PackedDriver::new(32, V1 | feature::IN_ORDER);
    let mut q = d.queue();
    let mut ids = Vec::new();
    for (i, pieces) in [1usize, 3, 2, 5, 1, 4].iter().enumerate() {
        ids.push(
            d.post_tx(&frame(300, i as u8), TxLayout::Pieces(*pieces))
                .unwrap(),
        );
    }
    let mut pool = VecPool::new(2048, 32);
    let mut st = QueueStats::default();
    assert_eq!(drain_tx_packed(&mut q, &d, &mut pool, &mut st).len(), 6);
    let used: Vec<u16> = d.reap().iter().map(|e| e.id as u16).collect();
    assert_eq!(used, ids);
    assert_eq!(d.free_descs(), 32);
}

#[test]
fn kicks_are_suppressed_in_poll_mode() {
    let mut d = PackedDriver::new(8, V1);
    let mut q = d.queue();
    q.suppress_notifications();
    d.post_tx(&frame(60, 0), TxLayout::Joined).unwrap();
    let mut pool = VecPool::new(2048, 8);
    let mut st = QueueStats::default();
    drain_tx_packed(&mut q, &d, &mut pool, &mut st);
    assert_eq!(d.device_event_flags(), EVENT_F_DISABLE);
}

#[test]
fn interrupts_follow_the_driver_event_area() {
    let mut d = PackedDriver::new(8, V1 | feature::EVENT_IDX);
    let mut q = d.queue();
    let mut pool = VecPool::new(2048, 64);
    let mut st = QueueStats::default();
    let mut one = |d: &mut PackedDriver, q: &mut PackedQueue| {
        d.post_tx(&frame(60, 0), TxLayout::Joined).unwrap();
        drain_tx_packed(q, d, &mut pool, &mut st);
        d.reap();
        q.needs_interrupt()
    };
    d.set_driver_event(EVENT_F_ENABLE, 0);
    assert!(one(&mut d, &mut q), "enable: interrupt");
    assert!(!q.needs_interrupt(), "nothing new since the last decision");
    d.set_driver_event(EVENT_F_DISABLE, 0);
    assert!(!one(&mut d, &mut q), "disable: none");
    // Used position is now slot 2, wrap 1. Ask for an interrupt once slot 4 is used.
    d.set_driver_event(EVENT_F_DESC, 0x8000 | 4);
    assert!(!one(&mut d, &mut q), "slot 2 used: not yet");
    assert!(!one(&mut d, &mut q), "slot 3 used: not yet");
    assert!(one(&mut d, &mut q), "slot 4 used: interrupt");
    assert!(!one(&mut d, &mut q), "slot 5: past the event");
    // Across the wrap: slot 1 of the next lap (wrap counter 0).
    d.set_driver_event(EVENT_F_DESC, 1);
    assert!(!one(&mut d, &mut q)); // 6
    assert!(!one(&mut d, &mut q)); // 7
    assert!(!one(&mut d, &mut q)); // 0, wrap 0
    assert!(one(&mut d, &mut q), "slot 1 of the next lap: interrupt");
}

fn tx_desc(d: &PackedDriver, id: u16, len: u32, flags: u16) -> PackedDesc {
    PackedDesc {
        addr: d.slot_gpa(id),
        len,
        id,
        flags,
    }
}

#[test]
fn a_looping_chain_breaks_the_ring() {
    let mut d = PackedDriver::new(8, V1);
    let mut q = d.queue();
    // Every slot says NEXT: the chain never ends within the ring.
    let descs: Vec<PackedDesc> = (0..8).map(|i| tx_desc(&d, i, 100, F_NEXT)).collect();
    d.post_descs(&descs, None);
    let mut pool = VecPool::new(2048, 8);
    let mut st = QueueStats::default();
    let mut burst: Burst<VecPacket> = Burst::new();
    assert_eq!(q.dequeue(&d.mem, &mut pool, &mut burst, &mut st), 0);
    assert!(q.is_broken());
    assert!(d.reap().is_empty());
    // Broken stays broken, for both directions.
    assert_eq!(q.enqueue(&d.mem, &[pkt(&frame(60, 0))], &mut st), 0);
}

#[test]
fn a_chain_longer_than_the_bound_breaks_the_ring() {
    let size = 512u16;
    let mut d = PackedDriver::with(size, V1, 0x8000, 64);
    let mut q = d.queue();
    let n = usize::from(MAX_CHAIN) + 1;
    let descs: Vec<PackedDesc> = (0..n)
        .map(|i| tx_desc(&d, 0, 1, if i + 1 < n { F_NEXT } else { 0 }))
        .collect();
    d.post_descs(&descs, None);
    let mut pool = VecPool::new(2048, 8);
    let mut st = QueueStats::default();
    drain_tx_packed(&mut q, &d, &mut pool, &mut st);
    assert!(q.is_broken());
}

#[test]
fn a_chain_at_the_bound_is_served() {
    let size = 512u16;
    let mut d = PackedDriver::with(size, V1, 0x8000, 64);
    let mut q = d.queue();
    let n = usize::from(MAX_CHAIN);
    let descs: Vec<PackedDesc> = (0..n)
        .map(|i| {
            tx_desc(
                &d,
                3,
                if i == 0 { 12 } else { 1 },
                if i + 1 < n { F_NEXT } else { 0 },
            )
        })
        .collect();
    d.post_descs(&descs, None);
    let mut pool = VecPool::new(2048, 8);
    let mut st = QueueStats::default();
    let got = drain_tx_packed(&mut q, &d, &mut pool, &mut st);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].len(), n - 1);
    assert!(!q.is_broken());
}

#[test]
fn a_wrap_lie_inside_a_chain_breaks_the_ring() {
    let mut d = PackedDriver::new(8, V1);
    let mut q = d.queue();
    let descs = [tx_desc(&d, 0, 12, F_NEXT), tx_desc(&d, 0, 60, 0)];
    d.post_descs(&descs, Some(1));
    let mut pool = VecPool::new(2048, 8);
    let mut st = QueueStats::default();
    drain_tx_packed(&mut q, &d, &mut pool, &mut st);
    assert!(q.is_broken());
    assert_eq!(st.packets, 0);
}

#[test]
fn a_buffer_id_past_the_ring_breaks_it() {
    let mut d = PackedDriver::new(8, V1);
    let mut q = d.queue();
    let mut desc = tx_desc(&d, 0, 72, 0);
    desc.id = 8;
    d.post_descs(&[desc], None);
    let mut pool = VecPool::new(2048, 8);
    let mut st = QueueStats::default();
    drain_tx_packed(&mut q, &d, &mut pool, &mut st);
    assert!(q.is_broken());
    // The same lie on the RX side.
    let mut d = PackedDriver::new(8, V1);
    let mut q = d.queue();
    let mut desc = tx_desc(&d, 0, 2048, F_WRITE);
    desc.id = 0xffff;
    d.post_descs(&[desc], None);
    assert_eq!(q.enqueue(&d.mem, &[pkt(&frame(60, 0))], &mut st), 0);
    assert!(q.is_broken());
}

#[test]
fn bad_buffers_are_returned_empty_counted_and_the_ring_goes_on() {
    let mut d = PackedDriver::new(16, V1);
    let mut q = d.queue();
    let end = d.end_gpa();
    // Outside memory; straddling its end; device-writable on TX; indirect not negotiated.
    let bad = [
        PackedDesc {
            addr: 0x10,
            len: 100,
            id: 0,
            flags: 0,
        },
        PackedDesc {
            addr: end - 50,
            len: 100,
            id: 1,
            flags: 0,
        },
        PackedDesc {
            addr: d.slot_gpa(2),
            len: 100,
            id: 2,
            flags: F_WRITE,
        },
        PackedDesc {
            addr: d.indirect_gpa(3),
            len: 32,
            id: 3,
            flags: F_INDIRECT,
        },
        PackedDesc {
            addr: u64::MAX - 10,
            len: 100,
            id: 4,
            flags: 0,
        },
    ];
    for b in bad {
        d.post_descs(&[b], None);
    }
    let good = frame(100, 1);
    let mut bytes = vec![0u8; 12];
    bytes.extend_from_slice(&good);
    d.write_bytes(d.slot_gpa(5), &bytes);
    d.post_descs(&[tx_desc(&d, 5, 112, 0)], None);
    let mut pool = VecPool::new(2048, 8);
    let mut st = QueueStats::default();
    let got = drain_tx_packed(&mut q, &d, &mut pool, &mut st);
    assert_eq!(got, vec![good]);
    assert_eq!(st.bad_chains, 5);
    assert!(!q.is_broken());
    let used = d.reap();
    assert_eq!(
        used.iter().map(|e| (e.id, e.len)).collect::<Vec<_>>(),
        (0..6).map(|i| (i, 0)).collect::<Vec<_>>()
    );
}

#[test]
fn rx_bad_chains_are_budgeted_per_call() {
    let mut d = PackedDriver::new(64, V1);
    let mut q = d.queue();
    for i in 0..40 {
        // Read-only buffers offered for RX.
        d.post_descs(&[tx_desc(&d, i, 2048, 0)], None);
    }
    let pkts: Vec<VecPacket> = (0..4).map(|i| pkt(&frame(60, i))).collect();
    let mut st = QueueStats::default();
    assert_eq!(q.enqueue(&d.mem, &pkts, &mut st), 0);
    assert_eq!(st.bad_chains, super::virtq::BAD_CHAIN_BUDGET);
    assert_eq!(st.no_guest_buffers, 4);
    assert!(!q.is_broken());
    assert_eq!(d.reap().len(), 32);
}

#[test]
fn rx_mergeable_bad_chain_mid_frame_returns_the_frames_buffers_empty() {
    let mut d = PackedDriver::new(16, V1 | feature::MRG_RXBUF);
    let mut q = d.queue();
    d.post_rx(256, 1).unwrap(); // id 0
    d.post_descs(&[tx_desc(&d, 1, 256, 0)], None); // read-only: bad for RX
    for _ in 0..4 {
        d.post_rx(256, 1).unwrap();
    }
    let f = frame(600, 3); // 3 buffers
    let mut st = QueueStats::default();
    assert_eq!(q.enqueue(&d.mem, &[pkt(&f)], &mut st), 1);
    assert_eq!(st.bad_chains, 1);
    let used = d.reap();
    assert_eq!(used.len(), 5);
    assert_eq!((used[0].len, used[1].len), (0, 0));
    assert!(used[2..].iter().all(|e| e.len > 0));
}

#[test]
fn the_fuzz_entry_point_survives_simple_inputs() {
    fuzz_packed(&[]);
    fuzz_packed(&[0x80 | 0x40 | 3]);
    let mut data = vec![0xc3u8];
    data.extend((0..600u32).map(|i| (i * 31 % 251) as u8));
    fuzz_packed(&data);
    let mut data = vec![0x5bu8];
    data.extend((0..600u32).map(|i| (i * 17 % 253) as u8));
    fuzz_packed(&data);
}
