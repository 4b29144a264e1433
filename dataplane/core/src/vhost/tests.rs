//! Split-ring data path against the in-process driver: round trips, mergeable buffers,
//! indirect tables, notifications, index wrap-around and hostile rings.

use proptest::prelude::*;

use super::memory::GuestMemory;
use super::testing::{
    drain_tx, fuzz_rings, Driver, RawDesc, Rng, TxLayout, UsedElem, VecPacket, VecPool,
    AVAIL_F_NO_INTERRUPT, F_INDIRECT, F_NEXT, F_WRITE, GPA_BASE, UVA_BASE,
};
use super::virtq::{feature, QueueStats, RingAddrs, RingError, SplitQueue};
use crate::switch::io::{Burst, Packet};
use crate::switch::testing::{frame, mac, TestPacket};

const V1: u64 = feature::VERSION_1;
const IND: u64 = feature::INDIRECT_DESC;
const MRG: u64 = feature::MRG_RXBUF;
const EVT: u64 = feature::EVENT_IDX;

fn eth(len: usize) -> Vec<u8> {
    frame(mac(1), mac(2), None, len)
}

fn pkts(lens: &[usize]) -> Vec<TestPacket> {
    lens.iter().map(|&l| TestPacket::new(&eth(l))).collect()
}

#[test]
fn tx_round_trip_every_size_and_layout() {
    for features in [V1 | IND, IND] {
        for layout in [
            TxLayout::Joined,
            TxLayout::SplitHeader,
            TxLayout::Pieces(3),
            TxLayout::Indirect(4),
        ] {
            let mut d = Driver::new(64, features);
            let mut q = d.queue();
            let mut pool = VecPool::new(9216, 64);
            let mut stats = QueueStats::default();
            let sizes = [60, 64, 1518, 9000];
            let heads: Vec<u16> = sizes
                .iter()
                .map(|&l| d.post_tx(&eth(l), layout).unwrap())
                .collect();
            let got = drain_tx(&mut q, &d, &mut pool, &mut stats);
            assert_eq!(got.len(), 4, "{layout:?}");
            for (g, &l) in got.iter().zip(&sizes) {
                assert_eq!(g, &eth(l), "{layout:?} {l}");
            }
            assert_eq!(stats.packets, 4);
            assert_eq!(stats.bytes, sizes.iter().sum::<usize>() as u64);
            let used = d.reap();
            let want: Vec<UsedElem> = heads
                .iter()
                .map(|&h| UsedElem {
                    id: h.into(),
                    len: 0,
                })
                .collect();
            assert_eq!(used, want);
            assert_eq!(d.free_descs(), 64);
        }
    }
}

#[test]
fn rx_round_trip_every_size_without_mergeable_buffers() {
    for features in [V1, 0, V1 | IND] {
        let mut d = Driver::new(64, features);
        let mut q = d.queue();
        let mut stats = QueueStats::default();
        let sizes = [60, 64, 1518, 9000];
        for i in 0..4 {
            if features & IND != 0 {
                d.post_rx_indirect(9100, 1 + i).unwrap();
            } else {
                d.post_rx(9100, 1 + i).unwrap();
            }
        }
        let p = pkts(&sizes);
        assert_eq!(q.enqueue(&d.mem, &p, &mut stats), 4);
        let got = d.recv();
        assert_eq!(got.len(), 4);
        for (g, &l) in got.iter().zip(&sizes) {
            assert_eq!(g.frame, eth(l));
            assert_eq!(g.header.len(), d.header_len());
            if d.header_len() == 12 {
                assert_eq!(&g.header[..10], &[0u8; 10]);
                assert_eq!(g.num_buffers, 1);
            } else {
                assert_eq!(g.header, vec![0u8; 10]);
            }
        }
        assert_eq!(stats.packets, 4);
    }
}

