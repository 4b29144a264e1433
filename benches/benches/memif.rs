//! criterion bench of a memif hop as the switch drives it: frames sent with `DpdkIo` on a
//! DPDK `net_memif` client port and received with `DpdkIo` on the `net_memif` server port it
//! is connected to, in one process (the EAL without hugepages; memif's shared regions are
//! memfd). Per packet: one TX copy into the shared ring, one RX copy out of it, mbuf
//! allocation and free included. Compare with the `virtqueue` bench (native vhost-user).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use heddle_dataplane::dpdk::io::{empty_paths, DpdkIo, PortPath};
use heddle_dataplane::dpdk::{Eal, EthPort, Mbuf, Mempool, QueueConfig};
use heddle_dataplane::switch::config::DEFAULT_MTU;
use heddle_dataplane::switch::io::{Burst, PacketIo, BURST};
use heddle_dataplane::switch::testing::{frame, mac};

const SERVER: u16 = 0;
const CLIENT: u16 = 1;

struct Rig {
    io: DpdkIo,
    pool: Arc<Mempool>,
    _ports: (EthPort, EthPort),
}

fn rig() -> Rig {
    let args: Vec<String> = [
        "--no-huge",
        "-m",
        "512",
        "--no-pci",
        "--file-prefix",
        "heddle-memif-bench",
        "--lcores",
        "0@0",
        "--log-level",
        "*:error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Eal::init(&args).expect("EAL");
    let pool = Arc::new(Mempool::create("memif_bench", 8191, 256, 2176, None).expect("pool"));
    let dir = std::env::temp_dir().join(format!("heddle-memif-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("socket dir");
    let sock = dir.join("m.sock");
    let q = QueueConfig {
        rx_queues: 1,
        tx_queues: 1,
        rx_ring: 1024,
        tx_ring: 1024,
    };
    let mut server = EthPort::probe(&format!(
        "net_memif0,role=server,socket={},socket-abstract=no,id=0",
        sock.display()
    ))
    .expect("memif server");
    server.start(q, &pool, DEFAULT_MTU).expect("start server");
    let mut client = EthPort::probe(&format!(
        "net_memif1,role=client,socket={},socket-abstract=no,id=0",
        sock.display()
    ))
    .expect("memif client");
    client.start(q, &pool, DEFAULT_MTU).expect("start client");
    let t = Instant::now();
    while !(server.link().up && client.link().up) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "memif never connected"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut paths = empty_paths();
    for (i, p) in [(SERVER, &server), (CLIENT, &client)] {
        paths[i as usize] = Some(PortPath::Eth {
            eth: p.id(),
            txq: 0,
            tx_lock: None,
        });
    }
    Rig {
        io: DpdkIo::new(Arc::new(paths), pool.clone()),
        pool,
        _ports: (server, client),
    }
}

fn hop(c: &mut Criterion) {
    let mut rig = rig();
    let mut g = c.benchmark_group("memif");
    for size in [64usize, 1518] {
        let f = frame(mac(2), mac(1), None, size);
        g.throughput(Throughput::Elements(BURST as u64));
        g.bench_function(format!("client_to_server_burst32_{size}B"), |b| {
            let mut burst: Burst<Mbuf> = Burst::new();
            b.iter(|| {
                for _ in 0..BURST {
                    let m = Mbuf::from_bytes(&rig.pool, &f).expect("mbuf");
                    let _ = burst.push(m);
                }
                let sent = rig.io.tx_burst(CLIENT, &mut burst);
                let mut got = 0;
                while got < sent {
                    rig.io.rx_burst(SERVER, 0, &mut burst);
                    got += burst.len();
                    burst.drain().for_each(drop);
                }
                got
            });
        });
    }
    g.finish();
}

criterion_group!(benches, hop);
criterion_main!(benches);
