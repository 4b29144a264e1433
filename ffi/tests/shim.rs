//! The bindings link against the system's DPDK and the shim's forwarders behave like the
//! inline functions they wrap: EAL without hugepages, a mempool, an mbuf round trip, and a
//! burst through a `net_ring` vdev (looped back to itself).

use std::ffi::CString;
use std::ptr;

#[test]
fn eal_mempool_mbuf_and_ring_port_round_trip() {
    let args = [
        "shim-test",
        "--no-huge",
        "-m",
        "64",
        "--no-pci",
        "--file-prefix",
        "heddle-shim-test",
        "--lcores",
        "0@0",
        "--log-level",
        "lib.eal:error",
    ];
    let owned: Vec<CString> = args.iter().map(|a| CString::new(*a).unwrap()).collect();
    let mut argv: Vec<*mut std::ffi::c_char> =
        owned.iter().map(|c| c.as_ptr().cast_mut()).collect();
    // SAFETY: argv holds valid NUL-terminated strings that outlive the process's use of them
    // (`owned` lives until the end of the test, after rte_eal_cleanup).
    let rc = unsafe { dpdk_sys::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
    // SAFETY: reads this thread's `rte_errno`, which rte_eal_init set on failure.
    let errno = unsafe { dpdk_sys::heddle_rte_errno() };
    assert!(rc >= 0, "rte_eal_init failed: errno {errno}");

    let name = CString::new("shim_pool").unwrap();
    // SAFETY: the EAL is running; the name is a valid C string.
    let pool = unsafe {
        dpdk_sys::rte_pktmbuf_pool_create(name.as_ptr(), 1023, 0, 0, 2176, dpdk_sys::SOCKET_ID_ANY)
    };
    assert!(!pool.is_null(), "pool creation failed");
    // SAFETY: `pool` was checked non-null just above and is never freed.
    let avail = unsafe { dpdk_sys::heddle_rte_mempool_avail_count(pool) };
    assert_eq!(avail, 1023);

    // SAFETY: valid pool; the mbuf is checked for null and freed below.
    let m = unsafe { dpdk_sys::heddle_rte_pktmbuf_alloc(pool) };
    assert!(!m.is_null());
    // SAFETY: `m` is a valid mbuf owned here.
    unsafe {
        let headroom = dpdk_sys::heddle_rte_pktmbuf_headroom(m);
        assert_eq!(headroom, 128);
        let p = dpdk_sys::heddle_rte_pktmbuf_append(m, 60);
        assert!(!p.is_null());
        assert_eq!(dpdk_sys::heddle_rte_pktmbuf_data_len(m), 60);
        assert!(!dpdk_sys::heddle_rte_pktmbuf_prepend(m, 4).is_null());
        assert_eq!(dpdk_sys::heddle_rte_pktmbuf_pkt_len(m), 64);
        assert!(!dpdk_sys::heddle_rte_pktmbuf_adj(m, 4).is_null());
        assert!(
            dpdk_sys::heddle_rte_pktmbuf_adj(m, 61).is_null(),
            "adj past the end must fail"
        );
        assert_eq!(dpdk_sys::heddle_rte_pktmbuf_data_len(m), 60);
    }

    // A net_ring vdev with one queue pair is looped back onto itself (nodeaction create).
    let dev = CString::new("net_ring0").unwrap();
    // SAFETY: valid C string; the EAL is running.
    assert_eq!(unsafe { dpdk_sys::rte_dev_probe(dev.as_ptr()) }, 0);
    let mut port = 0u16;
    // SAFETY: `dev` is a NUL-terminated string that outlives the call; `port` is a valid
    // out pointer.
    let rc = unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(dev.as_ptr(), &mut port) };
    assert_eq!(rc, 0);
    let conf = dpdk_sys::rte_eth_conf::default();
    // SAFETY: valid port id, default config, queues set up before start.
    unsafe {
        assert_eq!(dpdk_sys::rte_eth_dev_configure(port, 1, 1, &conf), 0);
        assert_eq!(
            dpdk_sys::rte_eth_rx_queue_setup(port, 0, 128, 0, ptr::null(), pool),
            0
        );
        assert_eq!(
            dpdk_sys::rte_eth_tx_queue_setup(port, 0, 128, 0, ptr::null()),
            0
        );
        assert_eq!(dpdk_sys::rte_eth_dev_start(port), 0);
        let mut tx = [m];
        assert_eq!(
            dpdk_sys::heddle_rte_eth_tx_burst(port, 0, tx.as_mut_ptr(), 1),
            1
        );
        let mut rx = [ptr::null_mut(); 4];
        assert_eq!(
            dpdk_sys::heddle_rte_eth_rx_burst(port, 0, rx.as_mut_ptr(), 4),
            1
        );
        assert_eq!(rx[0], m, "the ring hands back the same mbuf");
        dpdk_sys::heddle_rte_pktmbuf_free(rx[0]);
        assert_eq!(dpdk_sys::heddle_rte_mempool_avail_count(pool), 1023);
        assert_eq!(dpdk_sys::rte_eth_dev_stop(port), 0);
        assert_eq!(dpdk_sys::rte_eth_dev_close(port), 0);
        assert_eq!(dpdk_sys::rte_eal_cleanup(), 0);
    }
}