#[test]
fn mergeable_frames_span_several_buffers_with_num_buffers() {
    let mut d = Driver::new(64, V1 | MRG);
    let mut q = d.queue();
    let mut stats = QueueStats::default();
    for _ in 0..16 {
        d.post_rx(1000, 1).unwrap();
    }
    let p = pkts(&[60, 9000, 1518, 988, 989]);
    assert_eq!(q.enqueue(&d.mem, &p, &mut stats), 5);
    let got = d.recv();
    let nbs: Vec<u16> = got.iter().map(|f| f.num_buffers).collect();
    // 9012 bytes in 1000-byte buffers: 10; 1530: 2; 988+12 = 1000: 1; 1001: 2.
    assert_eq!(nbs, vec![1, 10, 2, 1, 2]);
    for (g, &l) in got.iter().zip(&[60, 9000, 1518, 988, 989]) {
        assert_eq!(g.frame, eth(l));
        assert_eq!(&g.header[..10], &[0u8; 10]);
    }
    // A buffer cut in several descriptors, the header itself split too.
    d.post_rx(5, 1).unwrap();
    d.post_rx(3000, 7).unwrap();
    let p = pkts(&[2000]);
    assert_eq!(q.enqueue(&d.mem, &p, &mut stats), 1);
    let got = d.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].num_buffers, 2);
    assert_eq!(got[0].frame, eth(2000));
}

#[test]
fn mergeable_out_of_buffers_gives_back_what_the_frame_took() {
    let mut d = Driver::new(16, V1 | MRG);
    let mut q = d.queue();
    let mut stats = QueueStats::default();
    for _ in 0..3 {
        d.post_rx(1000, 1).unwrap();
    }
    let p = pkts(&[100, 9000, 60]);
    assert_eq!(q.enqueue(&d.mem, &p, &mut stats), 1);
    assert_eq!(stats.no_guest_buffers, 2);
    assert_eq!(d.recv().len(), 1);
    assert_eq!(q.last_avail_idx(), 1);
    for _ in 0..9 {
        d.post_rx(1000, 1).unwrap();
    }
    assert_eq!(q.enqueue(&d.mem, &p[1..], &mut stats), 2);
    let got = d.recv();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].frame, eth(9000));
    assert_eq!(got[1].frame, eth(60));
}

#[test]
fn non_mergeable_frame_larger_than_the_chain_is_dropped_and_the_chain_kept() {
    let mut d = Driver::new(16, V1);
    let mut q = d.queue();
    let mut stats = QueueStats::default();
    d.post_rx(1530, 2).unwrap();
    let p = pkts(&[9000, 1518]);
    assert_eq!(q.enqueue(&d.mem, &p, &mut stats), 2);
    assert_eq!(stats.oversize, 1);
    assert_eq!(stats.packets, 1);
    let got = d.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].frame, eth(1518));
    // No buffer at all: stop, count the rest.
    assert_eq!(q.enqueue(&d.mem, &p, &mut stats), 0);
    assert_eq!(stats.no_guest_buffers, 2);
}

#[test]
fn tx_stops_when_the_pool_is_empty_and_resumes_later() {
    let mut d = Driver::new(16, V1);
    let mut q = d.queue();
    let mut stats = QueueStats::default();
    let mut pool = VecPool::new(2048, 2);
    for l in [60, 61, 62] {
        d.post_tx(&eth(l), TxLayout::Joined).unwrap();
    }
    let mut b = Burst::new();
    assert_eq!(q.dequeue(&d.mem, &mut pool, &mut b, &mut stats), 2);
    assert_eq!(stats.no_mbufs, 1);
    assert_eq!(d.reap().len(), 2);
    let taken: Vec<VecPacket> = b.drain().collect();
    pool.give_back(taken);
    assert_eq!(q.dequeue(&d.mem, &mut pool, &mut b, &mut stats), 1);
    assert_eq!(b.as_slice()[0].data(), &eth(62)[..]);
}

#[test]
fn tx_frame_longer_than_the_pool_buffers_is_returned_and_counted() {
    let mut d = Driver::new(16, V1);
    let mut q = d.queue();
    let mut stats = QueueStats::default();
    let mut pool = VecPool::new(1518, 8);
    let big = d.post_tx(&eth(1519), TxLayout::Pieces(2)).unwrap();
    d.post_tx(&eth(1518), TxLayout::Joined).unwrap();
    let got = drain_tx(&mut q, &d, &mut pool, &mut stats);
    assert_eq!(got, vec![eth(1518)]);
    assert_eq!(stats.oversize, 1);
    assert_eq!(
        d.reap()[0],
        UsedElem {
            id: big.into(),
            len: 0
        }
    );
}

