use std::ffi::{CStr, CString};

use super::error::{strerror, DpdkError};
use super::mempool::Mempool;

/// Queue layout and ring sizes for [`EthPort::start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// RX queues (spread across PMD workers).
    pub rx_queues: u16,
    /// TX queues (one per PMD worker when the device has enough).
    pub tx_queues: u16,
    /// RX descriptors per queue.
    pub rx_ring: u16,
    /// TX descriptors per queue.
    pub tx_ring: u16,
}

/// What the driver says about a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Driver name, e.g. `net_vhost`.
    pub driver: String,
    /// Most RX queues the device has.
    pub max_rx_queues: u16,
    /// Most TX queues the device has.
    pub max_tx_queues: u16,
    /// NUMA node of the device, if known.
    pub socket: Option<u32>,
    /// The port's MAC address.
    pub mac: [u8; 6],
    /// Largest MTU the device takes: its `max_mtu`, and no more than its largest received
    /// frame (`max_rx_pktlen`) leaves room for after the Ethernet overhead, as
    /// `rte_eth_dev_configure` checks.
    pub max_mtu: u16,
}

/// Link state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LinkStatus {
    /// Link up.
    pub up: bool,
    /// Speed in Mbit/s (0 when unknown).
    pub speed_mbps: u32,
}

/// The device's own counters (`rte_eth_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EthStats {
    /// Packets received by the device.
    pub ipackets: u64,
    /// Packets sent by the device.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
    /// RX packets dropped by the hardware because no RX buffer was free.
    pub imissed: u64,
    /// Erroneous received packets.
    pub ierrors: u64,
    /// Failed transmissions.
    pub oerrors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// A DPDK ethdev port made from devargs (a PCI address or a vdev such as
/// `net_vhost0,iface=/run/heddle/a.sock`). Control-plane only: PMD workers reach the port
/// through its id in the burst functions.
#[derive(Debug)]
pub struct EthPort {
    id: u16,
    name: String,
    bus: &'static str,
    started: bool,
}

fn port_err(id: u16, name: &str, op: &'static str, rc: i32) -> DpdkError {
    let code = rc.abs();
    DpdkError::Port {
        port: id,
        name: name.to_owned(),
        op,
        code,
        msg: strerror(code),
    }
}

fn port_by_name(name: &str) -> Option<u16> {
    let c = CString::new(name).ok()?;
    let mut id = 0u16;
    // SAFETY: `c` is a valid C string and `id` a valid out pointer for the call's duration.
    let rc = unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
    (rc == 0).then_some(id)
}

/// The MTU limit `rte_eth_dev_configure` applies: `max_mtu`, and `max_rx_pktlen` minus the
/// device's overhead (`max_rx_pktlen - max_mtu` when the driver sets both, else Ethernet
/// header and CRC, 18 bytes).
fn max_mtu(max_mtu: u16, max_rx_pktlen: u32) -> u16 {
    let overhead = if max_mtu != u16::MAX && max_rx_pktlen > u32::from(max_mtu) {
        max_rx_pktlen - u32::from(max_mtu)
    } else {
        18
    };
    let by_len = max_rx_pktlen.saturating_sub(overhead);
    u16::try_from(by_len.min(u32::from(max_mtu))).unwrap_or(u16::MAX)
}

impl EthPort {
    /// The device name in `devargs`: everything before the first comma.
    pub fn device_name(devargs: &str) -> &str {
        devargs.split(',').next().unwrap_or(devargs).trim()
    }

    /// Hot-plugs the device named by `devargs` and finds its ethdev port.
    pub fn probe(devargs: &str) -> Result<EthPort, DpdkError> {
        let name = Self::device_name(devargs).to_owned();
        if port_by_name(&name).is_some() {
            return Err(DpdkError::Probe {
                devargs: devargs.to_owned(),
                msg: format!("device {name} already exists in this switch"),
            });
        }
        let c = CString::new(devargs).map_err(|_| DpdkError::NulByte(devargs.to_owned()))?;
        // SAFETY: the EAL is running (EthPorts are made after Eal::init); `c` is a valid C
        // string that DPDK parses and copies.
        let rc = unsafe { dpdk_sys::rte_dev_probe(c.as_ptr()) };
        if rc < 0 {
            return Err(DpdkError::Probe {
                devargs: devargs.to_owned(),
                msg: strerror(-rc),
            });
        }
        let bus = if name.starts_with("net_") || name.starts_with("eth_") {
            "vdev"
        } else {
            "pci"
        };
        match port_by_name(&name) {
            Some(id) => Ok(EthPort {
                id,
                name,
                bus,
                started: false,
            }),
            None => {
                Self::unplug(bus, &name);
                Err(DpdkError::NoPort(name))
            }
        }
    }

    fn unplug(bus: &str, name: &str) {
        let (Ok(b), Ok(n)) = (CString::new(bus), CString::new(name)) else {
            return;
        };
        // SAFETY: valid C strings; removing an absent device only returns an error.
        let rc = unsafe { dpdk_sys::rte_eal_hotplug_remove(b.as_ptr(), n.as_ptr()) };
        if rc < 0 {
            tracing::warn!(device = name, error = %strerror(-rc), "hotplug remove failed");
        }
    }

