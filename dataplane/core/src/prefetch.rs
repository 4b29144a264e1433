//! Cache prefetch hints for the fast path, the one place they are written.
//!
//! A prefetch is only a hint: it never faults and changes no memory, whatever the address
//! (a wild or unmapped pointer is fine), so both functions are safe. On targets other than
//! x86_64 they do nothing.

/// Asks the CPU to start loading the cache line at `p` for reading (`prefetcht0`).
#[inline(always)]
pub fn read(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is only a hint: it never faults and changes no memory, whatever
    // the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Hints that the cache line at `p` is about to be written (`prefetchw` where the CPU has
/// it, else a prefetch for reading).
#[inline(always)]
pub fn write(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults and changes no memory, whatever
    // the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p.cast::<i8>(), std::arch::x86_64::_MM_HINT_ET0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
