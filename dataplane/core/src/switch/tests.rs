//! Behaviour of the whole pipeline over the in-memory I/O.

use std::sync::Arc;

use proptest::prelude::*;

use super::config::{PortMode, Snapshot, SwitchPort, DEFAULT_MTU};
use super::counters::{sum_port, DropReason, WorkerCounters};
use super::fdb::{Fdb, PROBE};
use super::io::{Burst, PacketIo, PortIndex, BURST, MAX_PORTS};
use super::pipeline::WorkerState;
use super::testing::{frame, live_packets, mac, TestIo, TestPacket};
use super::vlan::{L2Header, Vlan, VlanSet};

const BCAST: [u8; 6] = [0xff; 6];

fn vlan(n: u16) -> Vlan {
    Vlan::new(n).unwrap()
}

fn access(index: PortIndex, v: u16) -> SwitchPort {
    SwitchPort {
        mtu: DEFAULT_MTU,
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
        mtu: DEFAULT_MTU,
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
        Rig::with_fdb(ports, Fdb::new(1024))
    }

    fn with_fdb(ports: Vec<SwitchPort>, fdb: Fdb) -> Rig {
        let counters = Arc::new(WorkerCounters::new());
        Rig {
            snap: Snapshot::build(ports),
            fdb,
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

    fn fdb_totals(&self) -> super::counters::FdbTotals {
        super::counters::sum_fdb(std::slice::from_ref(&self.counters))
    }

    /// Every outcome counted so far: frames sent plus drops, over all ports.
    fn outcomes(&self) -> u64 {
        (0..MAX_PORTS as PortIndex)
            .map(|i| {
                let t = self.totals(i);
                t.tx_packets + t.total_drops()
            })
            .sum()
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

#[test]
fn learned_unicast_to_trunk_keeps_pcp_and_rewrites_nothing_else() {
    let mut r = Rig::new(vec![trunk(0, &[10, 20], None), trunk(1, &[10, 20], None)]);
    r.send(1, &frame(BCAST, mac(2), Some(20), 68));
    r.io.take_sent(0);
    let f = frame(mac(2), mac(1), Some((7 << 13) | (1 << 12) | 20), 100);
    r.send(0, &f);
    let out = r.io.take_sent(1);
    assert_eq!(out, vec![f], "PCP, DEI, VID and payload unchanged");
}

#[test]
fn a_mac_in_two_vlans_is_two_entries() {
    let mut r = Rig::new(vec![
        trunk(0, &[10, 20], None),
        access(1, 10),
        access(2, 20),
    ]);
    r.send(1, &frame(BCAST, mac(5), None, 64));
    r.send(2, &frame(BCAST, mac(5), None, 64));
    r.io.take_sent(0);
    r.send(0, &frame(mac(5), mac(1), Some(10), 68));
    assert_eq!(r.io.take_sent(1).len(), 1);
    assert!(r.io.take_sent(2).is_empty());
    r.send(0, &frame(mac(5), mac(1), Some(20), 68));
    assert_eq!(r.io.take_sent(2).len(), 1);
    assert!(r.io.take_sent(1).is_empty());
}

#[test]
fn untagged_on_a_trunk_uses_the_native_vlan_or_is_dropped() {
    let mut r = Rig::new(vec![
        trunk(0, &[10], Some(30)),
        trunk(1, &[10], None),
        access(2, 30),
        access(3, 10),
    ]);
    r.send(0, &frame(BCAST, mac(1), None, 64));
    assert_eq!(
        r.io.take_sent(2).len(),
        1,
        "native VLAN 30 reaches its access port"
    );
    assert!(r.io.take_sent(3).is_empty());
    assert!(r.io.take_sent(1).is_empty(), "port 1 does not carry 30");
    r.send(1, &frame(BCAST, mac(2), None, 64));
    assert_eq!(r.totals(1).dropped(DropReason::UntaggedNoNative), 1);
    assert!((0..4).all(|p| r.io.take_sent(p).is_empty()));
    // Tagged with the native VLAN's id is accepted only if the id is in the allowed set.
    r.send(0, &frame(BCAST, mac(1), Some(30), 68));
    assert_eq!(r.totals(0).dropped(DropReason::VlanNotAllowed), 1);
    // Reserved VID 4095 is never allowed.
    r.send(0, &frame(BCAST, mac(1), Some(4095), 68));
    assert_eq!(r.totals(0).dropped(DropReason::VlanNotAllowed), 2);
}

#[test]
fn an_8021ad_frame_is_an_untagged_payload() {
    let mut r = Rig::new(vec![access(0, 100), trunk(1, &[100], None)]);
    let mut f = frame(BCAST, mac(1), None, 64);
    f[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
    r.send(0, &f);
    let out = r.io.take_sent(1);
    assert_eq!(L2Header::parse(&out[0]).unwrap().vid(), Some(100));
    assert_eq!(&out[0][16..18], &[0x88, 0xa8], "S-tag kept as payload");
}

#[test]
fn multicast_sources_are_forwarded_but_not_learned() {
    let mut r = Rig::new(vec![access(0, 100), access(1, 100)]);
    let mcast = [0x01, 0, 0x5e, 0, 0, 1];
    r.send(0, &frame(BCAST, mcast, None, 64));
    r.send(0, &frame(BCAST, [0; 6], None, 64));
    assert_eq!(r.io.take_sent(1).len(), 2);
    assert!(r.fdb.is_empty());
    // Multicast destinations flood even when "learned".
    r.send(1, &frame(mcast, mac(2), None, 64));
    assert_eq!(r.io.take_sent(0).len(), 1);
}

#[test]
fn mac_move_redirects_unicast_and_is_counted() {
    let mut r = Rig::new(vec![access(0, 100), access(1, 100), access(2, 100)]);
    r.send(1, &frame(BCAST, mac(5), None, 64));
    r.send(0, &frame(mac(5), mac(1), None, 64));
    assert_eq!(r.io.take_sent(1).len(), 1);
    assert_eq!(
        r.io.take_sent(2).len(),
        1,
        "only the first, broadcast frame"
    );
    r.send(2, &frame(BCAST, mac(5), None, 64)); // mac(5) moved to port 2
    assert_eq!(r.fdb_totals().moves, 1);
    r.io.take_sent(0);
    r.io.take_sent(1);
    r.send(0, &frame(mac(5), mac(1), None, 64));
    assert_eq!(r.io.take_sent(2).len(), 1);
    assert!(r.io.take_sent(1).is_empty());
}

#[test]
fn aged_and_flushed_entries_flood_again() {
    let mut r = Rig::new(vec![access(0, 100), access(1, 100), access(2, 100)]);
    r.fdb.add_static(vlan(100), mac(9), 2);
    r.send(1, &frame(BCAST, mac(5), None, 64)); // learned at second 1
    r.io.take_sent(0);
    r.io.take_sent(2);
    assert_eq!(r.fdb.age(400, 300), 1);
    assert_eq!(r.fdb.lookup(vlan(100), &mac(9)), Some(2), "static survives");
    r.send(0, &frame(mac(5), mac(1), None, 64));
    assert_eq!(r.io.take_sent(1).len(), 1);
    assert_eq!(r.io.take_sent(2).len(), 1, "aged out: flooded");
    r.send(1, &frame(BCAST, mac(5), None, 64));
    r.io.take_sent(0);
    r.io.take_sent(2);
    assert_eq!(r.fdb.flush_port(1), 1);
    r.send(0, &frame(mac(5), mac(1), None, 64));
    assert_eq!(r.io.take_sent(1).len(), 1);
    assert_eq!(r.io.take_sent(2).len(), 1, "flushed: flooded");
}

#[test]
fn a_full_fdb_window_is_counted_and_the_frame_still_flooded() {
    // 16 slots and a 16-slot window: the 17th source cannot be learned.
    let mut r = Rig::with_fdb(vec![access(0, 100), access(1, 100)], Fdb::new(8));
    assert_eq!(r.fdb.slots(), PROBE);
    for n in 0..PROBE as u32 + 1 {
        r.send(0, &frame(BCAST, mac(100 + n), None, 64));
    }
    assert_eq!(r.io.take_sent(1).len(), PROBE + 1, "every frame flooded");
    let f = r.fdb_totals();
    assert_eq!((f.learned, f.full), (PROBE as u64, 1));
    assert_eq!(r.fdb.lookup(vlan(100), &mac(100 + PROBE as u32)), None);
    // Unknown unicast to the unlearnable MAC is flooded too.
    r.send(1, &frame(mac(100 + PROBE as u32), mac(100), None, 64));
    assert_eq!(r.io.take_sent(0).len(), 1);
}

#[test]
fn no_headroom_for_a_tag_is_counted_on_the_egress_port() {
    let mut r = Rig::new(vec![access(0, 100), trunk(1, &[100], None), access(2, 100)]);
    r.io.inject_packet(
        0,
        TestPacket::with_headroom(&frame(BCAST, mac(1), None, 64), 2),
    );
    r.run(0);
    assert_eq!(r.totals(1).dropped(DropReason::Headroom), 1);
    assert_eq!(r.io.take_sent(2).len(), 1, "the untagged copy still leaves");
}

#[test]
fn batches_are_sent_when_full_and_keep_arrival_order() {
    let mut r = Rig::new(vec![access(0, 100), access(1, 100)]);
    r.fdb.learn(vlan(100), &mac(2), 1, 1);
    let mut burst = Burst::new();
    for round in 0..2u8 {
        for i in 0..BURST as u8 {
            let mut f = frame(mac(2), mac(1), None, 64);
            f[20] = round;
            f[21] = i;
            burst.push(TestPacket::new(&f)).unwrap();
        }
        r.state
            .forward(&r.snap, &r.fdb, 1, &mut r.io, 0, &mut burst);
        assert!(burst.is_empty());
    }
    // Two full batches went out during forward, nothing is pending.
    assert_eq!(r.io.tx_bursts[1], 2);
    assert_eq!(r.state.pending(), 0);
    burst
        .push(TestPacket::new(&frame(mac(2), mac(1), None, 64)))
        .unwrap();
    r.state
        .forward(&r.snap, &r.fdb, 1, &mut r.io, 0, &mut burst);
    assert_eq!(r.state.pending(), 1);
    r.state.flush(&mut r.io);
    assert_eq!(r.state.pending(), 0);
    let out = r.io.take_sent(1);
    assert_eq!(out.len(), 2 * BURST + 1);
    let order: Vec<_> = out[..2 * BURST].iter().map(|f| (f[20], f[21])).collect();
    let want: Vec<_> = (0..2u8)
        .flat_map(|r| (0..BURST as u8).map(move |i| (r, i)))
        .collect();
    assert_eq!(order, want);
    // An empty flush sends nothing.
    r.state.flush(&mut r.io);
    assert_eq!(r.io.tx_bursts[1], 3);
}

#[test]
fn a_burst_from_a_removed_port_is_counted_and_freed() {
    let before = live_packets();
    let mut r = Rig::new(vec![access(0, 100), access(1, 100)]);
    r.send(7, &frame(BCAST, mac(1), None, 64));
    assert_eq!(r.totals(7).rx_packets, 1);
    assert_eq!(r.totals(7).dropped(DropReason::PortDown), 1);
    assert!(r.io.take_sent(0).is_empty() && r.io.take_sent(1).is_empty());
    drop(r);
    assert_eq!(live_packets(), before);
}

#[test]
fn a_destination_that_stopped_carrying_the_vlan_is_an_egress_drop() {
    let mut r = Rig::new(vec![access(0, 100), access(1, 100)]);
    r.send(1, &frame(BCAST, mac(2), None, 64));
    // Reconfigured: port 1 moves to VLAN 200 before its entries are flushed.
    r.snap = Snapshot::build([access(0, 100), access(1, 200)]);
    r.send(0, &frame(mac(2), mac(1), None, 64));
    assert_eq!(r.totals(1).dropped(DropReason::VlanNotAllowed), 1);
    assert!(r.io.take_sent(1).is_empty());
}

#[test]
fn a_mixed_burst_is_decided_per_frame() {
    let mut r = Rig::new(vec![access(0, 100), access(1, 100), trunk(2, &[100], None)]);
    r.fdb.learn(vlan(100), &mac(1), 1, 1);
    let frames = [
        frame(mac(1), mac(7), None, 64),                // unicast to 1
        frame(BCAST, mac(7), None, 64),                 // flood to 1, 2
        frame(mac(7), mac(8), None, 64),                // hairpin: mac(7) was learned on 0
        frame(mac(1), mac(7), Some(100), 68),           // tagged on access
        frame(mac(9), mac(7), None, 64)[..13].to_vec(), // runt
        frame(mac(9), mac(7), None, 64),                // unknown: flood
    ];
    let mut burst = Burst::new();
    for f in &frames {
        burst.push(TestPacket::new(f)).unwrap();
    }
    r.state
        .forward(&r.snap, &r.fdb, 1, &mut r.io, 0, &mut burst);
    r.state.flush(&mut r.io);
    assert_eq!(r.io.take_sent(1).len(), 3);
    let to_trunk = r.io.take_sent(2);
    assert_eq!(to_trunk.len(), 2);
    assert!(to_trunk
        .iter()
        .all(|f| L2Header::parse(f).unwrap().vid() == Some(100)));
    let t = r.totals(0);
    assert_eq!(t.rx_packets, 6);
    assert_eq!(t.dropped(DropReason::NoDestination), 1);
    assert_eq!(t.dropped(DropReason::VlanNotAllowed), 1);
    assert_eq!(t.dropped(DropReason::Malformed), 1);
    assert_eq!(r.outcomes(), 5 + 3);
}

fn arb_port_mode() -> impl Strategy<Value = (Option<u16>, Vec<u16>, Option<u16>)> {
    prop_oneof![
        (1u16..4).prop_map(|v| (Some(v), vec![], None)),
        (
            proptest::collection::vec(1u16..4, 0..3),
            proptest::option::of(1u16..4)
        )
            .prop_map(|(vs, n)| (None, vs, n)),
    ]
}

/// How a port of `mode` classifies a frame with 802.1Q VID `vid`: its VLAN, or a drop.
fn model_classify(mode: &PortMode, vid: Option<u16>) -> Option<Vlan> {
    match (mode, vid) {
        (PortMode::Access { vlan }, None | Some(0)) => Some(*vlan),
        (PortMode::Trunk { native, .. }, None | Some(0)) => *native,
        (PortMode::Trunk { allowed, .. }, Some(v)) => Vlan::new(v).filter(|v| allowed.contains(*v)),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the ports and frames, against a model of the bridge: a frame only ever
    /// leaves on a port that carries its VLAN, never on its ingress port, with the right
    /// tag and PCP for that port, on exactly the ports the model names; each frame makes
    /// exactly one outcome (a send or one drop) per destination, or one drop; and no
    /// packet leaks or is duplicated.
    #[test]
    fn frames_stay_in_their_vlan_and_every_copy_is_accounted_for(
        modes in proptest::collection::vec(arb_port_mode(), 2..6),
        frames in proptest::collection::vec(
            (0usize..6, 0u32..6, 0u32..7, proptest::option::of(0u16..6), 0u16..8, 10usize..100),
            1..60,
        ),
        tx_full in proptest::option::of(0usize..6),
        copy_fails in any::<bool>(),
    ) {
        let live_before = live_packets();
        let ports: Vec<SwitchPort> = modes.iter().enumerate().map(|(i, (a, vs, n))| match a {
            Some(v) => access(i as u16, *v),
            None => trunk(i as u16, vs, *n),
        }).collect();
        let mut r = Rig::new(ports.clone());
        if let Some(p) = tx_full { r.io.tx_room[p] = Some(0); }
        r.io.copy_fails = copy_fails;
        let mut model: std::collections::HashMap<(Vlan, [u8; 6]), usize> = Default::default();
        let received = frames.len() as u64;
        for (port, src, dst, vid, pcp, len) in frames {
            let port = port % ports.len();
            let dst = if dst == 6 { BCAST } else { mac(dst) };
            let f = frame(dst, mac(src), vid.map(|v| (pcp << 13) | v), len);
            let f = if len < 14 { f[..len].to_vec() } else { f };
            let class = L2Header::parse(&f).and_then(|h| model_classify(&ports[port].mode, h.vid()));
            // The model's destinations.
            let dests: Vec<usize> = match class {
                None => vec![],
                Some(v) => {
                    model.insert((v, mac(src)), port);
                    match model.get(&(v, dst)) {
                        Some(&d) if dst != BCAST => if d == port { vec![] } else { vec![d] },
                        _ => (0..ports.len()).filter(|&i| i != port && ports[i].mode.carries(v)).collect(),
                    }
                }
            };
            let before = r.outcomes();
            r.send(port as u16, &f);
            prop_assert_eq!(r.outcomes() - before, dests.len().max(1) as u64, "one outcome per copy");
            for (i, p) in ports.iter().enumerate() {
                let out = r.io.take_sent(i as u16);
                if !copy_fails && tx_full != Some(i) {
                    prop_assert_eq!(out.len(), usize::from(dests.contains(&i)), "port {}", i);
                }
                for out in out {
                    prop_assert!(dests.contains(&i), "sent to port {} the model excludes", i);
                    let v = class.expect("a dropped frame was sent");
                    prop_assert!(p.mode.carries(v), "left on port {i} which does not carry VLAN {}", v.get());
                    let h = L2Header::parse(&out).unwrap();
                    let want_tag = matches!(&p.mode, PortMode::Trunk { native, .. } if *native != Some(v));
                    prop_assert_eq!(h.vid(), want_tag.then_some(v.get()));
                    if want_tag && vid.is_some() {
                        prop_assert_eq!(h.pcp(), Some(pcp as u8), "PCP kept");
                    }
                    prop_assert_eq!(out.len() as isize - f.len() as isize,
                        4 * (isize::from(want_tag) - isize::from(vid.is_some())));
                }
            }
        }
        let rx: u64 = (0..ports.len()).map(|i| r.totals(i as u16).rx_packets).sum();
        prop_assert_eq!(rx, received);
        // The counters alone account for every copy: what the switch exposes to check a
        // live switch with (the soak test does).
        let copies: u64 = (0..ports.len()).map(|i| r.totals(i as u16).copies).sum();
        prop_assert_eq!(rx + copies, r.outcomes(), "rx + copies = tx + drops");
        drop(r);
        prop_assert_eq!(live_packets(), live_before, "packets leaked or freed twice");
    }
}

fn with_mtu(mut p: SwitchPort, mtu: u16) -> SwitchPort {
    p.mtu = mtu;
    p
}

#[test]
fn frames_above_the_ingress_or_egress_mtu_are_counted_mtu_drops_and_the_bound_is_inclusive() {
    use super::config::{MAX_FRAME, MAX_MTU};
    // Port 0 and 2 take jumbo frames, port 1 only 1500; a trunk (3) at 9000.
    let mut r = Rig::new(vec![
        with_mtu(access(0, 100), MAX_MTU),
        access(1, 100),
        with_mtu(access(2, 100), 9000),
        with_mtu(trunk(3, &[100], None), 9000),
    ]);
    // Learn every destination first (small frames flood everywhere).
    for p in 1..4u16 {
        r.send(
            p,
            &frame(
                mac(0),
                mac(u32::from(p)),
                if p == 3 { Some(100) } else { None },
                64,
            ),
        );
    }
    for p in 0..4 {
        r.io.take_sent(p);
    }
    // Exactly 9000 bytes after the Ethernet header reaches port 2 and the trunk (tagged:
    // 9000 + 18 bytes on the wire), whole.
    r.send(0, &frame(mac(2), mac(0), None, 9000 + 14));
    let got = r.io.take_sent(2);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0], frame(mac(2), mac(0), None, 9014));
    r.send(0, &frame(mac(3), mac(0), None, 9000 + 14));
    let got = r.io.take_sent(3);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].len(), 9018);
    assert_eq!(L2Header::parse(&got[0]).unwrap().vid(), Some(100));
    assert_eq!(&got[0][18..], &frame(mac(3), mac(0), None, 9014)[14..]);
    // One byte more: dropped at the egress (counted on the destination), not sent.
    r.send(0, &frame(mac(2), mac(0), None, 9001 + 14));
    assert!(r.io.take_sent(2).is_empty());
    assert_eq!(r.totals(2).dropped(DropReason::Mtu), 1);
    // 1501 to the 1500 port: dropped there.
    r.send(0, &frame(mac(1), mac(0), None, 1501 + 14));
    assert!(r.io.take_sent(1).is_empty());
    assert_eq!(r.totals(1).dropped(DropReason::Mtu), 1);
    // A flood of a 1600-byte frame: the 1500 port drops its copy, the others get theirs.
    r.send(0, &frame(BCAST, mac(0), None, 1600 + 14));
    assert!(r.io.take_sent(1).is_empty());
    assert_eq!(r.io.take_sent(2).len(), 1);
    assert_eq!(r.io.take_sent(3).len(), 1);
    assert_eq!(r.totals(1).dropped(DropReason::Mtu), 2);
    // Ingress: above the source port's own MTU, counted on it. A tagged frame's tag is not
    // part of the MTU: 9000 bytes + tag on the trunk pass, 9001 do not.
    r.send(3, &frame(mac(2), mac(3), Some(100), 9000 + 18));
    assert_eq!(r.io.take_sent(2).len(), 1);
    r.send(3, &frame(mac(2), mac(3), Some(100), 9001 + 18));
    assert!(r.io.take_sent(2).is_empty());
    assert_eq!(r.totals(3).dropped(DropReason::Mtu), 1);
    r.send(1, &frame(mac(0), mac(1), None, 1501 + 14));
    assert!(r.io.take_sent(0).is_empty());
    assert_eq!(r.totals(1).dropped(DropReason::Mtu), 3);
    // The largest frame a MAX_MTU port carries passes.
    r.send(2, &frame(mac(0), mac(2), None, 64));
    let mut r2 = Rig::new(vec![
        with_mtu(access(0, 100), MAX_MTU),
        with_mtu(trunk(1, &[100], None), MAX_MTU),
    ]);
    r2.send(1, &frame(BCAST, mac(1), Some(100), MAX_FRAME));
    let got = r2.io.take_sent(0);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].len(), MAX_FRAME - 4);
    assert_eq!(r.outcomes() + r2.outcomes(), {
        let t = |r: &Rig| {
            (0..4)
                .map(|p| r.totals(p).rx_packets + r.totals(p).copies)
                .sum::<u64>()
        };
        t(&r) + t(&r2)
    });
    drop((r, r2));
    assert_eq!(live_packets(), 0);
}

