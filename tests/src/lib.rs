//! Harness for Heddle's integration tests against real peers: dpdk-testpmd processes
//! (virtio-user, net_vhost, net_memif, net_af_packet ports), network namespaces, veth pairs
//! and raw 802.1Q frames.
//!
//! - [`testpmd`] has [`TestpmdBuilder`] / [`Testpmd`]: spawn, wait until ready, send commands,
//!   read port counters, stop on drop.
//! - [`stats`] has parsers for testpmd's "NIC statistics for port N" blocks.
//! - [`netns`] has [`Netns`], [`VethPair`], `ip` helpers.
//! - [`raw`] has [`RawSocket`] (AF_PACKET with the VLAN tag recovered from `PACKET_AUXDATA`)
//!   and frame builders.
//! - [`qemu`] has [`GuestImage`] / [`Guest`]: Linux guests in QEMU (Debian kernel, busybox
//!   initramfs) whose virtio-net NIC is a vhost-user port of the switch; see its docs for
//!   the QEMU pitfalls.
//! - [`device_plugin`] has [`device_plugin::DevicePluginProcess`]: the real plugin binary.
//! - [`kubelet`] has [`TestKubelet`]: the kubelet's side of the device plugin API
//!   (Registration server, ListAndWatch recorder, allocator) and a PodResources server.
//! - [`modules`] finds module import cycles in a crate's source ([`modules::cycles`]).
//! - [`node_pod`] turns the chart's node DaemonSet into a pod podman runs from Heddle's image.
//! - [`soak`] has the churn soak (`benches/churn.sh`, `tests/tests/soak.rs`).
//! - [`mod@env`] has `require_*` preconditions that fail with a fix-it sentence, polling helpers,
//!   unique names and file prefixes, [`exclusive_cpus`].
//!
//! Tests need root and hugepages: run `deploy/scripts/install-deps.sh` and
//! `deploy/scripts/hugepages.sh` first. A test calls `require_dpdk_peers(MiB)?` and fails
//! with the reason when something is missing; it never passes silently.
//!
//! # Command lines checked on the project's machines (2 CPUs, DPDK 22.11.11)
//!
//! testpmd as a two-port vhost-user switch (server sockets), io forwarding, on CPU 1:
//!
//! ```text
//! stdbuf -oL dpdk-testpmd --lcores 0@1,1@1 --main-lcore 0 --file-prefix heddle-tp-<pid>-<n> \
//!   -m 256 --no-pci --single-file-segments \
//!   --vdev net_vhost0,iface=/tmp/X/a.sock,queues=1,client=0 \
//!   --vdev net_vhost1,iface=/tmp/X/b.sock,queues=1,client=0 \
//!   -- -i --forward-mode=io --nb-cores=1 --total-num-mbufs=16384 --auto-start
//! ```
//!
//! Generator with two virtio-user ports, each addressed to the other, on CPU 0; then
//! `start tx_first` on stdin (or `--stats-period=1 --auto-start --tx-first` without `-i`):
//!
//! ```text
//! stdbuf -oL dpdk-testpmd --lcores 0@0,1@0 --main-lcore 0 --file-prefix heddle-tp-<pid>-<m> \
//!   -m 256 --no-pci --single-file-segments \
//!   --vdev net_virtio_user0,path=/tmp/X/a.sock,mac=02:00:00:00:00:0a,queues=1,server=0 \
//!   --vdev net_virtio_user1,path=/tmp/X/b.sock,mac=02:00:00:00:00:0b,queues=1,server=0 \
//!   -- -i --forward-mode=mac --nb-cores=1 --total-num-mbufs=16384 \
//!   --eth-peer=0,02:00:00:00:00:0b --eth-peer=1,02:00:00:00:00:0a
//! ```
//!
//! Measured with these (64-byte frames, noisy machine): about 6.7 Mpps received on each
//! generator port (13.4 Mpps through the testpmd switch in total, both directions). With the
//! roles swapped (virtio-user `server=1`, net_vhost `client=1`) and a txonly generator, about
//! 9.4 Mpps sent per port. Start-up: switch ready (sockets bound, prompt) in about 0.4 s,
//! generator ready and all four links up about 0.9 s after it is spawned. A whole test with
//! both processes takes 2-4 s.
//!
//! testpmd inside a namespace with an AF_PACKET port on a veth end:
//! `ip netns exec NS stdbuf -oL dpdk-testpmd ... --vdev net_af_packet0,iface=VETH -- -i
//! --forward-mode=rxonly --auto-start ...`.
//!
//! # Pitfalls seen here
//!
//! - Mac mode does not generate traffic: without `--tx-first` / `start tx_first` a
//!   mac or io loop stays at zero forever. `--tx-first` is ignored in interactive mode. The
//!   seeded loop holds only one burst (32 packets) per stream, so counters of the two
//!   processes agree to within a few hundred packets after `stop`.
//! - Without `-i` and without `--stats-period`, testpmd waits on stdin for "Press enter to
//!   exit"; with stdin at EOF (`/dev/null`, a background shell job) it quits right after
//!   start-up and unlinks its vhost sockets, and the peer then fails with `connect error, No
//!   such file or directory`. The harness always holds a stdin pipe open.
//! - testpmd's stdout is block-buffered when it is a file or pipe: answers to `show port
//!   stats all` only appear at exit. `stdbuf -oL` (LD_PRELOAD, works because testpmd is
//!   dynamically linked) fixes it.
//! - If a virtio-user client socket does not exist, the probe fails, testpmd prints `No
//!   probed ethernet devices` and carries on with zero ports (exit code 0, forwarding "works").
//!   [`Testpmd::wait_ready`] treats that as an error.
//! - virtio-user `server=1` blocks EAL init in `accept()` on port 0's socket until a client
//!   connects; port 1's socket only appears after that. A SIGINT then merely interrupts the
//!   accept (`Failed to accept initial client connection (Interrupted system call)`) and
//!   testpmd continues to the prompt with zero ports, so the harness repeats SIGINT every
//!   500 ms and closes stdin before falling back to SIGKILL. net_vhost `client=1` reconnects
//!   until the server socket exists.
//! - `--single-file-segments` is needed for virtio-user (otherwise "Too many memory
//!   regions"); `-m 256` plus `--total-num-mbufs=16384` keeps each process at 256 MiB of
//!   hugepages. Without `--total-num-mbufs` testpmd sizes its pool for every possible port
//!   (n=155456, about 340 MB) and grows beyond `-m`.
//! - `--in-memory` works for virtio-user too (memfd-backed), but every in-memory process
//!   shares `/var/run/dpdk/rte` for telemetry; the harness uses a unique `--file-prefix` and
//!   removes `<hugetlbfs>/<prefix>map_*` and `/var/run/dpdk/<prefix>` itself, since DPDK
//!   leaves them behind even on a clean exit (a later EAL start would reclaim unlocked ones).
//! - `--no-pci` avoids scanning (there is no VFIO here anyway). Promiscuous mode is not
//!   supported by virtio-user ("Error during enabling promiscuous mode ... ignore"): harmless.
//! - The kernel strips the VLAN tag of every received frame into metadata, veth included:
//!   an AF_PACKET socket sees untagged bytes unless it reads `PACKET_AUXDATA`.
//!   [`RawSocket`] puts the tag back. Sending a tagged frame through AF_PACKET works as is.
//! - Interface names have 15 bytes at most: use [`unique_name`] / [`VethPair::unique`].