#[test]
fn indices_wrap_around_from_a_base_near_65535() {
    for features in [V1, V1 | MRG, V1 | EVT | IND] {
        let mut d = Driver::with(8, features, 65530, 16384);
        let mut q = d.queue();
        assert_eq!(q.last_avail_idx(), 65530);
        let mut stats = QueueStats::default();
        let mut pool = VecPool::new(9216, 64);
        for round in 0..40usize {
            let l = 60 + round * 37;
            d.post_tx(&eth(l), TxLayout::SplitHeader).unwrap();
            if features & IND != 0 {
                d.post_tx(&eth(l + 1), TxLayout::Indirect(2)).unwrap();
            }
            let got = drain_tx(&mut q, &d, &mut pool, &mut stats);
            assert_eq!(got[0], eth(l));
            if features & IND != 0 {
                assert_eq!(got[1], eth(l + 1));
            }
            d.reap();
            d.post_rx(2048, 2).unwrap();
            let p = pkts(&[l]);
            assert_eq!(q.enqueue(&d.mem, &p, &mut stats), 1);
            let f = d.recv();
            assert_eq!(f[0].frame, eth(l));
        }
        assert!(!q.is_broken());
        assert_eq!(stats.bad_chains, 0);
        assert_eq!(d.used_idx(), q.used_idx());
        assert!(q.last_avail_idx() < 200, "wrapped past 65535");
    }
}

#[test]
fn event_idx_interrupts_follow_used_event() {
    let mut d = Driver::new(16, V1 | EVT);
    let mut q = d.queue();
    let mut stats = QueueStats::default();
    assert!(!q.needs_interrupt(), "nothing used yet");
    for _ in 0..8 {
        d.post_rx(2048, 1).unwrap();
    }
    // Driver wants an interrupt once entry 0 is used.
    d.set_used_event(0);
    assert_eq!(q.enqueue(&d.mem, &pkts(&[60]), &mut stats), 1);
    assert!(q.needs_interrupt());
    assert!(!q.needs_interrupt(), "no new entries");
    // Driver asks for the interrupt after entry 3 (used idx going past 3).
    d.set_used_event(3);
    assert_eq!(q.enqueue(&d.mem, &pkts(&[60]), &mut stats), 1); // used idx 2
    assert!(!q.needs_interrupt());
    assert_eq!(q.enqueue(&d.mem, &pkts(&[60, 60]), &mut stats), 2); // used idx 4
    assert!(q.needs_interrupt());
    // used_event behind: already signalled past it, no interrupt.
    assert_eq!(q.enqueue(&d.mem, &pkts(&[60]), &mut stats), 1);
    assert!(!q.needs_interrupt());
}

#[test]
fn no_interrupt_flag_silences_interrupts() {
    let mut d = Driver::new(16, V1);
    let mut q = d.queue();
    let mut stats = QueueStats::default();
    for _ in 0..4 {
        d.post_rx(2048, 1).unwrap();
    }
    d.set_avail_flags(AVAIL_F_NO_INTERRUPT);
    assert_eq!(q.enqueue(&d.mem, &pkts(&[60]), &mut stats), 1);
    assert!(!q.needs_interrupt());
    d.set_avail_flags(0);
    assert_eq!(q.enqueue(&d.mem, &pkts(&[60]), &mut stats), 1);
    assert!(q.needs_interrupt());
    assert!(!q.needs_interrupt());
}

#[test]
fn suppressed_notifications_set_no_notify_or_keep_avail_event_ahead() {
    let d = Driver::new(16, V1);
    let mut q = d.queue();
    let mut stats = QueueStats::default();
    q.suppress_notifications();
    let mut pool = VecPool::new(2048, 8);
    let mut b = Burst::new();
    q.dequeue(&d.mem, &mut pool, &mut b, &mut stats);
    assert_eq!(d.used_flags(), 1);

    let mut d = Driver::with(16, V1 | EVT, 100, 4096);
    let mut q = d.queue();
    q.suppress_notifications();
    q.dequeue(&d.mem, &mut pool, &mut b, &mut stats);
    assert_eq!(d.used_flags(), 0);
    assert_eq!(d.avail_event(), 100 + 0x8000);
    d.post_tx(&eth(60), TxLayout::Joined).unwrap();
    q.dequeue(&d.mem, &mut pool, &mut b, &mut stats);
    q.dequeue(&d.mem, &mut pool, &mut b, &mut stats);
    assert_eq!(d.avail_event(), 101 + 0x8000);
}