    /// DPDK port id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Driver facts: queue limits, NUMA node, MAC.
    pub fn info(&self) -> Result<PortInfo, DpdkError> {
        let mut info = dpdk_sys::rte_eth_dev_info::default();
        // SAFETY: the port id is valid while this EthPort lives; `info` is a valid out pointer.
        let rc = unsafe { dpdk_sys::rte_eth_dev_info_get(self.id, &mut info) };
        if rc != 0 {
            return Err(port_err(self.id, &self.name, "info", rc));
        }
        let driver = if info.driver_name.is_null() {
            String::new()
        } else {
            // SAFETY: driver_name points to the driver's static NUL-terminated name.
            unsafe { CStr::from_ptr(info.driver_name) }
                .to_string_lossy()
                .into_owned()
        };
        // SAFETY: valid port id.
        let socket = unsafe { dpdk_sys::rte_eth_dev_socket_id(self.id) };
        let mut mac = dpdk_sys::rte_ether_addr::default();
        // SAFETY: valid port id and out pointer.
        unsafe { dpdk_sys::rte_eth_macaddr_get(self.id, &mut mac) };
        Ok(PortInfo {
            driver,
            max_rx_queues: info.max_rx_queues,
            max_tx_queues: info.max_tx_queues,
            socket: u32::try_from(socket).ok(),
            mac: mac.addr_bytes,
            max_mtu: max_mtu(info.max_mtu, info.max_rx_pktlen),
        })
    }

    /// Configures queues with buffers from `pool` and the device's MTU (frames up to `mtu`
    /// bytes after the Ethernet header, which must fit one buffer of `pool`: the switch
    /// neither asks for scattered RX nor sends multi-segment frames), enables promiscuous
    /// mode (a switch port must see every MAC) and starts the port.
    pub fn start(&mut self, q: QueueConfig, pool: &Mempool, mtu: u16) -> Result<(), DpdkError> {
        let mut conf = dpdk_sys::rte_eth_conf::default();
        conf.rxmode.mtu = u32::from(mtu);
        // SAFETY: valid port id; `conf` is a zeroed default configuration DPDK only reads.
        let rc =
            unsafe { dpdk_sys::rte_eth_dev_configure(self.id, q.rx_queues, q.tx_queues, &conf) };
        if rc != 0 {
            return Err(port_err(self.id, &self.name, "configure", rc));
        }
        // SAFETY: valid port id.
        let socket = unsafe { dpdk_sys::rte_eth_dev_socket_id(self.id) };
        let socket = u32::try_from(socket).unwrap_or(dpdk_sys::SOCKET_ID_ANY as u32);
        for rxq in 0..q.rx_queues {
            // SAFETY: the port is configured with `rx_queues` queues; a null rx_conf means the
            // driver's defaults; the pool outlives the port (pools live for the process).
            let rc = unsafe {
                dpdk_sys::rte_eth_rx_queue_setup(
                    self.id,
                    rxq,
                    q.rx_ring,
                    socket,
                    std::ptr::null(),
                    pool.as_ptr(),
                )
            };
            if rc != 0 {
                return Err(port_err(self.id, &self.name, "rx queue setup", rc));
            }
        }
        for txq in 0..q.tx_queues {
            // SAFETY: as above for TX queues.
            let rc = unsafe {
                dpdk_sys::rte_eth_tx_queue_setup(self.id, txq, q.tx_ring, socket, std::ptr::null())
            };
            if rc != 0 {
                return Err(port_err(self.id, &self.name, "tx queue setup", rc));
            }
        }
        // SAFETY: valid, configured port. Some vdevs have no promiscuous switch (they see
        // every frame anyway) and answer -ENOTSUP, which is fine.
        let rc = unsafe { dpdk_sys::rte_eth_promiscuous_enable(self.id) };
        if rc != 0 && rc != -(libc::ENOTSUP) {
            tracing::debug!(port = %self.name, error = %strerror(-rc), "promiscuous mode not enabled");
        }
        // SAFETY: valid, configured port with all queues set up.
        let rc = unsafe { dpdk_sys::rte_eth_dev_start(self.id) };
        if rc != 0 {
            return Err(port_err(self.id, &self.name, "start", rc));
        }
        self.started = true;
        Ok(())
    }

    /// Link state without waiting.
    pub fn link(&self) -> LinkStatus {
        let mut link = dpdk_sys::rte_eth_link::default();
        // SAFETY: valid port id and out pointer.
        let rc = unsafe { dpdk_sys::rte_eth_link_get_nowait(self.id, &mut link) };
        if rc != 0 {
            return LinkStatus {
                up: false,
                speed_mbps: 0,
            };
        }
        LinkStatus {
            up: link.link_status() != 0,
            speed_mbps: if link.link_speed == u32::MAX {
                0
            } else {
                link.link_speed
            },
        }
    }

    /// The device's counters.
    pub fn stats(&self) -> Result<EthStats, DpdkError> {
        let mut s = dpdk_sys::rte_eth_stats::default();
        // SAFETY: valid port id and out pointer.
        let rc = unsafe { dpdk_sys::rte_eth_stats_get(self.id, &mut s) };
        if rc != 0 {
            return Err(port_err(self.id, &self.name, "stats", rc));
        }
        Ok(EthStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }
}

impl Drop for EthPort {
    /// Stops and closes the port and unplugs its device. The control plane drops an
    /// EthPort only after every PMD worker has picked up a configuration without it
    /// (`SwitchCtl::finish`, reached only once `Shared::passed` holds for the removal's
    /// generation, however long a stalled worker takes), or after the workers stopped.
    fn drop(&mut self) {
        if self.started {
            // SAFETY: valid, started port; no worker polls it any more: every worker passed
            // the generation that withdrew it, or has stopped (see above).
            let rc = unsafe { dpdk_sys::rte_eth_dev_stop(self.id) };
            if rc != 0 {
                tracing::warn!(port = %self.name, error = %strerror(-rc), "stop failed");
            }
        }
        // SAFETY: valid port id; after close the id is free for reuse.
        let rc = unsafe { dpdk_sys::rte_eth_dev_close(self.id) };
        if rc != 0 {
            tracing::warn!(port = %self.name, error = %strerror(-rc), "close failed");
        }
        Self::unplug(self.bus, &self.name);
    }
}
