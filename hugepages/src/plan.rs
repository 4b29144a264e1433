//! Turning a memory budget into a checked plan and EAL arguments.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::discover::pool_dir;
use crate::size::{pages_for_mib, pages_mib_ceil, pages_mib_floor};
use crate::{parse_size, Error, Inventory};

/// The daemon's `memory:` section.
///
/// Every field has a default, so an empty section is valid; unknown fields are
/// rejected. Budgets are rounded **up** to whole pages: 3 MiB of 2 MiB pages
/// becomes 2 pages (4 MiB), 256 MiB of 1 GiB pages becomes one page (1024 MiB),
/// and the rounded figure is what the EAL is given.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// MiB per NUMA node, index = node. Default `[256]`. On hosts without
    /// per-node pools the entries are summed. Trailing entries for nodes the
    /// host lacks are allowed only when they are 0.
    pub socket_mem_mb: Vec<u64>,
    /// Hugepage size: `"2M"` or `"1G"` (any form [`parse_size`] accepts). Default `"2M"`.
    pub page_size: String,
    /// hugetlbfs mount to use. Default: the first hugetlbfs mount of that page
    /// size; if there is none and `reserve` is true, one is mounted at
    /// `/dev/hugepages` (2 MiB) or `/dev/hugepages1G` (1 GiB), under `sys_root`.
    pub huge_dir: Option<PathBuf>,
    /// Raise `nr_hugepages` and mount hugetlbfs when short. Default false:
    /// shortages are errors. Reservations are only ever raised, never lowered.
    pub reserve: bool,
    /// DPDK `--file-prefix`. Default `"heddle"`.
    pub file_prefix: String,
    /// Run the EAL without hugepages (`--no-huge -m <sum>`), for tests. Default false.
    pub no_huge: bool,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            socket_mem_mb: vec![256],
            page_size: "2M".to_string(),
            huge_dir: None,
            reserve: false,
            file_prefix: "heddle".to_string(),
            no_huge: false,
        }
    }
}

/// EAL memory arguments, ready to append to the EAL argv.
///
/// For example `["--socket-mem", "1024,0", "--huge-dir", "/dev/hugepages",
/// "--file-prefix", "heddle"]`, or `["--no-huge", "-m", "256", "--file-prefix",
/// "heddle"]`. Hosts without per-node pools get `["-m", "<total>", ...]`
/// instead of `--socket-mem`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EalMemory {
    /// The arguments, in order.
    pub args: Vec<String>,
}

/// The budget of one NUMA node (or of the system-wide pool) against what it has.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodePlan {
    /// NUMA node, or `None` for the system-wide pool.
    pub numa_node: Option<u32>,
    /// Budget as configured, MiB (the sum of `socket_mem_mb` for the system-wide pool).
    pub budget_mb: u64,
    /// Pages needed: the budget rounded up to whole pages.
    pub pages_needed: u64,
    /// Pages in the pool now (`nr_hugepages`).
    pub pages_total: u64,
    /// Pages free for use now (`free - reserved`).
    pub pages_available: u64,
    /// Pages missing: `pages_needed - pages_available`, or 0.
    pub pages_short: u64,
    /// The `nr_hugepages` value that covers the budget (`pages_total +
    /// pages_short`); equal to `pages_total` when nothing is short.
    pub nr_target: u64,
    /// The pool's `nr_hugepages` file, on the host (`/sys/...`).
    pub nr_path: PathBuf,
}

impl NodePlan {
    /// Budget rounded up to whole pages, in MiB.
    pub fn needed_mb(&self, page_size_kb: u64) -> u64 {
        pages_mib_ceil(self.pages_needed, page_size_kb)
    }

    /// Available pages, in MiB (rounded down).
    pub fn available_mb(&self, page_size_kb: u64) -> u64 {
        pages_mib_floor(self.pages_available, page_size_kb)
    }
}

/// The outcome of checking a [`MemoryConfig`] against an [`Inventory`].
///
/// [`plan`] returns it only when the budget fits, or when `reserve` is true and
/// the shortfalls listed here are what [`crate::prepare`] would fix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Plan {
    /// Page size in kB.
    pub page_size_kb: u64,
    /// Whether the budget is checked per NUMA node (`--socket-mem`) or
    /// against the system-wide pool (`-m`).
    pub numa_aware: bool,
    /// One entry per host NUMA node (all nodes, including those with a 0 budget),
    /// or a single system-wide entry; empty with `no_huge`.
    pub nodes: Vec<NodePlan>,
    /// The hugetlbfs mount the EAL will use; `None` with `no_huge`.
    pub huge_dir: Option<PathBuf>,
    /// Whether hugetlbfs still has to be mounted at `huge_dir`.
    pub mount_needed: bool,
    /// The EAL arguments.
    pub eal: EalMemory,
}

