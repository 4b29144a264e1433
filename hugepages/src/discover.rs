//! Reading the hugepage inventory from sysfs and procfs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{parse_size, Error};

/// Where the kernel's hugepage files live.
///
/// [`SysPaths::host`] is the real host; [`SysPaths::under`] points everything at
/// a copy of the tree (tests, or a host root mounted into a container).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysPaths {
    /// Root under which `sys/kernel/mm/hugepages` and `sys/devices/system/node`
    /// are found; normally `/`. Default hugetlbfs mount points
    /// (`dev/hugepages`, `dev/hugepages1G`) are also placed under it.
    pub sys_root: PathBuf,
    /// The mounts table, normally `/proc/mounts`.
    pub proc_mounts: PathBuf,
    /// The memory summary, normally `/proc/meminfo`.
    pub meminfo: PathBuf,
}

impl SysPaths {
    /// The running host: `/`, `/proc/mounts`, `/proc/meminfo`.
    pub fn host() -> Self {
        Self {
            sys_root: PathBuf::from("/"),
            proc_mounts: PathBuf::from("/proc/mounts"),
            meminfo: PathBuf::from("/proc/meminfo"),
        }
    }

    /// A tree rooted at `root`: sysfs under `root/sys`, procfs files under `root/proc`.
    pub fn under(root: &Path) -> Self {
        Self {
            sys_root: root.to_path_buf(),
            proc_mounts: root.join("proc/mounts"),
            meminfo: root.join("proc/meminfo"),
        }
    }

    /// `<root>/sys/kernel/mm/hugepages`.
    pub(crate) fn hugepages_dir(&self) -> PathBuf {
        self.sys_root.join("sys/kernel/mm/hugepages")
    }

    /// `<root>/sys/devices/system/node`.
    pub(crate) fn node_dir(&self) -> PathBuf {
        self.sys_root.join("sys/devices/system/node")
    }
}

/// The directory of one hugepage pool under `sys_root`: per node when `node`
/// is `Some`, system-wide otherwise.
pub(crate) fn pool_dir(sys_root: &Path, node: Option<u32>, page_size_kb: u64) -> PathBuf {
    let base = match node {
        Some(n) => sys_root.join(format!("sys/devices/system/node/node{n}/hugepages")),
        None => sys_root.join("sys/kernel/mm/hugepages"),
    };
    base.join(format!("hugepages-{page_size_kb}kB"))
}

/// One pool of hugepages of one size, on one NUMA node or system-wide.
///
/// Counts are in pages. `total` is `nr_hugepages` (the persistent pool).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PagePool {
    /// Page size in kB (2048 for 2 MiB pages).
    pub page_size_kb: u64,
    /// NUMA node; `None` for the system-wide pool when the host has no per-node pools.
    pub numa_node: Option<u32>,
    /// `nr_hugepages`.
    pub total: u64,
    /// `free_hugepages`.
    pub free: u64,
    /// `resv_hugepages`: free pages promised to mappings. Only the system-wide
    /// pool reports it; per-node pools use 0.
    pub reserved: u64,
    /// `surplus_hugepages`.
    pub surplus: u64,
}

impl PagePool {
    /// Pages that can still be handed out: `free - reserved`, saturating at 0.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }
}

/// A hugetlbfs mount from the mounts table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HugetlbMount {
    /// The mount point.
    pub path: PathBuf,
    /// Page size in kB: the `pagesize=` option, else the default hugepage size.
    pub page_size_kb: u64,
}

/// What the host offers: page sizes, NUMA nodes, pools and hugetlbfs mounts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Inventory {
    /// `Hugepagesize` from meminfo, kB.
    pub default_page_size_kb: u64,
    /// NUMA nodes found under `sys/devices/system/node`, ascending; empty when there are none.
    pub numa_nodes: Vec<u32>,
    /// One pool per NUMA node per page size when the nodes have per-node
    /// hugepage directories, else one system-wide pool per page size; sorted
    /// by node, then size.
    pub pools: Vec<PagePool>,
    /// hugetlbfs mounts in mounts-table order.
    pub mounts: Vec<HugetlbMount>,
}

impl Inventory {
    /// Whether pools are per NUMA node (true) or system-wide (false).
    pub fn numa_aware(&self) -> bool {
        self.pools.iter().any(|p| p.numa_node.is_some())
    }

    /// The host's hugepage sizes in kB, ascending and without duplicates.
    pub fn page_sizes_kb(&self) -> Vec<u64> {
        let mut sizes: Vec<u64> = self.pools.iter().map(|p| p.page_size_kb).collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }
}

