//! Exclusive lock files: the node-wide lock of the record store and the per-VF locks here,
//! and (through [`exclusive`]) heddle-manager's embedded store and the test harness's image
//! cache: one helper instead of a hand-written `flock` in each.

use std::fs::File;
use std::path::Path;

use crate::error::CniError;

/// Opens (creating) `path` and takes an exclusive lock on it (`flock(LOCK_EX)`, through the
/// `fs4` crate), waiting for other holders; a wait cut short by a signal is resumed. The
/// lock lasts as long as the returned file is open.
pub fn exclusive(path: &Path) -> std::io::Result<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    loop {
        // Called through the trait: std's own `File::lock` is newer than the workspace's MSRV.
        match fs4::FileExt::lock(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other.map(|()| file),
        }
    }
}

/// [`exclusive`], with a CNI error ("locking <path>: <cause>").
pub fn lock_file(path: &Path) -> Result<File, CniError> {
    exclusive(path).map_err(|e| CniError::io("locking", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = exclusive(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        let waiter = std::thread::spawn(move || {
            let _second = exclusive(&p).unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "the lock was taken twice"
        );
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the waiter got the lock after the first holder closed it");
        waiter.join().unwrap();
        assert!(lock_file(&dir.path().join("no/such/dir/lock")).is_err());
    }
}
