//! Reserving pages and mounting hugetlbfs, then re-checking.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::discover::{pool_dir, read_pool, read_u64};
use crate::plan::{build, plan};
use crate::size::label;
use crate::{discover, EalMemory, Error, Inventory, MemoryConfig, SysPaths};

/// The two kernel operations `prepare` performs, so tests can stand in for
/// the kernel on a temporary sysfs tree.
pub(crate) trait Kernel {
    /// Writes `pages` to an `nr_hugepages` file.
    fn set_nr_hugepages(&self, path: &Path, pages: u64) -> io::Result<()>;
    /// Mounts hugetlbfs of the given page size at `dir` (which exists).
    fn mount_hugetlbfs(&self, dir: &Path, page_size_kb: u64) -> io::Result<()>;
}

/// The real kernel.
struct HostKernel;

impl Kernel for HostKernel {
    fn set_nr_hugepages(&self, path: &Path, pages: u64) -> io::Result<()> {
        // No `create`: a missing file means a wrong path, not something to make.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)?;
        f.write_all(format!("{pages}\n").as_bytes())
    }

    fn mount_hugetlbfs(&self, dir: &Path, page_size_kb: u64) -> io::Result<()> {
        let nul = |_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte");
        let target = CString::new(dir.as_os_str().as_bytes()).map_err(nul)?;
        let source = CString::new("nodev").map_err(nul)?;
        let fstype = CString::new("hugetlbfs").map_err(nul)?;
        let data = CString::new(format!("pagesize={}", label(page_size_kb))).map_err(nul)?;
        // SAFETY: all four pointers come from CStrings that stay alive until
        // mount(2) returns, each NUL-terminated; hugetlbfs reads `data` as a
        // string of options, and the kernel does not keep any of the pointers.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Checks the budget against the host and returns the EAL memory arguments.
///
/// With `cfg.reserve` false this is [`plan`] on a fresh [`discover`]: any
/// shortfall or missing mount is an error. With `cfg.reserve` true it first
/// raises `nr_hugepages` by the pages missing (per NUMA node when the host has
/// per-node pools, system-wide otherwise) and mounts hugetlbfs where needed
/// (creating the directory), then discovers again and fails with
/// [`Error::ReservationShort`] if the kernel granted fewer pages than needed.
/// `nr_hugepages` is only ever raised, never lowered. With `cfg.no_huge` the
/// host is not consulted.
pub fn prepare(cfg: &MemoryConfig, paths: &SysPaths) -> Result<EalMemory, Error> {
    prepare_with(cfg, paths, &HostKernel)
}

/// What one reservation asked for and got.
struct Granted {
    node: Option<u32>,
    requested: u64,
    granted: u64,
}

pub(crate) fn prepare_with(
    cfg: &MemoryConfig,
    paths: &SysPaths,
    kernel: &dyn Kernel,
) -> Result<EalMemory, Error> {
    if cfg.no_huge {
        let empty = Inventory {
            default_page_size_kb: 0,
            numa_nodes: Vec::new(),
            pools: Vec::new(),
            mounts: Vec::new(),
        };
        return Ok(build(cfg, &empty, &paths.sys_root)?.eal);
    }
    let inv = discover(paths)?;
    // Validate and report exactly as `plan` does (errors when reserve is false).
    plan(cfg, &inv)?;
    let first = build(cfg, &inv, &paths.sys_root)?;
    if first.is_ready() {
        return Ok(first.eal);
    }

    let page_kb = first.page_size_kb;
    let mut grants = Vec::new();
    for node in first.shortfalls() {
        grants.push(reserve(
            paths,
            node.numa_node,
            node.pages_needed,
            page_kb,
            kernel,
        )?);
    }

    let mut cfg = cfg.clone();
    if first.mount_needed {
        if let Some(dir) = &first.huge_dir {
            fs::create_dir_all(dir).map_err(|source| Error::Io {
                action: "create directory",
                path: dir.clone(),
                source,
            })?;
            kernel
                .mount_hugetlbfs(dir, page_kb)
                .map_err(|source| Error::Mount {
                    dir: dir.clone(),
                    page_size_kb: page_kb,
                    source,
                })?;
            cfg.huge_dir = Some(dir.clone());
        }
    }

    let inv = discover(paths)?;
    let second = build(&cfg, &inv, &paths.sys_root)?;
    if let Some(short) = second.shortfalls().next() {
        let (requested, granted) = grants
            .iter()
            .find(|g| g.node == short.numa_node)
            .map_or((short.pages_total, short.pages_total), |g| {
                (g.requested, g.granted)
            });
        return Err(Error::ReservationShort {
            node: short.numa_node,
            page_size_kb: page_kb,
            requested,
            granted,
            needed_mb: short.needed_mb(page_kb),
            free_mb: short.available_mb(page_kb),
            nr_path: short.nr_path.clone(),
        });
    }
    if second.mount_needed {
        return Err(Error::MountNotVisible {
            dir: second.huge_dir.unwrap_or_default(),
            mounts_file: paths.proc_mounts.clone(),
        });
    }
    Ok(second.eal)
}

/// Raises one pool's `nr_hugepages` so that `pages_needed` pages are
/// available, based on counters read just now. Never lowers it.
fn reserve(
    paths: &SysPaths,
    node: Option<u32>,
    pages_needed: u64,
    page_kb: u64,
    kernel: &dyn Kernel,
) -> Result<Granted, Error> {
    let pool = read_pool(&paths.sys_root, node, page_kb)?;
    let nr_path = pool_dir(&paths.sys_root, node, page_kb).join("nr_hugepages");
    let short = pages_needed.saturating_sub(pool.available());
    if short == 0 {
        return Ok(Granted {
            node,
            requested: pool.total,
            granted: pool.total,
        });
    }
    let requested = pool.total.saturating_add(short);
    kernel
        .set_nr_hugepages(&nr_path, requested)
        .map_err(|source| Error::Reserve {
            path: nr_path.clone(),
            pages: requested,
            source,
        })?;
    let granted = read_u64(&nr_path)?;
    Ok(Granted {
        node,
        requested,
        granted,
    })
}
