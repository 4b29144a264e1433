//! The unsafe code that holds packets and reaches into guest memory, in tests that Miri can
//! interpret (`benches/miri.sh`; they also run in the ordinary suite): [`Burst`]'s
//! uninitialised slots, and the guest-memory bounds checks, both on their own and as the
//! vring code uses them (the `virtq` fuzz target over heap memory). Under Miri every access
//! is checked against its allocation's bounds, initialisation and aliasing rules, so a
//! translation that let a copy run past a region, or a slot read twice or never dropped, is
//! an error even where a native run would not notice.

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;

use heddle_dataplane::switch::io::{Burst, BURST};
use heddle_dataplane::vhost::memory::{GuestMemory, RegionSpec};
use heddle_dataplane::vhost::testing::fuzz_rings;

/// Counts its drops, to prove each packet is dropped exactly once.
#[derive(Debug)]
struct Tracked<'a>(u32, &'a Cell<u32>);

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.1.set(self.1.get() + 1);
    }
}

#[test]
fn burst_drops_every_packet_once_on_every_path() {
    let drops = Cell::new(0);
    let mut b = Burst::new();
    for i in 0..BURST as u32 {
        assert!(b.push(Tracked(i, &drops)).is_ok());
    }
    let refused = b.push(Tracked(99, &drops)).unwrap_err();
    assert_eq!(refused.0, 99);
    drop(refused);
    assert_eq!(drops.get(), 1);
    assert_eq!(b.pop().map(|p| p.0), Some(BURST as u32 - 1));
    assert_eq!(drops.get(), 2);
    assert_eq!(
        b.as_slice().iter().map(|p| p.0).sum::<u32>(),
        (0..BURST as u32 - 1).sum::<u32>()
    );
    b.as_mut_slice()[0].0 = 1000;
    // Take three, drop the drain: the rest are dropped by it, none twice.
    let taken: Vec<u32> = b.drain().take(3).map(|p| p.0).collect();
    assert_eq!(taken, [1000, 1, 2]);
    assert_eq!(drops.get(), 2 + BURST as u32 - 1);
    assert!(b.is_empty());
    // A leaked drain leaks its packets but never lets the burst drop them again.
    for i in 0..4 {
        b.push(Tracked(i, &drops)).unwrap();
    }
    std::mem::forget(b.drain());
    drop(b);
    assert_eq!(drops.get(), 2 + BURST as u32 - 1);
}

#[test]
fn burst_slots_filled_in_place_are_owned_after_set_len() {
    let token = Rc::new(());
    let mut b: Burst<Rc<()>> = Burst::new();
    b.push(token.clone()).unwrap();
    // As an FFI receive does: write slots 1..5 through the raw pointer, then count them.
    let p = b.as_mut_ptr();
    for i in 1..5 {
        // SAFETY: slots 1..5 are inside the array and uninitialised (len is 1), so they are
        // written without dropping anything; `set_len` takes ownership of them below.
        unsafe { p.add(i).write(token.clone()) };
    }
    // SAFETY: slots 0..5 now hold initialised packets and 5 <= BURST.
    unsafe { b.set_len(5) };
    assert_eq!(b.len(), 5);
    assert_eq!(Rc::strong_count(&token), 6);
    drop(b);
    assert_eq!(Rc::strong_count(&token), 1);
}

/// Every byte a translation hands out lies in the region's memory: write the whole range.
fn touch(mem: &GuestMemory, gpa: u64, len: u64) -> bool {
    let Some(p) = mem.translate_gpa(gpa, len) else {
        return false;
    };
    // SAFETY: the claim under test: a translated range lies inside a live region. Miri
    // checks every byte written against the region's allocation.
    unsafe { std::ptr::write_bytes(p.as_ptr(), 0x5a, len as usize) };
    true
}

#[test]
fn guest_memory_hands_out_only_ranges_inside_a_region() {
    const GPA: u64 = 0x10_0000;
    let mut a = vec![0u8; 256];
    let mut b = vec![0u8; 64];
    let specs = [
        RegionSpec {
            guest_phys_addr: GPA,
            size: 256,
            user_addr: 0x7000_0000,
            mmap_offset: 0,
        },
        // Right behind the first in guest-physical space, elsewhere in the host.
        RegionSpec {
            guest_phys_addr: GPA + 256,
            size: 64,
            user_addr: 0x8000_0000,
            mmap_offset: 0,
        },
    ];
    // SAFETY: `a` and `b` outlive `mem` and are only touched through it meanwhile.
    let mem =
        unsafe { GuestMemory::from_raw(&[(specs[0], a.as_mut_ptr()), (specs[1], b.as_mut_ptr())]) };
    let edges = [0u64, 1, 2, 63, 64, 65, 255, 256, 257, 319, 320, 321];
    let mut inside = 0;
    for &off in &edges {
        for &len in &edges {
            // A range starts inside a region and ends at or before its end.
            let fits_a = off < 256 && off + len <= 256;
            let fits_b = (256..320).contains(&off) && off + len <= 320;
            assert_eq!(
                touch(&mem, GPA + off, len),
                fits_a || fits_b,
                "offset {off} length {len}"
            );
            inside += u32::from(fits_a || fits_b);
        }
    }
    assert!(inside > 20);
    // Wrapping and huge requests never pass.
    for (gpa, len) in [
        (u64::MAX, 2),
        (GPA, u64::MAX),
        (GPA + 255, u64::MAX - 254),
        (GPA.wrapping_sub(1), 2),
        (0, GPA + 1),
    ] {
        assert!(!touch(&mem, gpa, len), "{gpa:#x}+{len}");
    }
    // The frontend-virtual view of the same bytes.
    let p = mem.translate_uva(0x7000_0000 + 255, 1).unwrap();
    assert_eq!(p, mem.translate_gpa(GPA + 255, 1).unwrap());
    assert!(mem.translate_uva(0x7000_0000 + 255, 2).is_none());
    let mut hint = 0;
    assert!(mem.translate_gpa_hinted(GPA + 300, 20, &mut hint).is_some());
    assert_eq!(hint, 1);
    assert!(mem.translate_gpa_hinted(GPA + 300, 21, &mut hint).is_none());
    drop(mem);
    assert!(a.iter().all(|&x| x == 0x5a));
    assert!(b.iter().all(|&x| x == 0x5a));
}

/// Hostile rings over heap memory: the split-queue code walks descriptors, indirect tables
/// and buffers the input places anywhere (in range, at the edges, wrapping), copying frames
/// in and out through guest-memory translations and `Burst`s. A sample of the committed
/// `virtq` corpus (Miri runs each input a few thousand times slower than native).
#[test]
fn hostile_rings_stay_inside_guest_memory() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/virtq");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let step = if cfg!(miri) { files.len() / 12 + 1 } else { 1 };
    let mut ran = 0;
    for path in files.iter().step_by(step) {
        fuzz_rings(&std::fs::read(path).unwrap());
        ran += 1;
    }
    assert!(ran >= 10, "only {ran} inputs in {}", dir.display());
    eprintln!("ran {ran} of {} virtq corpus inputs", files.len());
}
