//! Behaviour of the whole pipeline over the in-memory I/O.

use std::sync::Arc;

use proptest::prelude::*;

use super::config::{PortMode, Snapshot, SwitchPort};
use super::counters::{sum_port, DropReason, WorkerCounters};
use super::fdb::Fdb;
use super::io::{Burst, PacketIo, PortIndex};
use super::pipeline::WorkerState;
use super::testing::{frame, live_packets, mac, TestIo, TestPacket};
use super::vlan::{L2Header, Vlan, VlanSet};

const BCAST: [u8; 6] = [0xff; 6];

fn vlan(n: u16) -> Vlan {
    Vlan::new(n).unwrap()
}

fn access(index: PortIndex, v: u16) -> SwitchPort {
    SwitchPort {
        index,
        name: format!("p{index}"),
        mode: PortMode::Access { vlan: vlan(v) },
    }
}

fn trunk(index: PortIndex, vlans: &[u16], native: Option<u16>) -> SwitchPort {
    let mut allowed = VlanSet::new();
    for v in vlans {
        allowed.insert(vlan(*v));
    }
    SwitchPort {
        index,
        name: format!("t{index}"),
        mode: PortMode::Trunk {
            allowed,
            native: native.map(vlan),
        },
    }
}

struct Rig {
    snap: Snapshot,
    fdb: Fdb,
    io: TestIo,
    state: WorkerState<TestPacket>,
    counters: Arc<WorkerCounters>,
}

impl Rig {
    fn new(ports: Vec<SwitchPort>) -> Rig {
        let counters = Arc::new(WorkerCounters::new());
        Rig {
            snap: Snapshot::build(ports),
            fdb: Fdb::new(1024),
            io: TestIo::new(),
            state: WorkerState::new(counters.clone()),
            counters,
        }
    }

    /// Receives everything queued on `port` and forwards it.
    fn run(&mut self, port: PortIndex) {
        let mut burst = Burst::new();
        loop {
            self.io.rx_burst(port, 0, &mut burst);
            if burst.is_empty() {
                break;
            }
            self.state
                .forward(&self.snap, &self.fdb, 1, &mut self.io, port, &mut burst);
        }
        self.state.flush(&mut self.io);
    }

    fn send(&mut self, port: PortIndex, f: &[u8]) {
        self.io.inject(port, f);
        self.run(port);
    }

    fn totals(&self, port: PortIndex) -> super::counters::PortTotals {
        sum_port(std::slice::from_ref(&self.counters), port)
    }
}

#[test]
fn unknown_unicast_floods_inside_the_vlan_then_learned_unicast_goes_to_one_port() {
    let mut r = Rig::new(vec![
        access(0, 100),
        access(1, 100),
        access(2, 100),
        access(3, 200),
    ]);
    r.send(0, &frame(mac(2), mac(1), None, 64));
    assert_eq!(r.io.take_sent(1).len(), 1);
    assert_eq!(r.io.take_sent(2).len(), 1);
    assert!(r.io.take_sent(3).is_empty(), "flooded across VLANs");
    assert!(
        r.io.take_sent(0).is_empty(),
        "sent back to the ingress port"
    );
    // The reply is learned-unicast to port 0 only, and learns mac(2) on port 2.
    r.send(2, &frame(mac(1), mac(2), None, 64));
    assert_eq!(r.io.take_sent(0).len(), 1);
    assert!(r.io.take_sent(1).is_empty());
    r.send(0, &frame(mac(2), mac(1), None, 64));
    assert_eq!(r.io.take_sent(2).len(), 1);
    assert!(r.io.take_sent(1).is_empty());
    assert_eq!(r.fdb.lookup(vlan(100), &mac(2)), Some(2));
    assert_eq!(r.fdb.lookup(vlan(200), &mac(2)), None);
}

#[test]
fn broadcast_with_no_other_member_is_a_counted_drop() {
    let mut r = Rig::new(vec![access(0, 100), access(1, 200)]);
    r.send(0, &frame(BCAST, mac(1), None, 64));
    assert!(r.io.take_sent(1).is_empty());
    assert_eq!(r.totals(0).dropped(DropReason::NoDestination), 1);
    assert_eq!(r.totals(0).rx_packets, 1);
}