#[test]
fn queue_refuses_bad_ring_setups() {
    let d = Driver::new(16, V1);
    let a = d.addrs();
    let new = |a: RingAddrs, f: u64| SplitQueue::new(&d.mem, &a, 0, f).map(|_| ()).unwrap_err();
    for size in [0, 3, 100] {
        assert_eq!(
            new(RingAddrs { size, ..a }, V1),
            RingError::BadSize { size }
        );
    }
    assert!(matches!(
        new(
            RingAddrs {
                desc_uva: a.desc_uva + 8,
                ..a
            },
            V1
        ),
        RingError::Misaligned {
            ring: "descriptor",
            ..
        }
    ));
    assert!(matches!(
        new(
            RingAddrs {
                used_uva: a.used_uva + 2,
                ..a
            },
            V1
        ),
        RingError::Misaligned { ring: "used", .. }
    ));
    assert!(matches!(
        new(
            RingAddrs {
                avail_uva: GPA_BASE,
                ..a
            },
            V1
        ),
        RingError::NotMapped {
            ring: "available",
            ..
        }
    ));
    assert!(matches!(
        new(
            RingAddrs {
                used_uva: UVA_BASE + (d.end_gpa() - GPA_BASE) - 8,
                ..a
            },
            V1
        ),
        RingError::NotMapped { ring: "used", .. }
    ));
    assert_eq!(new(a, V1 | feature::RING_PACKED), RingError::PackedRing);
    let e = SplitQueue::new(&d.mem, &RingAddrs { size: 32768, ..a }, 0, V1).unwrap_err();
    assert!(matches!(e, RingError::NotMapped { .. }));
}

#[test]
fn a_queue_handed_another_memory_table_does_nothing() {
    let mut d = Driver::new(16, V1);
    let mut q = d.queue();
    let other = Driver::new(16, V1);
    assert_ne!(d.mem.id(), other.mem.id());
    d.post_tx(&eth(60), TxLayout::Joined).unwrap();
    let mut stats = QueueStats::default();
    let mut pool = VecPool::new(2048, 8);
    let mut b = Burst::new();
    assert_eq!(q.dequeue(&other.mem, &mut pool, &mut b, &mut stats), 0);
    assert_eq!(q.last_avail_idx(), 0);
    assert_eq!(q.dequeue(&d.mem, &mut pool, &mut b, &mut stats), 1);
}

/// Sets up a hostile TX chain with `bad`, then a good frame; the good one must arrive and
/// the bad one come back with length 0, counted.
fn hostile_tx(features: u64, bad: impl FnOnce(&mut Driver)) -> (Driver, QueueStats, Vec<UsedElem>) {
    let mut d = Driver::new(16, features);
    let mut q = d.queue();
    bad(&mut d);
    d.post_tx(&eth(64), TxLayout::SplitHeader).unwrap();
    let mut stats = QueueStats::default();
    let mut pool = VecPool::new(9216, 8);
    let got = drain_tx(&mut q, &d, &mut pool, &mut stats);
    assert_eq!(got, vec![eth(64)], "the good chain after the bad one");
    assert!(!q.is_broken());
    let used = d.reap();
    (d, stats, used)
}

/// Claims descriptor `i`, writes `desc` into it and makes it available.
fn bad_head(d: &mut Driver, i: u16, desc: RawDesc) {
    assert!(d.claim(i));
    d.set_desc(i, desc);
    d.push_avail(i);
}

fn assert_bad_returned(stats: QueueStats, used: &[UsedElem], head: u16) {
    assert_eq!(stats.bad_chains, 1, "{stats:?}");
    assert_eq!(used.len(), 2);
    assert_eq!(
        used[0],
        UsedElem {
            id: head.into(),
            len: 0
        }
    );
}

#[test]
fn hostile_tx_descriptor_loop() {
    let (_, s, u) = hostile_tx(V1, |d| {
        assert!(d.claim(14));
        let a = d.slot_gpa(15);
        d.set_desc(
            14,
            RawDesc {
                addr: a,
                len: 20,
                flags: F_NEXT,
                next: 15,
            },
        );
        d.set_desc(
            15,
            RawDesc {
                addr: a,
                len: 20,
                flags: F_NEXT,
                next: 14,
            },
        );
        assert!(d.claim(15));
        d.push_avail(15);
    });
    assert_bad_returned(s, &u, 15);
}

#[test]
fn hostile_tx_next_out_of_range() {
    let (_, s, u) = hostile_tx(V1, |d| {
        let a = d.slot_gpa(15);
        bad_head(
            d,
            15,
            RawDesc {
                addr: a,
                len: 20,
                flags: F_NEXT,
                next: 16,
            },
        );
    });
    assert_bad_returned(s, &u, 15);
}

