//! Native memif ports: Heddle's own implementation of the shared-memory packet interface
//! (libmemif / DPDK `net_memif` / VPP wire format 2.0), switch as master (server).
//!
//! - [`protocol`]: the control messages on the `SOCK_SEQPACKET` socket, parsed and encoded.
//! - [`session`]: one connection's handshake (`HELLO`, `INIT`, `ADD_REGION`, `ADD_RING`,
//!   `CONNECT`), every value checked against what the port offers and what was mapped.
//! - [`queue`]: the peer's regions mapped into the switch and one ring's poll-mode fast
//!   path (receive and transmit), hardened against a peer that lies.
//! - [`ring`]: how running rings pass to the PMD workers without a lock on their side.
//! - [`port`]: the port's socket and control thread.
//! - `testing` (feature `testing`): an in-process memif slave (the client side, as a pod's
//!   DPDK or libmemif would be), with hooks to misbehave; `fuzz` (feature `testing`): the
//!   control-protocol fuzzer's entry point.
//!
//! Written by hand: no maintained Rust crate implements memif (the crates of that name are
//! unmaintained bindings to the C libmemif, which would bring back a C library on the path
//! this module exists to harden). Nothing is taken from DPDK's or libmemif's sources; the
//! wire layout follows the published format that both interoperate on.

#[cfg(any(test, feature = "testing"))]
pub mod fuzz;
pub mod port;
pub mod protocol;
pub mod queue;
pub mod ring;
pub mod session;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod tests;