impl Plan {
    /// Entries whose pool is short of pages.
    pub fn shortfalls(&self) -> impl Iterator<Item = &NodePlan> {
        self.nodes.iter().filter(|n| n.pages_short > 0)
    }

    /// True when nothing needs reserving or mounting.
    pub fn is_ready(&self) -> bool {
        !self.mount_needed && self.shortfalls().next().is_none()
    }
}

/// Checks `cfg` against `inv` without touching the host.
///
/// Fails with a one-sentence [`Error`] when the configuration is invalid for
/// this host (page size, NUMA node, prefix, empty budget). When pages are short
/// or no hugetlbfs mount exists, it fails with [`Error::Shortfall`] /
/// [`Error::NoMount`] / [`Error::HugeDirNotMounted`] if `cfg.reserve` is false,
/// and otherwise returns a plan listing what [`crate::prepare`] would reserve
/// and mount. With `no_huge` the inventory is not consulted.
pub fn plan(cfg: &MemoryConfig, inv: &Inventory) -> Result<Plan, Error> {
    let plan = build(cfg, inv, Path::new("/"))?;
    if !cfg.reserve {
        if let Some(short) = plan.shortfalls().next() {
            return Err(shortfall_error(short, plan.page_size_kb));
        }
        if plan.mount_needed {
            let dir = plan.huge_dir.clone().unwrap_or_default();
            return Err(if cfg.huge_dir.is_some() {
                Error::HugeDirNotMounted {
                    dir,
                    page_size_kb: plan.page_size_kb,
                }
            } else {
                Error::NoMount {
                    page_size_kb: plan.page_size_kb,
                    suggested: dir,
                }
            });
        }
    }
    Ok(plan)
}

pub(crate) fn shortfall_error(n: &NodePlan, page_size_kb: u64) -> Error {
    Error::Shortfall {
        node: n.numa_node,
        page_size_kb,
        needed_mb: n.needed_mb(page_size_kb),
        free_mb: n.available_mb(page_size_kb),
        nr_target: n.nr_target,
        nr_path: n.nr_path.clone(),
    }
}

/// Default mount point for a page size: `/dev/hugepages` for 2 MiB,
/// `/dev/hugepages1G` for 1 GiB, `/dev/hugepages<label>` otherwise.
pub(crate) fn default_mount_dir(page_size_kb: u64) -> PathBuf {
    if page_size_kb == 2048 {
        PathBuf::from("/dev/hugepages")
    } else {
        PathBuf::from(format!(
            "/dev/hugepages{}",
            crate::size::label(page_size_kb)
        ))
    }
}