#[test]
fn hostile_tx_address_outside_memory() {
    for addr in [0, GPA_BASE - 1, 0x1_0000_0000_0000] {
        let (_, s, u) = hostile_tx(V1, |d| {
            bad_head(
                d,
                15,
                RawDesc {
                    addr,
                    len: 100,
                    flags: 0,
                    next: 0,
                },
            )
        });
        assert_bad_returned(s, &u, 15);
    }
    let (_, s, u) = hostile_tx(V1, |d| {
        let end = d.end_gpa();
        bad_head(
            d,
            15,
            RawDesc {
                addr: end - 50,
                len: 100,
                flags: 0,
                next: 0,
            },
        );
    });
    assert_bad_returned(s, &u, 15);
}

#[test]
fn hostile_tx_huge_length_and_overflowing_range() {
    let (_, s, u) = hostile_tx(V1, |d| {
        let a = d.slot_gpa(15);
        bad_head(
            d,
            15,
            RawDesc {
                addr: a,
                len: u32::MAX,
                flags: 0,
                next: 0,
            },
        );
    });
    assert_bad_returned(s, &u, 15);
    let (_, s, u) = hostile_tx(V1, |d| {
        bad_head(
            d,
            15,
            RawDesc {
                addr: u64::MAX - 10,
                len: 100,
                flags: 0,
                next: 0,
            },
        );
    });
    assert_bad_returned(s, &u, 15);
}

#[test]
fn hostile_tx_indirect_rules() {
    // Indirect inside indirect.
    let (_, s, u) = hostile_tx(V1 | IND, |d| {
        let t = d.indirect_gpa(15);
        d.write_desc_at(
            t,
            RawDesc {
                addr: d.indirect_gpa(14),
                len: 32,
                flags: F_INDIRECT,
                next: 0,
            },
        );
        bad_head(
            d,
            15,
            RawDesc {
                addr: t,
                len: 16,
                flags: F_INDIRECT,
                next: 0,
            },
        );
    });
    assert_bad_returned(s, &u, 15);
    // Table length not a multiple of 16, or zero.
    for len in [24, 0, 15] {
        let (_, s, u) = hostile_tx(V1 | IND, |d| {
            let t = d.indirect_gpa(15);
            d.write_desc_at(
                t,
                RawDesc {
                    addr: d.slot_gpa(15),
                    len: 80,
                    flags: 0,
                    next: 0,
                },
            );
            bad_head(
                d,
                15,
                RawDesc {
                    addr: t,
                    len,
                    flags: F_INDIRECT,
                    next: 0,
                },
            );
        });
        assert_bad_returned(s, &u, 15);
    }
    // Table outside memory.
    let (_, s, u) = hostile_tx(V1 | IND, |d| {
        let end = d.end_gpa();
        bad_head(
            d,
            15,
            RawDesc {
                addr: end - 16,
                len: 32,
                flags: F_INDIRECT,
                next: 0,
            },
        );
    });
    assert_bad_returned(s, &u, 15);
    // Indirect without the feature.
    let (_, s, u) = hostile_tx(V1, |d| {
        let t = d.indirect_gpa(15);
        d.write_desc_at(
            t,
            RawDesc {
                addr: d.slot_gpa(15),
                len: 80,
                flags: 0,
                next: 0,
            },
        );
        bad_head(
            d,
            15,
            RawDesc {
                addr: t,
                len: 16,
                flags: F_INDIRECT,
                next: 0,
            },
        );
    });
    assert_bad_returned(s, &u, 15);
    // A loop inside the table.
    let (_, s, u) = hostile_tx(V1 | IND, |d| {
        let t = d.indirect_gpa(15);
        let a = d.slot_gpa(15);
        d.write_desc_at(
            t,
            RawDesc {
                addr: a,
                len: 80,
                flags: F_NEXT,
                next: 1,
            },
        );
        d.write_desc_at(
            t + 16,
            RawDesc {
                addr: a,
                len: 80,
                flags: F_NEXT,
                next: 0,
            },
        );
        bad_head(
            d,
            15,
            RawDesc {
                addr: t,
                len: 32,
                flags: F_INDIRECT,
                next: 0,
            },
        );
    });
    assert_bad_returned(s, &u, 15);
    // Next beyond the table.
    let (_, s, u) = hostile_tx(V1 | IND, |d| {
        let t = d.indirect_gpa(15);
        let a = d.slot_gpa(15);
        d.write_desc_at(
            t,
            RawDesc {
                addr: a,
                len: 80,
                flags: F_NEXT,
                next: 2,
            },
        );
        bad_head(
            d,
            15,
            RawDesc {
                addr: t,
                len: 32,
                flags: F_INDIRECT,
                next: 0,
            },
        );
    });
    assert_bad_returned(s, &u, 15);
}

