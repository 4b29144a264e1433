//! The crate's single error type.

use std::io;
use std::path::PathBuf;

use crate::size::{human, label};

/// Everything that can go wrong while discovering, planning or preparing hugepages.
///
/// Every message is one plain sentence that names the problem and the setting
/// or command that fixes it, so the daemon and CLI can print it as is. Variants
/// that wrap an [`io::Error`] carry the path involved; the cause's text is part
/// of the message and is also returned by [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A sysfs or procfs file or directory could not be read or created.
    #[error("cannot {action} {path} ({source}): check that sysfs and procfs are mounted and that the daemon may access them")]
    Io {
        /// What was being done: `read`, `list`, `create directory`.
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A sysfs or procfs file held something this crate does not understand.
    #[error("cannot parse {path}: {detail}; check that sys_root points at a real sysfs tree")]
    Parse {
        /// The file that was read.
        path: PathBuf,
        /// What was wrong with its content.
        detail: String,
    },
    /// The kernel exposes no hugepages at all.
    #[error("this host offers no hugepages ({path} is missing): enable hugetlbfs in the kernel or set memory.no_huge: true")]
    NoHugepages {
        /// The missing `sys/kernel/mm/hugepages` directory.
        path: PathBuf,
    },
    /// A size string is not of the form `2M`, `2048kB`, `1G`.
    #[error("{input:?} is not a page size like 2M, 2048kB or 1G: set memory.page_size")]
    InvalidSize {
        /// The text as given.
        input: String,
    },
    /// `memory.page_size` names a size the host has no pool for.
    #[error("page size {requested} is not one of this host's hugepage sizes ({}): set memory.page_size", .host_sizes_kb.iter().map(|&kb| label(kb)).collect::<Vec<_>>().join(", "))]
    UnsupportedPageSize {
        /// `memory.page_size` as written.
        requested: String,
        /// The host's hugepage sizes in kB, ascending.
        host_sizes_kb: Vec<u64>,
    },
    /// `memory.socket_mem_mb` gives a budget to a NUMA node the host does not have.
    #[error("memory.socket_mem_mb names NUMA node {node} but this host has only {}: remove the entry or set it to 0", nodes_phrase(.host_nodes))]
    UnknownNumaNode {
        /// The index in `memory.socket_mem_mb` with a non-zero budget.
        node: u32,
        /// The host's NUMA nodes.
        host_nodes: Vec<u32>,
    },
    /// The budget adds up to 0 MiB.
    #[error("memory.socket_mem_mb asks for 0 MiB in total: give at least one NUMA node a budget in memory.socket_mem_mb")]
    EmptyBudget,
    /// `memory.file_prefix` is unusable as a DPDK file prefix.
    #[error("memory.file_prefix {prefix:?} must be non-empty and free of '/' and whitespace: set memory.file_prefix")]
    InvalidFilePrefix {
        /// The prefix as written.
        prefix: String,
    },
    /// Not enough free pages and `memory.reserve` is false.
    #[error("needs {needed_mb} MiB of {} pages{}, {free_mb} MiB free: reserve more (echo {nr_target} > {}), set memory.reserve: true, or lower memory.socket_mem_mb", human(*.page_size_kb), on_node(*.node), .nr_path.display())]
    Shortfall {
        /// NUMA node, or `None` for the system-wide pool.
        node: Option<u32>,
        /// Page size in kB.
        page_size_kb: u64,
        /// Budget rounded up to whole pages, in MiB.
        needed_mb: u64,
        /// Free (unreserved) pages, in MiB.
        free_mb: u64,
        /// The `nr_hugepages` value that would cover the budget.
        nr_target: u64,
        /// The `nr_hugepages` file to write (host path).
        nr_path: PathBuf,
    },
    /// No hugetlbfs mount of the page size exists and `memory.reserve` is false.
    #[error("no hugetlbfs mount for {} pages: mount one (mount -t hugetlbfs -o pagesize={} none {}) or set memory.reserve: true", human(*.page_size_kb), label(*.page_size_kb), .suggested.display())]
    NoMount {
        /// Page size in kB.
        page_size_kb: u64,
        /// Where `prepare` would mount one.
        suggested: PathBuf,
    },
    /// `memory.huge_dir` is not a hugetlbfs mount and `memory.reserve` is false.
    #[error("memory.huge_dir {} is not a hugetlbfs mount: mount one there (mount -t hugetlbfs -o pagesize={} none {}), set memory.reserve: true, or point memory.huge_dir at an existing mount", .dir.display(), label(*.page_size_kb), .dir.display())]
    HugeDirNotMounted {
        /// `memory.huge_dir`.
        dir: PathBuf,
        /// Page size in kB.
        page_size_kb: u64,
    },
    /// `memory.huge_dir` is a hugetlbfs mount of another page size.
    #[error("memory.huge_dir {} holds {} pages, not the {} pages memory.page_size asks for: point memory.huge_dir at a pagesize={} mount or change memory.page_size", .dir.display(), human(*.mounted_kb), human(*.wanted_kb), label(*.wanted_kb))]
    HugeDirWrongSize {
        /// `memory.huge_dir`.
        dir: PathBuf,
        /// The page size of the mount there, kB.
        mounted_kb: u64,
        /// The page size asked for, kB.
        wanted_kb: u64,
    },
    /// The default mount point is taken by a hugetlbfs mount of another page size.
    #[error("{} is already a hugetlbfs mount for {} pages, so no {} mount can go there: set memory.huge_dir to a free directory", .dir.display(), human(*.mounted_kb), human(*.wanted_kb))]
    MountPointBusy {
        /// The default mount point.
        dir: PathBuf,
        /// The page size of the mount there, kB.
        mounted_kb: u64,
        /// The page size asked for, kB.
        wanted_kb: u64,
    },
    /// Writing `nr_hugepages` failed.
    #[error("cannot write {pages} to {} ({source}): run the daemon as root, or reserve the pages beforehand and set memory.reserve: false", .path.display())]
    Reserve {
        /// The `nr_hugepages` file.
        path: PathBuf,
        /// The value that was being written.
        pages: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The kernel granted fewer pages than asked for (fragmented or short memory).
    #[error("asked the kernel for {requested} pages of {}{} ({}) but it granted only {granted}, leaving {free_mb} MiB free of the {needed_mb} MiB needed: free memory or reserve the pages at boot (hugepagesz={} hugepages=N on the kernel command line), or lower memory.socket_mem_mb", human(*.page_size_kb), on_node(*.node), .nr_path.display(), label(*.page_size_kb))]
    ReservationShort {
        /// NUMA node, or `None` for the system-wide pool.
        node: Option<u32>,
        /// Page size in kB.
        page_size_kb: u64,
        /// The `nr_hugepages` value written.
        requested: u64,
        /// The `nr_hugepages` value read back.
        granted: u64,
        /// Budget rounded up to whole pages, in MiB.
        needed_mb: u64,
        /// Free (unreserved) pages after reserving, in MiB.
        free_mb: u64,
        /// The `nr_hugepages` file written.
        nr_path: PathBuf,
    },
    /// Mounting hugetlbfs failed.
    #[error("cannot mount hugetlbfs at {} ({source}): run the daemon as root, or mount it beforehand (mount -t hugetlbfs -o pagesize={} none {})", .dir.display(), label(*.page_size_kb), .dir.display())]
    Mount {
        /// The mount point.
        dir: PathBuf,
        /// Page size in kB.
        page_size_kb: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The mount call succeeded but the mount does not show in the mounts file.
    #[error("mounted hugetlbfs at {} but it does not show in {}: check that the daemon shares the host's mount namespace or mount it beforehand and set memory.huge_dir", .dir.display(), .mounts_file.display())]
    MountNotVisible {
        /// The mount point.
        dir: PathBuf,
        /// The mounts file read (normally `/proc/mounts`).
        mounts_file: PathBuf,
    },
}

/// `" on NUMA 3"`, or nothing for the system-wide pool.
fn on_node(node: Option<u32>) -> String {
    match node {
        Some(n) => format!(" on NUMA {n}"),
        None => String::new(),
    }
}

/// `node 0`, `nodes 0, 1`, or `no NUMA nodes`.
fn nodes_phrase(nodes: &[u32]) -> String {
    match nodes {
        [] => "no NUMA nodes".to_string(),
        [n] => format!("node {n}"),
        _ => format!(
            "nodes {}",
            nodes
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
