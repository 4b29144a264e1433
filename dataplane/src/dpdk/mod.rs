//! Safe wrappers over the DPDK calls Heddle makes: the EAL, mempools, mbufs and ethdev
//! ports, with errors taken from `rte_errno` as typed values.
//!
//! Ownership rules: the EAL is started once per process ([`Eal::init`]); a [`Mempool`] lives
//! as long as the process (DPDK mempools are freed only when nothing can still point into
//! them, which for a switch is never); an [`Mbuf`] owns one buffer and frees it on drop; an
//! [`EthPort`] is configured, started, stopped and closed through `&mut self` by the control
//! plane, while PMD workers only ever call the burst functions through [`io::DpdkIo`].

mod eal;
mod error;
mod ethdev;
pub mod io;
mod mbuf;
mod mempool;
mod rxpool;

pub use eal::{tsc, Eal};
pub use error::DpdkError;
pub use ethdev::{EthPort, EthStats, LinkStatus, PortInfo, QueueConfig};
pub use mbuf::Mbuf;
pub use mempool::Mempool;
pub use rxpool::MbufPool;
