//! The hand-over point between the control thread and the PMD workers for one running ring
//! (a vhost-user vring, a memif queue): the control side installs and withdraws a boxed
//! ring with one atomic swap; workers load the pointer once per burst and use the ring
//! without a lock, or under the slot's own lock when several workers transmit to it. The
//! control side frees what it withdrew only after a quiescent state of every worker
//! (`daemon::worker`), which is what makes a worker's loaded pointer safe to use.

use std::ptr;

use crate::switch::io::TxLock;
use crate::sync::atomic::{AtomicPtr, Ordering};

/// One ring's hand-over point, alone on its cache line.
#[repr(align(64))]
#[derive(Debug)]
pub struct HandoverSlot<T> {
    active: AtomicPtr<T>,
    lock: TxLock,
}

impl<T> Default for HandoverSlot<T> {
    fn default() -> Self {
        HandoverSlot {
            active: AtomicPtr::new(ptr::null_mut()),
            lock: TxLock::default(),
        }
    }
}

impl<T> HandoverSlot<T> {
    /// Control side: makes `ring` visible to the workers. Returns the ring that was installed
    /// before, which the caller must not touch or free before a quiescent state.
    pub fn install(&self, ring: Box<T>) -> Option<Box<T>> {
        let old = self.active.swap(Box::into_raw(ring), Ordering::AcqRel);
        // SAFETY: every non-null pointer stored in `active` came from `Box::into_raw` above
        // and is taken out of the slot exactly once (this swap or `take`).
        (!old.is_null()).then(|| unsafe { Box::from_raw(old) })
    }

    /// Control side: withdraws the ring. The caller must wait for a quiescent state of every
    /// worker before reading or dropping it.
    pub fn take(&self) -> Option<Box<T>> {
        let old = self.active.swap(ptr::null_mut(), Ordering::AcqRel);
        // SAFETY: as in `install`: the pointer came from `Box::into_raw` and is now out of
        // the slot, so this is its only owner.
        (!old.is_null()).then(|| unsafe { Box::from_raw(old) })
    }

    /// True when a ring is installed.
    pub fn is_active(&self) -> bool {
        !self.active.load(Ordering::Acquire).is_null()
    }

    /// Worker side: the installed ring, or null. Live until the worker's next quiescent
    /// state (see the module documentation); who may take `&mut` of it is the caller's rule.
    #[inline]
    pub fn load(&self) -> *mut T {
        self.active.load(Ordering::Acquire)
    }

    /// The lock that serialises workers transmitting to this ring when several do.
    #[inline]
    pub fn lock(&self) -> &TxLock {
        &self.lock
    }
}

impl<T> Drop for HandoverSlot<T> {
    fn drop(&mut self) {
        drop(self.take());
    }
}