/// Reads the hugepage inventory: sizes and counts from sysfs, the default
/// size from meminfo and the hugetlbfs mounts from the mounts table.
///
/// Fails with [`Error::NoHugepages`] when `sys/kernel/mm/hugepages` is
/// missing, and with [`Error::Io`] / [`Error::Parse`] naming the file when a
/// file cannot be read or understood.
pub fn discover(paths: &SysPaths) -> Result<Inventory, Error> {
    let hp = paths.hugepages_dir();
    if !hp.is_dir() {
        return Err(Error::NoHugepages { path: hp });
    }
    let default_page_size_kb = read_default_size(&paths.meminfo)?;
    let sizes = list_sizes(&hp)?;
    let numa_nodes = list_nodes(&paths.node_dir())?;

    let mut pools = Vec::new();
    for &node in &numa_nodes {
        let dir = paths.node_dir().join(format!("node{node}/hugepages"));
        if !dir.is_dir() {
            continue;
        }
        for kb in list_sizes(&dir)? {
            pools.push(read_pool(&paths.sys_root, Some(node), kb)?);
        }
    }
    if pools.is_empty() {
        for kb in sizes {
            pools.push(read_pool(&paths.sys_root, None, kb)?);
        }
    }
    pools.sort_by_key(|p| (p.numa_node, p.page_size_kb));

    let mounts = read_mounts(&paths.proc_mounts, default_page_size_kb)?;
    Ok(Inventory {
        default_page_size_kb,
        numa_nodes,
        pools,
        mounts,
    })
}

/// Reads one pool's counters. `resv_hugepages` is read only for the
/// system-wide pool; missing `resv`/`surplus` files count as 0.
pub(crate) fn read_pool(sys_root: &Path, node: Option<u32>, kb: u64) -> Result<PagePool, Error> {
    let dir = pool_dir(sys_root, node, kb);
    Ok(PagePool {
        page_size_kb: kb,
        numa_node: node,
        total: read_u64(&dir.join("nr_hugepages"))?,
        free: read_u64(&dir.join("free_hugepages"))?,
        reserved: match node {
            Some(_) => 0,
            None => read_u64_or_zero(&dir.join("resv_hugepages"))?,
        },
        surplus: read_u64_or_zero(&dir.join("surplus_hugepages"))?,
    })
}

fn read_text(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a file holding one unsigned number.
pub(crate) fn read_u64(path: &Path) -> Result<u64, Error> {
    let text = read_text(path)?;
    text.trim().parse().map_err(|_| Error::Parse {
        path: path.to_path_buf(),
        detail: format!("expected a page count, found {:?}", text.trim()),
    })
}

fn read_u64_or_zero(path: &Path) -> Result<u64, Error> {
    if path.exists() {
        read_u64(path)
    } else {
        Ok(0)
    }
}

fn read_default_size(meminfo: &Path) -> Result<u64, Error> {
    let text = read_text(meminfo)?;
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("Hugepagesize:"))
        .ok_or_else(|| Error::Parse {
            path: meminfo.to_path_buf(),
            detail: "no Hugepagesize line".to_string(),
        })?;
    parse_size(value).map_err(|_| Error::Parse {
        path: meminfo.to_path_buf(),
        detail: format!("Hugepagesize {:?} is not a size", value.trim()),
    })
}

fn list_dir(dir: &Path) -> Result<Vec<String>, Error> {
    let io_err = |source: io::Error| Error::Io {
        action: "list",
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// Page sizes (kB) named by `hugepages-<N>kB` entries of `dir`, ascending.
fn list_sizes(dir: &Path) -> Result<Vec<u64>, Error> {
    let mut sizes: Vec<u64> = list_dir(dir)?
        .iter()
        .filter_map(|n| {
            n.strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()
        })
        .collect();
    sizes.sort_unstable();
    Ok(sizes)
}

/// NUMA nodes named by `node<N>` entries of `dir`, ascending; none when `dir` is missing.
fn list_nodes(dir: &Path) -> Result<Vec<u32>, Error> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut nodes: Vec<u32> = list_dir(dir)?
        .iter()
        .filter_map(|n| n.strip_prefix("node")?.parse().ok())
        .collect();
    nodes.sort_unstable();
    Ok(nodes)
}

/// hugetlbfs entries of a mounts table.
fn read_mounts(path: &Path, default_kb: u64) -> Result<Vec<HugetlbMount>, Error> {
    let text = read_text(path)?;
    let mut mounts = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(target), Some(&"hugetlbfs")) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        let options = fields.get(3).copied().unwrap_or("");
        let page_size_kb = match options.split(',').find_map(|o| o.strip_prefix("pagesize=")) {
            Some(size) => parse_size(size).map_err(|_| Error::Parse {
                path: path.to_path_buf(),
                detail: format!(
                    "hugetlbfs mount {target} has pagesize={size}, which is not a size"
                ),
            })?,
            None => default_kb,
        };
        mounts.push(HugetlbMount {
            path: unescape_mount_path(target),
            page_size_kb,
        });
    }
    Ok(mounts)
}

/// Undoes the octal escapes (`\040` for a space and so on) of the mounts table.
fn unescape_mount_path(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(digits) = bytes.get(i + 1..i + 4) {
                if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                    let v = digits
                        .iter()
                        .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                    if let Ok(b) = u8::try_from(v) {
                        out.push(b);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}