#[test]
fn access_to_trunk_pushes_the_tag_and_trunk_to_access_pops_it() {
    let mut r = Rig::new(vec![access(0, 100), trunk(1, &[100, 200], None)]);
    let f = frame(BCAST, mac(1), None, 64);
    r.send(0, &f);
    let out = r.io.take_sent(1);
    assert_eq!(out.len(), 1);
    let h = L2Header::parse(&out[0]).unwrap();
    assert_eq!(h.vid(), Some(100));
    assert_eq!(out[0].len(), 68);
    assert_eq!(&out[0][16..], &f[12..], "payload intact after the tag");
    // Tagged 100 with PCP 5 from the trunk reaches the access port untagged.
    let tagged = frame(mac(1), mac(9), Some((5 << 13) | 100), 68);
    r.send(1, &tagged);
    let out = r.io.take_sent(0);
    assert_eq!(out.len(), 1);
    assert_eq!(L2Header::parse(&out[0]).unwrap().tci, None);
    assert_eq!(out[0].len(), 64);
    assert_eq!(&out[0][12..], &tagged[16..]);
    assert_eq!(r.fdb.lookup(vlan(100), &mac(9)), Some(1));
}

#[test]
fn trunk_to_trunk_keeps_pcp_and_native_vlan_is_untagged() {
    let mut r = Rig::new(vec![
        trunk(0, &[100, 7], Some(7)),
        trunk(1, &[100, 7], Some(7)),
    ]);
    r.send(0, &frame(BCAST, mac(1), Some((3 << 13) | 100), 68));
    let out = r.io.take_sent(1);
    let h = L2Header::parse(&out[0]).unwrap();
    assert_eq!((h.vid(), h.tci.unwrap() >> 13), (Some(100), 3));
    // Untagged on the native VLAN stays untagged; a priority tag (VID 0) is native too and
    // leaves untagged.
    r.send(0, &frame(BCAST, mac(1), None, 64));
    assert_eq!(L2Header::parse(&r.io.take_sent(1)[0]).unwrap().tci, None);
    r.send(0, &frame(BCAST, mac(1), Some(6 << 13), 68));
    let out = r.io.take_sent(1);
    assert_eq!(L2Header::parse(&out[0]).unwrap().tci, None);
    assert_eq!(out[0].len(), 64);
}

#[test]
fn ingress_vlan_rules_drop_with_their_reason() {
    let mut r = Rig::new(vec![access(0, 100), trunk(1, &[100], None), access(2, 100)]);
    r.send(0, &frame(BCAST, mac(1), Some(100), 68)); // tagged on access
    r.send(1, &frame(BCAST, mac(2), Some(200), 68)); // VID not carried
    r.send(1, &frame(BCAST, mac(3), None, 64)); // untagged, no native
    r.send(1, &[0u8; 10]); // runt
    assert_eq!(r.totals(0).dropped(DropReason::VlanNotAllowed), 1);
    assert_eq!(r.totals(1).dropped(DropReason::VlanNotAllowed), 1);
    assert_eq!(r.totals(1).dropped(DropReason::UntaggedNoNative), 1);
    assert_eq!(r.totals(1).dropped(DropReason::Malformed), 1);
    assert!(r.io.take_sent(2).is_empty());
    // A priority-tagged frame on an access port is accepted and leaves untagged.
    r.send(0, &frame(BCAST, mac(1), Some(2 << 13), 68));
    let out = r.io.take_sent(2);
    assert_eq!(out.len(), 1);
    assert_eq!(L2Header::parse(&out[0]).unwrap().tci, None);
}

#[test]
fn full_tx_queues_and_failed_copies_are_counted_on_the_egress_port() {
    let mut r = Rig::new(vec![access(0, 100), access(1, 100), access(2, 100)]);
    r.io.tx_room[1] = Some(3);
    for _ in 0..10 {
        r.io.inject(0, &frame(BCAST, mac(1), None, 64));
    }
    r.run(0);
    assert_eq!(r.totals(1).tx_packets, 3);
    assert_eq!(r.totals(1).dropped(DropReason::TxFull), 7);
    assert_eq!(r.totals(2).tx_packets, 10);
    r.io.copy_fails = true;
    r.send(0, &frame(BCAST, mac(1), None, 64));
    // Two destinations: one copy (failed) and the original.
    assert_eq!(r.totals(1).dropped(DropReason::NoBuffer), 1);
    assert_eq!(r.totals(2).tx_packets, 11);
    assert_eq!(r.totals(0).rx_packets, 11);
    assert_eq!(r.totals(0).rx_bytes, 11 * 64);
    assert_eq!(r.totals(2).tx_bytes, 11 * 64);
}