/// `path` re-rooted under `root` (identity when `root` is `/`).
pub(crate) fn rebase(root: &Path, path: &Path) -> PathBuf {
    if root == Path::new("/") {
        return path.to_path_buf();
    }
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn validate_prefix(prefix: &str) -> Result<(), Error> {
    if prefix.is_empty() || prefix.contains('/') || prefix.chars().any(char::is_whitespace) {
        return Err(Error::InvalidFilePrefix {
            prefix: prefix.to_string(),
        });
    }
    Ok(())
}

/// The plan with shortfalls and missing mounts recorded rather than reported.
/// `sys_root` places the default mount point.
pub(crate) fn build(cfg: &MemoryConfig, inv: &Inventory, sys_root: &Path) -> Result<Plan, Error> {
    validate_prefix(&cfg.file_prefix)?;
    let page_size_kb = parse_size(&cfg.page_size)?;
    let total_mb = cfg
        .socket_mem_mb
        .iter()
        .fold(0u64, |acc, &mb| acc.saturating_add(mb));
    if total_mb == 0 {
        return Err(Error::EmptyBudget);
    }
    let prefix_args = |mut args: Vec<String>| {
        args.push("--file-prefix".to_string());
        args.push(cfg.file_prefix.clone());
        EalMemory { args }
    };

    if cfg.no_huge {
        return Ok(Plan {
            page_size_kb,
            numa_aware: false,
            nodes: Vec::new(),
            huge_dir: None,
            mount_needed: false,
            eal: prefix_args(vec![
                "--no-huge".to_string(),
                "-m".to_string(),
                total_mb.to_string(),
            ]),
        });
    }

    let host_sizes = inv.page_sizes_kb();
    if !host_sizes.contains(&page_size_kb) {
        return Err(Error::UnsupportedPageSize {
            requested: cfg.page_size.trim().to_string(),
            host_sizes_kb: host_sizes,
        });
    }

    let numa_aware = inv.numa_aware();
    let node_plan = |node: Option<u32>, budget_mb: u64| {
        let pool = inv
            .pools
            .iter()
            .find(|p| p.numa_node == node && p.page_size_kb == page_size_kb);
        let pages_needed = pages_for_mib(budget_mb, page_size_kb);
        let pages_total = pool.map_or(0, |p| p.total);
        let pages_available = pool.map_or(0, |p| p.available());
        let pages_short = pages_needed.saturating_sub(pages_available);
        NodePlan {
            numa_node: node,
            budget_mb,
            pages_needed,
            pages_total,
            pages_available,
            pages_short,
            nr_target: pages_total.saturating_add(pages_short),
            nr_path: pool_dir(Path::new("/"), node, page_size_kb).join("nr_hugepages"),
        }
    };

    let (nodes, mem_args) = if numa_aware {
        let mut host_nodes: Vec<u32> = inv
            .pools
            .iter()
            .filter_map(|p| p.numa_node)
            .chain(inv.numa_nodes.iter().copied())
            .collect();
        host_nodes.sort_unstable();
        host_nodes.dedup();
        for (i, &mb) in cfg.socket_mem_mb.iter().enumerate() {
            let node = u32::try_from(i).unwrap_or(u32::MAX);
            if mb > 0 && !host_nodes.contains(&node) {
                return Err(Error::UnknownNumaNode { node, host_nodes });
            }
        }
        let nodes: Vec<NodePlan> = host_nodes
            .iter()
            .map(|&n| {
                let budget = usize::try_from(n)
                    .ok()
                    .and_then(|i| cfg.socket_mem_mb.get(i))
                    .copied()
                    .unwrap_or(0);
                node_plan(Some(n), budget)
            })
            .collect();
        let max_node = host_nodes.last().copied().unwrap_or(0);
        let per_socket: Vec<String> = (0..=max_node)
            .map(|n| {
                nodes
                    .iter()
                    .find(|p| p.numa_node == Some(n))
                    .map_or(0, |p| pages_mib_ceil(p.pages_needed, page_size_kb))
                    .to_string()
            })
            .collect();
        (
            nodes,
            vec!["--socket-mem".to_string(), per_socket.join(",")],
        )
    } else {
        let node = node_plan(None, total_mb);
        let mb = pages_mib_ceil(node.pages_needed, page_size_kb);
        (vec![node], vec!["-m".to_string(), mb.to_string()])
    };

    let (huge_dir, mount_needed) = match &cfg.huge_dir {
        Some(dir) => match inv.mounts.iter().rev().find(|m| m.path == *dir) {
            Some(m) if m.page_size_kb == page_size_kb => (dir.clone(), false),
            Some(m) => {
                return Err(Error::HugeDirWrongSize {
                    dir: dir.clone(),
                    mounted_kb: m.page_size_kb,
                    wanted_kb: page_size_kb,
                })
            }
            None => (dir.clone(), true),
        },
        None => match inv.mounts.iter().find(|m| m.page_size_kb == page_size_kb) {
            Some(m) => (m.path.clone(), false),
            None => {
                let dir = rebase(sys_root, &default_mount_dir(page_size_kb));
                if let Some(m) = inv.mounts.iter().rev().find(|m| m.path == dir) {
                    return Err(Error::MountPointBusy {
                        dir,
                        mounted_kb: m.page_size_kb,
                        wanted_kb: page_size_kb,
                    });
                }
                (dir, true)
            }
        },
    };

    let mut args = mem_args;
    args.push("--huge-dir".to_string());
    args.push(huge_dir.to_string_lossy().into_owned());
    Ok(Plan {
        page_size_kb,
        numa_aware,
        nodes,
        huge_dir: Some(huge_dir),
        mount_needed,
        eal: prefix_args(args),
    })
}
