//! The safe DPDK layer on a real EAL (no hugepages needed): mempool accounting, `Mbuf`'s
//! Rust-side accessors against DPDK's own, an `EthPort` made from devargs, and a burst
//! through `DpdkIo` over a looped-back `net_ring` port. One test: the EAL starts once per
//! process.

use std::sync::Arc;

use heddle_dataplane::dpdk::io::{empty_paths, DpdkIo, PortPath};
use heddle_dataplane::dpdk::{Eal, EthPort, Mbuf, Mempool, QueueConfig};
use heddle_dataplane::switch::io::{Burst, Packet, PacketIo};
use heddle_dataplane::switch::testing::{frame, mac};

#[test]
fn eal_mempool_mbuf_ethport_and_io_work_together() {
    let args: Vec<String> = [
        "--no-huge",
        "-m",
        "128",
        "--no-pci",
        "--file-prefix",
        "heddle-dp-test",
        "--lcores",
        "0@0",
        "--log-level",
        "lib.eal:error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let eal = Eal::init(&args).expect("EAL starts without hugepages");
    assert!(
        Eal::init(&args).is_ok(),
        "a second init with the same arguments returns the running EAL"
    );
    assert!(
        Eal::init(&["--no-pci".into()]).is_err(),
        "different arguments are refused"
    );
    assert!(eal.tsc_hz() > 0);

    let pool = Arc::new(Mempool::create("dp_test", 1023, 0, 2176, None).expect("pool"));
    assert_eq!(pool.available(), 1023);

    // Mbuf accessors agree with DPDK's inline functions.
    let f = frame(mac(2), mac(1), None, 60);
    let mut m = Mbuf::from_bytes(&pool, &f).expect("mbuf");
    assert_eq!(pool.available(), 1022);
    assert_eq!(m.data(), &f[..]);
    let raw = m.into_raw();
    // SAFETY: `raw` is the mbuf just released by `into_raw`; it is taken back right after.
    unsafe {
        assert_eq!(dpdk_sys::heddle_rte_pktmbuf_data_len(raw.as_ptr()), 60);
        assert_eq!(dpdk_sys::heddle_rte_pktmbuf_headroom(raw.as_ptr()), 128);
        m = Mbuf::from_raw(raw);
    }
    assert!(m.prepend(4));
    assert_eq!(m.len(), 64);
    assert!(m.trim_front(4));
    assert_eq!(m.data(), &f[..]);
    assert!(!m.trim_front(61), "cannot trim past the end");
    assert!(!m.prepend(129), "cannot prepend past the headroom");
    assert_eq!(m.data(), &f[..]);
    let copy = m.copy(&pool).expect("copy");
    assert_eq!(copy.data(), m.data());
    drop(copy);
    drop(m);
    assert_eq!(
        pool.available(),
        1023,
        "dropping mbufs returns them to the pool"
    );

    // Bad devargs are a typed error, and leave no port behind.
    let err = EthPort::probe("net_nosuchdriver0").unwrap_err().to_string();
    assert!(err.contains("DPDK rejected devargs"), "{err}");

    // A net_ring port sends back into itself: TX then RX through DpdkIo.
    let mut port = EthPort::probe("net_ring0").expect("net_ring vdev");
    assert!(
        EthPort::probe("net_ring0").is_err(),
        "the same device twice is refused"
    );
    let info = port.info().expect("info");
    assert_eq!(info.driver, "net_ring");
    port.start(
        QueueConfig {
            rx_queues: 1,
            tx_queues: 1,
            rx_ring: 256,
            tx_ring: 256,
        },
        &pool,
        1500,
    )
    .expect("start");
    assert!(info.max_mtu >= 1500, "net_ring takes a 1500 MTU: {info:?}");
    let mut paths = empty_paths();
    paths[3] = Some(PortPath::Eth {
        eth: port.id(),
        txq: 0,
        tx_lock: None,
    });
    let mut io = DpdkIo::new(Arc::new(paths), pool.clone());
    let mut burst: Burst<Mbuf> = Burst::new();
    for i in 0..8u32 {
        assert!(burst
            .push(Mbuf::from_bytes(&pool, &frame(mac(i), mac(1), None, 64)).unwrap())
            .is_ok());
    }
    assert_eq!(io.tx_burst(3, &mut burst), 8);
    assert!(burst.is_empty());
    io.rx_burst(3, 0, &mut burst);
    assert_eq!(burst.len(), 8);
    assert_eq!(
        burst.as_slice()[5].data()[5],
        5,
        "frames come back in order"
    );
    // A port the table does not know sends nothing and frees the burst.
    assert_eq!(io.tx_burst(9, &mut burst), 0);
    assert!(burst.is_empty());
    assert_eq!(pool.available(), 1023, "unsent frames were freed in bulk");
    let stats = port.stats().expect("stats");
    assert_eq!((stats.opackets, stats.ipackets), (8, 8));
    drop(io);
    drop(port);
    // The device is unplugged on drop, so the name is free again.
    let again = EthPort::probe("net_ring0").expect("probe after unplug");
    drop(again);
}