#[test]
fn static_entries_win_over_learning_and_mac_moves_are_followed() {
    let mut r = Rig::new(vec![access(0, 100), access(1, 100), access(2, 100)]);
    r.fdb.add_static(vlan(100), mac(7), 2);
    r.send(0, &frame(BCAST, mac(7), None, 64)); // spoofed source on port 0
    assert_eq!(r.fdb.lookup(vlan(100), &mac(7)), Some(2));
    r.io.take_sent(1);
    r.io.take_sent(2);
    r.send(0, &frame(BCAST, mac(5), None, 64));
    r.send(1, &frame(BCAST, mac(5), None, 64));
    assert_eq!(r.fdb.lookup(vlan(100), &mac(5)), Some(1));
    let f = super::counters::sum_fdb(std::slice::from_ref(&r.counters));
    assert_eq!((f.learned, f.moves), (1, 1));
}

#[test]
fn removed_destination_is_port_down_and_a_hairpin_is_no_destination() {
    let mut r = Rig::new(vec![access(0, 100), access(1, 100)]);
    r.fdb.learn(vlan(100), &mac(9), 5, 1); // learned on a port that is gone
    r.send(0, &frame(mac(9), mac(1), None, 64));
    assert_eq!(r.totals(0).dropped(DropReason::PortDown), 1);
    r.send(0, &frame(mac(1), mac(2), None, 64)); // mac(1) is on port 0 itself
    assert_eq!(r.totals(0).dropped(DropReason::NoDestination), 1);
}

fn arb_port_mode() -> impl Strategy<Value = (Option<u16>, Vec<u16>, Option<u16>)> {
    prop_oneof![
        (1u16..4).prop_map(|v| (Some(v), vec![], None)),
        (
            proptest::collection::vec(1u16..4, 1..3),
            proptest::option::of(1u16..4)
        )
            .prop_map(|(vs, n)| (None, vs, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the ports and frames: a frame only ever leaves on a port that carries its
    /// VLAN, with the right tag for that port; every received frame is sent or counted as
    /// dropped (once per copy); and no packet leaks or is duplicated.
    #[test]
    fn frames_stay_in_their_vlan_and_every_copy_is_accounted_for(
        modes in proptest::collection::vec(arb_port_mode(), 2..6),
        frames in proptest::collection::vec((0usize..6, 0u32..6, 0u32..7, proptest::option::of(0u16..5), 14usize..100), 1..60),
        tx_full in proptest::option::of(0usize..6),
        copy_fails in any::<bool>(),
    ) {
        let live_before = live_packets();
        let ports: Vec<SwitchPort> = modes.iter().enumerate().map(|(i, (a, vs, n))| match a {
            Some(v) => access(i as u16, *v),
            None => trunk(i as u16, vs, *n),
        }).collect();
        let mut r = Rig::new(ports.clone());
        if let Some(p) = tx_full { r.io.tx_room[p] = Some(1); }
        r.io.copy_fails = copy_fails;
        let mut received = 0u64;
        for (port, src, dst, tci, len) in frames {
            let port = port % ports.len();
            let dst = if dst == 6 { BCAST } else { mac(dst) };
            let f = frame(dst, mac(src), tci, len);
            // Where it may go: the VLAN it is classified into on this port.
            let class = L2Header::parse(&f).map(|h| match (&ports[port].mode, h.vid()) {
                (PortMode::Access { vlan }, None | Some(0)) => Some(*vlan),
                (PortMode::Trunk { native, .. }, None | Some(0)) => *native,
                (PortMode::Trunk { allowed, .. }, Some(v)) => Vlan::new(v).filter(|v| allowed.contains(*v)),
                _ => None,
            }).unwrap_or(None);
            r.send(port as u16, &f);
            received += 1;
            for (i, p) in ports.iter().enumerate() {
                for out in r.io.take_sent(i as u16) {
                    prop_assert!(i != port, "sent back out of its ingress port");
                    let v = class.expect("a dropped frame was sent");
                    prop_assert!(p.mode.carries(v), "left on port {i} which does not carry VLAN {}", v.get());
                    let h = L2Header::parse(&out).unwrap();
                    let want_tag = matches!(&p.mode, PortMode::Trunk { native, .. } if *native != Some(v));
                    prop_assert_eq!(h.vid(), want_tag.then_some(v.get()));
                }
            }
        }
        let sent: u64 = (0..ports.len()).map(|i| r.totals(i as u16).tx_packets).sum();
        let drops: u64 = (0..ports.len()).map(|i| r.totals(i as u16).total_drops()).sum();
        let rx: u64 = (0..ports.len()).map(|i| r.totals(i as u16).rx_packets).sum();
        prop_assert_eq!(rx, received);
        // Each frame makes one outcome per destination (or one drop): at least one each.
        prop_assert!(sent + drops >= received);
        drop(r);
        prop_assert_eq!(live_packets(), live_before, "packets leaked or freed twice");
    }
}