#[test]
fn vlan_push_pop_and_rewrite_keep_a_jumbo_frame_whole() {
    let mut r = Rig::new(vec![
        with_mtu(access(0, 100), 9000),
        with_mtu(trunk(1, &[100, 200], None), 9000),
        with_mtu(trunk(2, &[100], Some(100)), 9000),
    ]);
    let body = frame(mac(9), mac(1), None, 9014);
    // Untagged in, tagged out (push) on the trunk, untagged on the native trunk.
    r.send(0, &body);
    let pushed = r.io.take_sent(1);
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].len(), 9018);
    assert_eq!(&pushed[0][..12], &body[..12]);
    assert_eq!(&pushed[0][12..16], &[0x81, 0x00, 0x00, 100]);
    assert_eq!(&pushed[0][16..], &body[12..]);
    assert_eq!(r.io.take_sent(2), vec![body.clone()]);
    // Tagged in, popped for the access port: the same bytes as the original.
    r.send(1, &frame(BCAST, mac(2), Some(100), 9018));
    let tagged = frame(BCAST, mac(2), Some(100), 9018);
    let popped = r.io.take_sent(0);
    assert_eq!(popped.len(), 1);
    assert_eq!(popped[0].len(), 9014);
    assert_eq!(&popped[0][..12], &tagged[..12]);
    assert_eq!(&popped[0][12..], &tagged[16..]);
    // A priority tag (VID 0, PCP 5) on the native trunk is rewritten to VLAN 100 on the
    // tagged trunk, PCP kept, payload untouched.
    let prio = frame(BCAST, mac(3), Some(5 << 13), 9018);
    r.send(2, &prio);
    let rewritten = r.io.take_sent(1);
    assert_eq!(rewritten.len(), 1);
    assert_eq!(&rewritten[0][14..16], &((5u16 << 13) | 100).to_be_bytes());
    assert_eq!(&rewritten[0][16..], &prio[16..]);
    for p in 0..3 {
        r.io.take_sent(p);
    }
    drop(r);
    assert_eq!(live_packets(), 0);
}
