//! Exclusive lock files: the node-wide lock of the record store and the per-VF locks.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::CniError;

/// Opens (creating) `path` and takes an exclusive `flock` on it, waiting for other holders.
/// The lock lasts as long as the returned file is open.
pub fn lock_file(path: &Path) -> Result<File, CniError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| CniError::io("opening the lock file", path, e))?;
    // SAFETY: flock on a descriptor `file` owns and keeps open for the call; the lock is
    // released when `file` is closed (when the caller drops it).
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    if rc != 0 {
        return Err(CniError::io(
            "locking",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(file)
}
