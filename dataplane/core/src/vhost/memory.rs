//! The frontend's memory table (`VHOST_USER_SET_MEM_TABLE`), mapped into the switch.
//!
//! Each region is a file descriptor the frontend shares (memfd, hugetlbfs or `/dev/shm`
//! file) plus where it sits in guest-physical space and in the frontend's own virtual
//! address space. [`GuestMemory::map`] validates the whole table before mapping anything a
//! hostile frontend could use against the switch, then maps each region `MAP_SHARED`.
//!
//! Translation ([`GuestMemory::translate_gpa`], [`GuestMemory::translate_uva`]) returns a
//! host pointer only when the *whole* range lies inside one region, so a caller that copies
//! `len` bytes through the pointer stays inside a live mapping. The table is small (at most
//! [`MAX_REGIONS`], usually one to eight), so lookup is a linear scan; a caller that wants a
//! last-hit cache keeps the hint in its own state ([`GuestMemory::translate_gpa_hinted`]),
//! so `GuestMemory` has no interior mutability and is shared between workers as is.
//!
//! Written by hand rather than with `vm-memory`'s `GuestMemoryMmap`: the table must be
//! validated as a whole against a hostile frontend before anything is mapped (overlaps in
//! either address space, offsets past the file, the region count), translation is needed
//! for frontend-virtual addresses as well as guest-physical ones (vring addresses arrive
//! as the frontend's virtual addresses), and the fast path wants one whole-range check
//! returning a raw pointer, with the last-hit hint kept by the caller, rather than the
//! crate's per-access `Bytes` calls and its atomic-snapshot machinery.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most regions a table may hold: the vhost-user limit with
/// `VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS` (the classic message holds 8).
pub const MAX_REGIONS: usize = 509;

/// One region as the frontend describes it in `VHOST_USER_SET_MEM_TABLE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionSpec {
    /// Guest-physical address of the region's first byte.
    pub guest_phys_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// The frontend's virtual address of the first byte (vring addresses use these).
    pub user_addr: u64,
    /// Offset of the first byte inside the shared file.
    pub mmap_offset: u64,
}