#[test]
fn hostile_tx_write_only_descriptor() {
    let (_, s, u) = hostile_tx(V1, |d| {
        let a = d.slot_gpa(15);
        bad_head(
            d,
            15,
            RawDesc {
                addr: a,
                len: 100,
                flags: F_WRITE,
                next: 0,
            },
        );
    });
    assert_bad_returned(s, &u, 15);
}

#[test]
fn hostile_tx_chain_shorter_than_the_header() {
    let (_, s, u) = hostile_tx(V1, |d| {
        let a = d.slot_gpa(15);
        bad_head(
            d,
            15,
            RawDesc {
                addr: a,
                len: 12,
                flags: 0,
                next: 0,
            },
        );
    });
    assert_bad_returned(s, &u, 15);
}

#[test]
fn hostile_head_out_of_range_is_consumed_and_counted() {
    let (_, s, u) = hostile_tx(V1, |d| d.push_avail(16));
    assert_eq!(s.bad_chains, 1);
    assert_eq!(u.len(), 1, "no used entry can name an invalid head");

    let mut d = Driver::new(16, V1);
    let mut q = d.queue();
    let mut stats = QueueStats::default();
    d.push_avail(0xffff);
    d.post_rx(2048, 1).unwrap();
    assert_eq!(q.enqueue(&d.mem, &pkts(&[60]), &mut stats), 1);
    assert_eq!(stats.bad_chains, 1);
    assert_eq!(d.recv()[0].frame, eth(60));
}

#[test]
fn hostile_rx_read_only_descriptor_and_bad_chains() {
    for features in [V1, V1 | MRG] {
        let mut d = Driver::new(16, features);
        let mut q = d.queue();
        let mut stats = QueueStats::default();
        let a = d.slot_gpa(15);
        bad_head(
            &mut d,
            15,
            RawDesc {
                addr: a,
                len: 2048,
                flags: 0,
                next: 0,
            },
        );
        let end = d.end_gpa();
        bad_head(
            &mut d,
            14,
            RawDesc {
                addr: end,
                len: 2048,
                flags: F_WRITE,
                next: 0,
            },
        );
        bad_head(
            &mut d,
            13,
            RawDesc {
                addr: a,
                len: 4,
                flags: F_WRITE | F_NEXT,
                next: 13,
            },
        );
        d.post_rx(2048, 2).unwrap();
        assert_eq!(q.enqueue(&d.mem, &pkts(&[100]), &mut stats), 1);
        assert_eq!(stats.bad_chains, 3);
        let used = d.reap();
        assert_eq!(used.len(), 4);
        for (u, h) in used.iter().zip([15, 14, 13]) {
            assert_eq!(*u, UsedElem { id: h, len: 0 });
        }
        assert_eq!(used[3].len, 112);
    }
}

#[test]
fn hostile_avail_index_jump_breaks_the_queue() {
    let mut d = Driver::new(16, V1);
    let mut q = d.queue();
    let mut stats = QueueStats::default();
    d.post_tx(&eth(60), TxLayout::Joined).unwrap();
    d.set_avail_idx(17);
    let mut pool = VecPool::new(2048, 8);
    let mut b = Burst::new();
    assert_eq!(q.dequeue(&d.mem, &mut pool, &mut b, &mut stats), 0);
    assert!(q.is_broken());
    d.set_avail_idx(1);
    assert_eq!(q.dequeue(&d.mem, &mut pool, &mut b, &mut stats), 0);
    assert_eq!(q.enqueue(&d.mem, &pkts(&[60]), &mut stats), 0);
    assert_eq!(d.used_idx(), 0);
}