#![deny(missing_docs)]

pub mod cni;
pub mod device_plugin;
pub mod env;
pub mod kubelet;
pub mod modules;
pub mod netns;
pub mod node_pod;
pub mod podman;
pub mod process;
pub mod qemu;
pub mod raw;
pub mod soak;
pub mod stats;
pub mod switch;
pub mod testpmd;

pub use env::{
    exclusive_cpus, free_file_prefix, require_dpdk_peers, require_hugepages, require_root,
    require_tool, unique_name, wait_for_socket, wait_until, HugepageInfo,
};
pub use kubelet::{Allocation, DeviceUpdate, Registration, TestKubelet};
pub use netns::{Netns, VethPair};
pub use qemu::{
    Guest, GuestConfig, GuestImage, GuestRole, SocketMode, VhostKind, MARK_BIG_PING,
    MARK_PING_FAIL, MARK_PING_PASS, MARK_UP,
};
pub use raw::{ethernet_frame, frame_vlan, Frame, RawSocket};
pub use stats::{latest_port_stats, parse_port_stats_blocks, PortStats};
pub use switch::{
    config_yaml, mac_pair_generator, run_expect_failure, run_loop, run_with_config,
    workspace_binary, SwitchProcess,
};
pub use testpmd::{Control, ForwardMode, PortSpec, Testpmd, TestpmdBuilder};
