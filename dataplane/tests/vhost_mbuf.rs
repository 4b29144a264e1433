//! The native vhost-user data path into real mbufs: guest TX frames dequeued through
//! `MbufPool` (bulk-filled cache, lengths set in Rust) and the mbufs enqueued back to a
//! guest RX ring. One test: the EAL starts once per process.

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
}