/// Reads the used ring the way the fuzz check does and returns (moved, all ids < size).
fn used_ok(d: &Driver, before: u16) -> (u16, bool) {
    let after = d.used_idx();
    let mut ok = true;
    let mut i = before;
    while i != after {
        ok &= d.used_elem(i).id < u32::from(d.size());
        i = i.wrapping_add(1);
    }
    (after.wrapping_sub(before), ok)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_descriptor_tables_and_avail_rings_never_break_the_rules(
        descs in proptest::collection::vec((any::<u64>(), any::<u32>(), 0u16..8, any::<u16>(), any::<bool>()), 16),
        ring in proptest::collection::vec(any::<u16>(), 16),
        avail_ahead in 0u16..20,
        mrg in any::<bool>(),
    ) {
        let features = V1 | IND | if mrg { MRG } else { 0 };
        let mut d = Driver::new(16, features);
        for (i, &(addr, len, flags, next, near)) in descs.iter().enumerate() {
            let (addr, len) = if near {
                (d.slot_gpa((addr % 16) as u16) + (addr >> 60), len % 20000)
            } else {
                (addr, len)
            };
            d.set_desc(i as u16, RawDesc { addr, len, flags, next: next % 20 });
        }
        for &h in &ring {
            d.push_avail(h % 18);
        }
        d.set_avail_idx(avail_ahead);
        let mut q = d.queue();
        let mut stats = QueueStats::default();
        let mut pool = VecPool::new(9216, 64);
        let mut b = Burst::new();
        q.dequeue(&d.mem, &mut pool, &mut b, &mut stats);
        let (moved, ok) = used_ok(&d, 0);
        prop_assert!(moved <= 16 && ok);
        let before = d.used_idx();
        let p = pkts(&[60, 1518, 9000]);
        q.enqueue(&d.mem, &p, &mut stats);
        let (moved, ok) = used_ok(&d, before);
        prop_assert!(moved <= 16 && ok);
        prop_assert_eq!(avail_ahead > 16, q.is_broken());
    }
}