/// Why a memory table was refused or could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The table has no region at all.
    #[error("the memory table is empty: the frontend must send at least one region")]
    Empty,
    /// More regions than vhost-user allows.
    #[error("the memory table has {count} regions, more than the {max} vhost-user allows")]
    TooManyRegions {
        /// Regions sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A region of length zero.
    #[error("memory region {index} has size 0: every region must cover at least one byte")]
    ZeroSize {
        /// Index of the region in the table.
        index: usize,
    },
    /// A region whose end does not fit in 64 bits (in any of its three address spaces) or
    /// in this host's address space.
    #[error(
        "memory region {index} ({spec:?}) wraps around the 64-bit address space or is larger \
         than this host can map: its addresses plus its size must fit"
    )]
    Overflow {
        /// Index of the region.
        index: usize,
        /// The region.
        spec: RegionSpec,
    },
    /// Two regions share addresses.
    #[error(
        "memory regions {first} and {second} overlap in {space} addresses: each address may \
         belong to one region only"
    )]
    Overlap {
        /// Index of one region.
        first: usize,
        /// Index of the other.
        second: usize,
        /// `"guest-physical"` or `"frontend-virtual"`.
        space: &'static str,
    },
    /// `fstat` on a region's file failed.
    #[error("cannot stat the file of memory region {index}: {source}")]
    Stat {
        /// Index of the region.
        index: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is shorter than the region claims: mapping it would fault on access.
    #[error(
        "the file of memory region {index} holds {file_size} bytes but the region needs \
         {needed} (mmap_offset + size): the frontend sent a wrong size or offset"
    )]
    FileTooShort {
        /// Index of the region.
        index: usize,
        /// `st_size` of the file.
        file_size: u64,
        /// `mmap_offset + size`.
        needed: u64,
    },
    /// `mmap` refused the region.
    #[error("cannot map memory region {index} ({len} bytes at file offset {offset}): {source}")]
    Mmap {
        /// Index of the region.
        index: usize,
        /// Bytes asked for.
        len: u64,
        /// File offset asked for.
        offset: u64,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One mapped region, as translation sees it.
#[derive(Debug)]
struct Region {
    spec: RegionSpec,
    /// Host address of the region's first byte (`spec.guest_phys_addr` / `spec.user_addr`).
    host: NonNull<u8>,
}

/// One `mmap` owned by the table; unmapped on drop.
#[derive(Debug)]
struct Mapping {
    addr: NonNull<libc::c_void>,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` are exactly what a successful mmap returned, nothing else
        // unmaps it, and every host pointer into it is only used while the owning
        // `GuestMemory` is borrowed (translation borrows `&self`; `SplitQueue` checks it is
        // handed the same table it was built on).
        unsafe { libc::munmap(self.addr.as_ptr(), self.len) };
    }
}

/// Source of [`GuestMemory::id`]: every table gets a fresh one.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The frontend's memory: every region mapped into the switch.
///
/// Immutable once built; a new `SET_MEM_TABLE` builds a new `GuestMemory` that replaces
/// the old one as a whole (the backend swaps it under the workers; the old one is dropped,
/// and unmapped, once no worker holds it).
#[derive(Debug)]
pub struct GuestMemory {
    regions: Vec<Region>,
    _mappings: Vec<Mapping>,
    id: u64,
}

// SAFETY: the raw pointers point into mappings this value owns (or, for `from_raw`, memory
// the caller guarantees outlives it); they are never freed while the value lives, and
// `GuestMemory` itself never writes through them, so moving it between threads is sound.
unsafe impl Send for GuestMemory {}
// SAFETY: every method takes `&self` and only computes pointers; guest memory is shared with
// the frontend anyway, and users access it through raw pointers with their own rules.
unsafe impl Sync for GuestMemory {}

/// Checks a memory table: count, sizes, overflow, overlaps. Shared by `map` and `from_raw`.
fn validate(specs: &[RegionSpec]) -> Result<(), MemoryError> {
    if specs.is_empty() {
        return Err(MemoryError::Empty);
    }
    if specs.len() > MAX_REGIONS {
        return Err(MemoryError::TooManyRegions {
            count: specs.len(),
            max: MAX_REGIONS,
        });
    }
    for (index, s) in specs.iter().enumerate() {
        if s.size == 0 {
            return Err(MemoryError::ZeroSize { index });
        }
        let fits = s.guest_phys_addr.checked_add(s.size).is_some()
            && s.user_addr.checked_add(s.size).is_some()
            && s.mmap_offset.checked_add(s.size).is_some()
            && usize::try_from(s.size).is_ok_and(|n| n <= isize::MAX as usize / 2);
        if !fits {
            return Err(MemoryError::Overflow { index, spec: *s });
        }
    }
    // Quadratic, but at most 509 regions once per SET_MEM_TABLE, off the fast path.
    for (i, a) in specs.iter().enumerate() {
        for (j, b) in specs.iter().enumerate().skip(i + 1) {
            let overlaps =
                |x: u64, y: u64| x < y.wrapping_add(b.size) && y < x.wrapping_add(a.size);
            if overlaps(a.guest_phys_addr, b.guest_phys_addr) {
                return Err(MemoryError::Overlap {
                    first: i,
                    second: j,
                    space: "guest-physical",
                });
            }
            if overlaps(a.user_addr, b.user_addr) {
                return Err(MemoryError::Overlap {
                    first: i,
                    second: j,
                    space: "frontend-virtual",
                });
            }
        }
    }
    Ok(())
}

/// Host pointer for `[addr, addr+len)` of `base..base+size` mapped at `host`, if inside.
#[inline(always)]
fn inside(base: u64, size: u64, host: NonNull<u8>, addr: u64, len: u64) -> Option<NonNull<u8>> {
    let off = addr.wrapping_sub(base);
    if addr >= base && off < size && len <= size - off {
        // SAFETY: `off < size`, and the region's `size` bytes from `host` are one live
        // allocation (validated to fit in isize), so the offset pointer stays inside it and
        // is non-null.
        Some(unsafe { NonNull::new_unchecked(host.as_ptr().add(off as usize)) })
    } else {
        None
    }
}

impl GuestMemory {
    /// Validates the table and maps each region's file `MAP_SHARED`, read-write.
    ///
    /// Own `mmap` rather than vm-memory's `MmapRegion`: vhost-user offsets need not be page
    /// aligned and hugetlbfs files must be mapped in whole huge pages, so the mapping starts
    /// at `mmap_offset` rounded down to the file's block size and ends rounded up (as DPDK's
    /// vhost library does); `fstat` proves the file holds `mmap_offset + size` bytes first,
    /// so no access inside a region can fault on a short file.
    ///
    /// Memfds are sealed against shrinking (best effort: `F_SEAL_SHRINK` where the
    /// frontend allowed sealing), so the frontend cannot truncate the file under the switch
    /// afterwards. A file that cannot be sealed could still be truncated by a hostile
    /// frontend after this check; run such frontends with memfd or hugetlbfs memory.
    pub fn map(regions: Vec<(RegionSpec, File)>) -> Result<GuestMemory, MemoryError> {
        let specs: Vec<RegionSpec> = regions.iter().map(|(s, _)| *s).collect();
        validate(&specs)?;
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 && (n as u64).is_power_of_two() => n as u64,
            _ => 4096,
        };
        let mut mapped = Vec::with_capacity(regions.len());
        let mut mappings = Vec::with_capacity(regions.len());
        for (index, (spec, file)) in regions.iter().enumerate() {
            let fd = file.as_raw_fd();
            // SAFETY: fd is a valid open descriptor owned by `file`; F_SEAL_SHRINK only
            // restricts future truncation, and a failure (not a memfd, sealing not allowed)
            // is ignored on purpose.
            unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
            let meta = file
                .metadata()
                .map_err(|source| MemoryError::Stat { index, source })?;
            let needed = spec.mmap_offset + spec.size; // checked by validate
            if meta.len() < needed {
                return Err(MemoryError::FileTooShort {
                    index,
                    file_size: meta.len(),
                    needed,
                });
            }
            let blk = std::os::unix::fs::MetadataExt::blksize(&meta);
            let align = if blk.is_power_of_two() && blk > page && blk <= 1 << 30 {
                blk
            } else {
                page
            };
            let map_off = spec.mmap_offset & !(align - 1);
            let lead = spec.mmap_offset - map_off;
            let overflow = || MemoryError::Overflow { index, spec: *spec };
            let map_len = (lead + spec.size)
                .checked_add(align - 1)
                .ok_or_else(overflow)?
                & !(align - 1);
            let len = usize::try_from(map_len).map_err(|_| overflow())?;
            let off = libc::off_t::try_from(map_off).map_err(|_| overflow())?;
            // SAFETY: a fresh mapping chosen by the kernel (no MAP_FIXED), so no existing
            // memory is replaced; fd is valid for the duration of the call.
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    off,
                )
            };
            if addr == libc::MAP_FAILED {
                return Err(MemoryError::Mmap {
                    index,
                    len: map_len,
                    offset: map_off,
                    source: std::io::Error::last_os_error(),
                });
            }
            let Some(addr) = NonNull::new(addr) else {
                return Err(MemoryError::Mmap {
                    index,
                    len: map_len,
                    offset: map_off,
                    source: std::io::Error::other("mmap returned address 0"),
                });
            };
            mappings.push(Mapping { addr, len });
            // SAFETY: `lead < align <= len`, so the pointer lies inside the new mapping.
            let host =
                unsafe { NonNull::new_unchecked(addr.as_ptr().cast::<u8>().add(lead as usize)) };
            mapped.push(Region { spec: *spec, host });
        }
        Ok(GuestMemory {
            regions: mapped,
            _mappings: mappings,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// A table over memory the caller owns (tests, benches). `mmap_offset` is ignored.
    ///
    /// # Panics
    /// When the table fails the checks [`GuestMemory::map`] makes, or a pointer is null.
    ///
    /// # Safety
    /// Each pointer must be valid for reads and writes of its region's `size` bytes for as
    /// long as the returned value (and any queue built on it) is used, and the regions'
    /// host ranges must not overlap.
    pub unsafe fn from_raw(regions: &[(RegionSpec, *mut u8)]) -> GuestMemory {
        let specs: Vec<RegionSpec> = regions.iter().map(|(s, _)| *s).collect();
        if let Err(e) = validate(&specs) {
            panic!("GuestMemory::from_raw: {e}");
        }
        GuestMemory {
            regions: regions
                .iter()
                .map(|(spec, p)| Region {
                    spec: *spec,
                    host: NonNull::new(*p).expect("GuestMemory::from_raw: null region pointer"),
                })
                .collect(),
            _mappings: Vec::new(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Host pointer for guest-physical `[gpa, gpa+len)` when the whole range lies in one
    /// region, else `None` (also when `gpa + len` overflows).
    #[inline]
    pub fn translate_gpa(&self, gpa: u64, len: u64) -> Option<NonNull<u8>> {
        self.regions
            .iter()
            .find_map(|r| inside(r.spec.guest_phys_addr, r.spec.size, r.host, gpa, len))
    }

    /// As [`GuestMemory::translate_gpa`], trying region `*hint` first and leaving the index
    /// of the region that matched in it (a last-hit cache the caller owns).
    #[inline]
    pub fn translate_gpa_hinted(
        &self,
        gpa: u64,
        len: u64,
        hint: &mut usize,
    ) -> Option<NonNull<u8>> {
        if let Some(r) = self.regions.get(*hint) {
            if let Some(p) = inside(r.spec.guest_phys_addr, r.spec.size, r.host, gpa, len) {
                return Some(p);
            }
        }
        for (i, r) in self.regions.iter().enumerate() {
            if let Some(p) = inside(r.spec.guest_phys_addr, r.spec.size, r.host, gpa, len) {
                *hint = i;
                return Some(p);
            }
        }
        None
    }

    /// Host pointer for frontend-virtual `[uva, uva+len)` (vring addresses in
    /// `SET_VRING_ADDR` are frontend virtual addresses), under the same rule.
    #[inline]
    pub fn translate_uva(&self, uva: u64, len: u64) -> Option<NonNull<u8>> {
        self.regions
            .iter()
            .find_map(|r| inside(r.spec.user_addr, r.spec.size, r.host, uva, len))
    }

    /// Host address and size of region `index` (in the order given), if there is one.
    /// The `size` bytes from the address stay mapped for as long as `self` lives.
    pub fn region_host(&self, index: usize) -> Option<(NonNull<u8>, u64)> {
        self.regions.get(index).map(|r| (r.host, r.spec.size))
    }

    /// The regions, in the order the frontend sent them.
    pub fn regions(&self) -> impl Iterator<Item = &RegionSpec> {
        self.regions.iter().map(|r| &r.spec)
    }

    /// A number unique to this table in the process, so a queue can tell that it is handed
    /// the table its ring pointers were translated through.
    pub fn id(&self) -> u64 {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn spec(gpa: u64, size: u64, uva: u64, off: u64) -> RegionSpec {
        RegionSpec {
            guest_phys_addr: gpa,
            size,
            user_addr: uva,
            mmap_offset: off,
        }
    }

    fn memfd(len: u64) -> File {
        let f = tempfile::tempfile().expect("tempfile");
        f.set_len(len).expect("set_len");
        f
    }

    #[test]
    fn map_translates_both_address_spaces_and_shares_the_file() {
        let mut f = memfd(3 * 4096);
        f.write_all(b"hello").unwrap();
        let g = memfd(8192);
        let mem = GuestMemory::map(vec![
            (spec(0x1000, 3 * 4096 - 100, 0x7000_0000, 100), f),
            (spec(0x10_0000, 8192, 0x8000_0000, 0), g),
        ])
        .unwrap();
        // gpa 0x1000 is file offset 100; file offset 0 ("hello") is not in the region.
        let p = mem.translate_gpa(0x1000, 1).unwrap();
        let q = mem.translate_uva(0x7000_0000, 1).unwrap();
        assert_eq!(p, q);
        assert!(mem.translate_gpa(0x1000 + 3 * 4096 - 100, 1).is_none());
        assert!(mem.translate_gpa(0x1000 + 3 * 4096 - 101, 1).is_some());
        assert!(mem.translate_gpa(0x1000 + 3 * 4096 - 101, 2).is_none());
        assert!(mem.translate_gpa(0xfff, 1).is_none());
        assert!(mem.translate_gpa(u64::MAX, 2).is_none());
        assert!(mem.translate_gpa(0x1000, u64::MAX).is_none());
        assert!(mem.translate_gpa(0x10_0000, 8192).is_some());
        let mut hint = 0;
        assert!(mem.translate_gpa_hinted(0x10_0000, 1, &mut hint).is_some());
        assert_eq!(hint, 1);
        assert_eq!(mem.regions().count(), 2);
    }

    #[test]
    fn map_refuses_hostile_tables_with_errors() {
        let e = GuestMemory::map(vec![(spec(0, 8192, 0, 0), memfd(4096))]).unwrap_err();
        assert!(
            matches!(e, MemoryError::FileTooShort { needed: 8192, .. }),
            "{e}"
        );
        let e = GuestMemory::map(vec![(spec(0, 4096, 0, 1), memfd(4096))]).unwrap_err();
        assert!(matches!(e, MemoryError::FileTooShort { .. }), "{e}");
        let e = GuestMemory::map(vec![(spec(0, 0, 0, 0), memfd(4096))]).unwrap_err();
        assert!(matches!(e, MemoryError::ZeroSize { index: 0 }), "{e}");
        let e = GuestMemory::map(vec![(spec(u64::MAX - 10, 4096, 0, 0), memfd(4096))]).unwrap_err();
        assert!(matches!(e, MemoryError::Overflow { .. }), "{e}");
        let e = GuestMemory::map(vec![(spec(0, 4096, 0, u64::MAX - 1), memfd(4096))]).unwrap_err();
        assert!(matches!(e, MemoryError::Overflow { .. }), "{e}");
        let e = GuestMemory::map(vec![
            (spec(0, 4096, 0, 0), memfd(4096)),
            (spec(4095, 4096, 8192, 0), memfd(4096)),
        ])
        .unwrap_err();
        assert!(
            matches!(
                e,
                MemoryError::Overlap {
                    space: "guest-physical",
                    ..
                }
            ),
            "{e}"
        );
        let e = GuestMemory::map(vec![
            (spec(0, 4096, 0, 0), memfd(4096)),
            (spec(4096, 4096, 100, 0), memfd(4096)),
        ])
        .unwrap_err();
        assert!(
            matches!(
                e,
                MemoryError::Overlap {
                    space: "frontend-virtual",
                    ..
                }
            ),
            "{e}"
        );
        let e = GuestMemory::map(Vec::new()).unwrap_err();
        assert!(matches!(e, MemoryError::Empty), "{e}");
        let many = (0..510u64)
            .map(|i| (spec(i << 20, 4096, i << 20, 0), memfd(4096)))
            .collect();
        let e = GuestMemory::map(many).unwrap_err();
        assert!(
            matches!(e, MemoryError::TooManyRegions { count: 510, .. }),
            "{e}"
        );
    }
}
