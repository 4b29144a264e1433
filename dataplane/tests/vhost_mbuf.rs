//! The native vhost-user data path into real mbufs: guest TX frames dequeued through
//! `MbufPool` (bulk-filled cache, lengths set in Rust) and the mbufs enqueued back to a
//! guest RX ring, small and jumbo. One test: the EAL starts once per process.

use std::sync::Arc;

use heddle_dataplane::dpdk::{Eal, MbufPool, Mempool};
use heddle_dataplane::switch::io::{Burst, Packet};
use heddle_dataplane::switch::testing::{frame, mac};
use heddle_dataplane::vhost::testing::{Driver, TxLayout};
use heddle_dataplane::vhost::virtq::{feature, QueueStats, RxPool};

#[test]
fn guest_frames_round_trip_through_mbufs() {
    let args: Vec<String> = [
        "--no-huge",
        "-m",
        "128",
        "--no-pci",
        "--file-prefix",
        "heddle-vhost-test",
        "--lcores",
        "0@0",
        "--log-level",
        "lib.eal:error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _eal = Eal::init(&args).expect("EAL starts without hugepages");
    let mempool = Arc::new(Mempool::create("vhost_test", 255, 0, 2176, None).expect("pool"));
    let mut pool = MbufPool::new(mempool.clone());
    assert_eq!(pool.max_len(), 2176 - 128);
    assert!(pool.alloc(2049).is_none(), "larger than the data room");

    let features = feature::VERSION_1 | feature::MRG_RXBUF;
    let mut tx = Driver::new(64, features);
    let mut txq = tx.queue();
    let sizes = [60usize, 64, 1518, 2048];
    for (i, &l) in sizes.iter().enumerate() {
        let layout = if i % 2 == 0 {
            TxLayout::SplitHeader
        } else {
            TxLayout::Joined
        };
        tx.post_tx(&frame(mac(1), mac(2), None, l), layout).unwrap();
    }
    // Too big for the mbufs: returned to the guest, counted.
    tx.post_tx(&frame(mac(1), mac(2), None, 2049), TxLayout::Joined)
        .unwrap();
    let mut stats = QueueStats::default();
    let mut burst = Burst::new();
    assert_eq!(txq.dequeue(&tx.mem, &mut pool, &mut burst, &mut stats), 4);
    assert_eq!(stats.oversize, 1);
    for (m, &l) in burst.as_slice().iter().zip(&sizes) {
        assert_eq!(m.data(), &frame(mac(1), mac(2), None, l)[..]);
        assert_eq!(m.len(), l);
        assert_eq!(m.segments(), 1);
    }
    assert_eq!(tx.reap().len(), 5);

    let mut rx = Driver::new(64, features);
    let mut rxq = rx.queue();
    for _ in 0..8 {
        rx.post_rx(1024, 1).unwrap();
    }
    assert_eq!(rxq.enqueue(&rx.mem, burst.as_slice(), &mut stats), 4);
    let got = rx.recv();
    let nbs: Vec<u16> = got.iter().map(|f| f.num_buffers).collect();
    assert_eq!(nbs, vec![1, 1, 2, 3]);
    for (f, &l) in got.iter().zip(&sizes) {
        assert_eq!(f.frame, frame(mac(1), mac(2), None, l));
    }

    // Every mbuf goes back: the burst's, and the cache's when the pool is dropped.
    drop(burst);
    assert_eq!(mempool.available() as usize + pool.cached(), 255);
    drop(pool);
    assert_eq!(mempool.available(), 255);

    // An exhausted mempool stops dequeue without losing the guest's chain.
    let mut pool = MbufPool::new(mempool.clone());
    let mut hold = Vec::new();
    while let Some(m) = pool.alloc(60) {
        hold.push(m);
    }
    assert_eq!(hold.len(), 255);
    tx.post_tx(&frame(mac(1), mac(2), None, 60), TxLayout::Joined)
        .unwrap();
    let mut burst = Burst::new();
    let mut stats = QueueStats::default();
    assert_eq!(txq.dequeue(&tx.mem, &mut pool, &mut burst, &mut stats), 0);
    assert_eq!(stats.no_mbufs, 1);
    hold.truncate(200);
    assert_eq!(txq.dequeue(&tx.mem, &mut pool, &mut burst, &mut stats), 1);
    drop((hold, burst, pool));

    jumbo_frames_stay_in_one_mbuf(&mempool);
}

/// Jumbo frames: guest TX chains above the main pool's 2048 bytes land whole in one mbuf of
/// the jumbo pool, up to the switch's largest frame (9234 bytes); one byte more goes back to
/// the guest counted as `oversize`. Small frames still come from the main pool. Through the
/// pipeline's I/O, a flood copy of a jumbo frame is a jumbo mbuf, one segment, and a VLAN
/// push on it keeps every byte. Back into a guest RX ring with mergeable buffers, the frame
/// spans three 4 KiB buffers (`num_buffers` 3), intact.
fn jumbo_frames_stay_in_one_mbuf(mempool: &Arc<Mempool>) {
    use heddle_dataplane::dpdk::io::DpdkIo;
    use heddle_dataplane::switch::config::MAX_FRAME;
    use heddle_dataplane::switch::io::PacketIo;
    use heddle_dataplane::switch::vlan::push_tag;

    let jumbo = Arc::new(Mempool::create("vhost_jumbo", 63, 0, 9472, None).expect("jumbo pool"));
    let mut pool = MbufPool::with_jumbo(mempool.clone(), jumbo.clone());
    assert_eq!(pool.max_len(), MAX_FRAME);
    assert!(
        pool.alloc(MAX_FRAME + 1).is_none(),
        "above the largest frame"
    );
    let (small0, jumbo0) = (mempool.available(), jumbo.available());

    let features = feature::VERSION_1 | feature::MRG_RXBUF;
    let mut tx = Driver::with(64, features, 0, 12 * 1024);
    let mut txq = tx.queue();
    let sizes = [64usize, 2049, 9014, MAX_FRAME];
    for &l in &sizes {
        tx.post_tx(&frame(mac(1), mac(2), None, l), TxLayout::Pieces(3))
            .unwrap();
    }
    tx.post_tx(
        &frame(mac(1), mac(2), None, MAX_FRAME + 1),
        TxLayout::Pieces(3),
    )
    .unwrap();
    let mut stats = QueueStats::default();
    let mut burst = Burst::new();
    assert_eq!(txq.dequeue(&tx.mem, &mut pool, &mut burst, &mut stats), 4);
    assert_eq!(stats.oversize, 1);
    for (m, &l) in burst.as_slice().iter().zip(&sizes) {
        assert_eq!(m.data(), &frame(mac(1), mac(2), None, l)[..], "{l}");
        assert_eq!(m.segments(), 1);
        assert!(!m.segmented());
    }
    assert_eq!(
        jumbo0 - jumbo.available(),
        3,
        "three frames above 2048 bytes"
    );
    assert!(small0 - mempool.available() >= 1);

    // A flood copy of the 9014-byte frame, then a tag pushed on it.
    let mut io = DpdkIo::with_jumbo(
        Arc::new(heddle_dataplane::dpdk::io::empty_paths()),
        mempool.clone(),
        jumbo.clone(),
    );
    let mut copy = io.copy(&burst.as_slice()[2]).expect("a jumbo copy");
    assert_eq!(copy.segments(), 1);
    assert!(push_tag(&mut copy, 100));
    let want = frame(mac(1), mac(2), None, 9014);
    assert_eq!(copy.len(), 9018);
    assert_eq!(&copy.data()[..12], &want[..12]);
    assert_eq!(&copy.data()[12..16], &[0x81, 0, 0, 100]);
    assert_eq!(&copy.data()[16..], &want[12..]);

    // Into a guest RX ring of 4 KiB mergeable buffers.
    let mut rx = Driver::with(64, features, 0, 4096);
    let mut rxq = rx.queue();
    for _ in 0..8 {
        rx.post_rx(4096, 1).unwrap();
    }
    let one = [copy];
    let mut stats = QueueStats::default();
    assert_eq!(rxq.enqueue(&rx.mem, &one, &mut stats), 1);
    let got = rx.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].num_buffers, 3);
    assert_eq!(got[0].frame, one[0].data());
    drop(one);
    drop(burst);
    drop(pool);
    assert_eq!(jumbo.available(), 63, "every jumbo mbuf went back");
}