#[test]
fn fuzz_rings_survives_20k_pseudo_random_inputs_quickly() {
    let t = std::time::Instant::now();
    let mut rng = Rng::new(0x5eed);
    let mut buf = vec![0u8; 8192];
    for i in 0..20_000usize {
        let len = 1 + (rng.next_u64() as usize % buf.len());
        rng.fill(&mut buf[..len]);
        if i % 2 == 0 {
            buf[0] |= 0x80; // tame half of them
        }
        fuzz_rings(&buf[..len]);
    }
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn guest_memory_from_raw_serves_queues_too() {
    let mut buf = vec![0u64; 8192];
    let spec = super::memory::RegionSpec {
        guest_phys_addr: 0,
        size: 65536,
        user_addr: 0x1000_0000,
        mmap_offset: 0,
    };
    // SAFETY: `buf` outlives `mem` and the queue.
    let mem = unsafe { GuestMemory::from_raw(&[(spec, buf.as_mut_ptr().cast())]) };
    let a = RingAddrs {
        size: 8,
        desc_uva: 0x1000_0000,
        avail_uva: 0x1000_0100,
        used_uva: 0x1000_0200,
    };
    let q = SplitQueue::new(&mem, &a, 0, V1).unwrap();
    assert_eq!(q.size(), 8);
    assert_eq!(q.header_len(), 12);
}

#[test]
fn chains_longer_than_max_chain_are_bad() {
    use super::virtq::MAX_CHAIN;
    let mut d = Driver::with(1024, V1, 0, 4096);
    let mut q = d.queue();
    let mut stats = QueueStats::default();
    let mut pool = VecPool::new(9216, 8);
    let f = eth(1000);
    // Header plus MAX_CHAIN - 1 pieces: exactly MAX_CHAIN descriptors.
    d.post_tx(&f, TxLayout::Pieces(usize::from(MAX_CHAIN) - 1))
        .unwrap();
    d.post_tx(&f, TxLayout::Pieces(usize::from(MAX_CHAIN)))
        .unwrap();
    d.post_tx(&f, TxLayout::Joined).unwrap();
    let got = drain_tx(&mut q, &d, &mut pool, &mut stats);
    assert_eq!(got, vec![f.clone(), f]);
    assert_eq!(stats.bad_chains, 1);
}

#[test]
fn mergeable_frame_meeting_a_bad_chain_starts_again_after_it() {
    let mut d = Driver::new(16, V1 | MRG);
    let mut q = d.queue();
    let mut stats = QueueStats::default();
    let g1 = d.post_rx(1000, 1).unwrap();
    let a = d.slot_gpa(15);
    bad_head(
        &mut d,
        15,
        RawDesc {
            addr: a,
            len: 1000,
            flags: 0,
            next: 0,
        },
    );
    let g2 = d.post_rx(1000, 1).unwrap();
    let g3 = d.post_rx(1000, 1).unwrap();
    assert_eq!(q.enqueue(&d.mem, &pkts(&[1518]), &mut stats), 1);
    assert_eq!(stats.bad_chains, 1);
    let used = d.reap();
    let want = [(g1, 0), (15, 0), (g2, 1000), (g3, 530)];
    assert_eq!(used.len(), 4);
    for (u, (id, len)) in used.iter().zip(want) {
        assert_eq!(*u, UsedElem { id: id.into(), len });
    }
    let mut bytes = d.chain_bytes(used[2]);
    bytes.extend(d.chain_bytes(used[3]));
    assert_eq!(&bytes[10..12], &2u16.to_le_bytes());
    assert_eq!(&bytes[12..], &eth(1518)[..]);
}

#[test]
fn a_ring_full_of_bad_chains_costs_one_budget_per_enqueue() {
    use super::virtq::BAD_CHAIN_BUDGET;
    for features in [V1, V1 | MRG] {
        let mut d = Driver::new(64, features);
        let mut q = d.queue();
        let mut stats = QueueStats::default();
        let a = d.slot_gpa(63);
        for i in 0..40 {
            bad_head(
                &mut d,
                63 - i,
                RawDesc {
                    addr: a,
                    len: 2048,
                    flags: 0,
                    next: 0,
                },
            );
        }
        d.post_rx(2048, 1).unwrap();
        assert_eq!(q.enqueue(&d.mem, &pkts(&[60]), &mut stats), 0);
        assert_eq!(stats.bad_chains, BAD_CHAIN_BUDGET);
        assert_eq!(stats.no_guest_buffers, 1);
        assert_eq!(q.enqueue(&d.mem, &pkts(&[60]), &mut stats), 1);
        assert_eq!(stats.bad_chains, 40);
        let used = d.reap();
        assert_eq!(used.len(), 41);
        assert_eq!(used[40].len, 72);
    }
}

/// A frame carrying sequence number `n` in its payload.
fn seq_frame(n: u32) -> Vec<u8> {
    let mut f = eth(60 + (n as usize * 7) % 1400);
    f[14..18].copy_from_slice(&n.to_le_bytes());
    f
}

#[test]
fn a_driver_thread_and_a_device_thread_move_frames_concurrently() {
    const N: u32 = 4_000;
    for features in [V1 | EVT, V1 | MRG | IND] {
        // Guest TX: the test thread drives, a device thread dequeues.
        let mut d = Driver::new(64, features);
        let mut q = d.queue();
        let mem = d.mem.clone();
        let device = std::thread::spawn(move || {
            let mut pool = VecPool::new(2048, 64);
            let mut stats = QueueStats::default();
            let mut b = Burst::new();
            let mut next = 0u32;
            while next < N {
                q.dequeue(&mem, &mut pool, &mut b, &mut stats);
                for p in b.drain() {
                    assert_eq!(p.data(), &seq_frame(next)[..]);
                    next += 1;
                    pool.give_back([p]);
                }
                assert!(!q.is_broken());
                std::thread::yield_now();
            }
            stats
        });
        let mut sent = 0u32;
        while sent < N {
            d.reap();
            let layout = if features & IND != 0 {
                TxLayout::Indirect(2)
            } else {
                TxLayout::SplitHeader
            };
            while sent < N && d.post_tx(&seq_frame(sent), layout).is_some() {
                sent += 1;
            }
            std::thread::yield_now();
        }
        let stats = device.join().unwrap();
        assert_eq!(stats.packets, u64::from(N));
        assert_eq!(stats.bad_chains, 0);

        // Guest RX: a device thread enqueues, the test thread receives.
        let mut d = Driver::new(64, features);
        let mut q = d.queue();
        let mem = d.mem.clone();
        let device = std::thread::spawn(move || {
            let mut stats = QueueStats::default();
            let mut next = 0u32;
            while next < N {
                let burst: Vec<TestPacket> = (next..(next + 8).min(N))
                    .map(|n| TestPacket::new(&seq_frame(n)))
                    .collect();
                next += q.enqueue(&mem, &burst, &mut stats) as u32;
                std::thread::yield_now();
            }
            stats
        });
        let mut got = 0u32;
        while got < N {
            while d.post_rx(2048, 1).is_some() {}
            for f in d.recv() {
                assert_eq!(f.frame, seq_frame(got));
                got += 1;
            }
            std::thread::yield_now();
        }
        let stats = device.join().unwrap();
        assert_eq!(stats.packets, u64::from(N));
    }
}

#[test]
fn memory_is_shared_and_queues_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<GuestMemory>();
    send::<SplitQueue>();
}
