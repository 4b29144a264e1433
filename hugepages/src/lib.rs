//! Hugepage discovery, reservation and EAL memory arguments.
//!
//! The daemon's `memory:` section ([`MemoryConfig`]) states a budget in MiB per
//! NUMA node and a page size. This crate
//!
//! * reads what the host offers ([`discover`] → [`Inventory`]): page sizes,
//!   per-node (or system-wide) pools and hugetlbfs mounts;
//! * checks the budget without side effects ([`plan`] → [`Plan`]);
//! * optionally raises `nr_hugepages` and mounts hugetlbfs, then re-checks
//!   ([`prepare`] → [`EalMemory`], the EAL arguments).
//!
//! Every failure is an [`Error`] whose message is one sentence naming the
//! shortfall and the setting or command that fixes it, e.g.
//! `needs 1024 MiB of 2 MiB pages on NUMA 0, 512 MiB free: reserve more (echo 512 >
//! /sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages), set
//! memory.reserve: true, or lower memory.socket_mem_mb`.
//!
//! Budgets are rounded up to whole pages. Reservations are only ever raised,
//! never lowered.

mod discover;
mod error;
mod plan;
mod prepare;
mod size;

#[cfg(test)]
mod tests;

pub use discover::{discover, HugetlbMount, Inventory, PagePool, SysPaths};
pub use error::Error;
pub use plan::{plan, EalMemory, MemoryConfig, NodePlan, Plan};
pub use prepare::prepare;
pub use size::parse_size;
