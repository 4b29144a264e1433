//! The synchronisation primitives under the switch's lock-free protocols: the FDB slot
//! protocol (`switch::fdb`), the vring hand-over (`vhost::ring`) and the workers' quiescent
//! states (`daemon::worker`).
//!
//! Normally these are `std`'s. The model-checking build (`RUSTFLAGS="--cfg heddle_loom"`;
//! docs/contributing.md, "Model checking") swaps in loom's, so that the loom
//! models (`switch::fdb`'s, and the vring hand-over's in `daemon`) run the real protocol code
//! while loom explores its thread interleavings and the values each weakly ordered load may
//! return. (Not the conventional `--cfg loom`: tokio reads that one too and drops its
//! networking, which the daemon needs to compile.)

#[cfg(heddle_loom)]
pub use loom::sync::atomic;
#[cfg(not(heddle_loom))]
pub use std::sync::atomic;

/// One step of a wait loop's back-off: spin (yield) briefly, then sleep, so that a long wait
/// does not cost the waiting thread a CPU. Under loom, a yield that lets the other modelled
/// threads run.
#[inline]
pub fn back_off(spins: &mut u32) {
    #[cfg(heddle_loom)]
    {
        let _ = spins;
        loom::thread::yield_now();
    }
    #[cfg(not(heddle_loom))]
    if *spins < 1000 {
        *spins += 1;
        std::thread::yield_now();
    } else {
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// Marks the accesses to an object that a lock-free protocol hands between threads (a
/// running vring), so that the loom models check each one is ordered after the one before:
/// the builder's, every worker's, and the owner's when it frees the object (the drop). A
/// worker that could still touch a ring after the control thread freed it is a loom failure
/// ("causality violation"). Zero-sized and free outside the model-checking build.
#[derive(Debug)]
pub struct Access {
    #[cfg(heddle_loom)]
    cell: loom::cell::UnsafeCell<()>,
}

impl Access {
    /// A new object's marker (its creation is the first access).
    pub fn new() -> Access {
        Access {
            #[cfg(heddle_loom)]
            cell: loom::cell::UnsafeCell::new(()),
        }
    }

    /// Records an exclusive access by the calling thread.
    #[inline(always)]
    pub fn exclusive(&self) {
        #[cfg(heddle_loom)]
        self.cell.with_mut(|_| ());
    }
}

impl Default for Access {
    fn default() -> Access {
        Access::new()
    }
}

#[cfg(heddle_loom)]
impl Drop for Access {
    fn drop(&mut self) {
        // Freeing is a write: it must come after every other access.
        self.cell.with_mut(|_| ());
    }
}
