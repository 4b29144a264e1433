//! Stopping a daemon the tests started (heddle-switch, the device plugin): SIGTERM with a
//! clean exit within 10 s (else SIGKILL and an error carrying the daemon's log), or SIGKILL.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Kills `child` with SIGKILL (a crash: nothing is cleaned up) and reaps it.
pub fn kill9(mut child: Child) -> Result<()> {
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// Sends SIGTERM to `child` and waits 10 s at most for it to exit; on a timeout kills it,
/// reaps it and fails with `what` and `log()` in the message.
pub fn terminate(mut child: Child, what: &str, log: impl Fn() -> String) -> Result<ExitStatus> {
    // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet (we own its
    // Child), so the PID cannot have been reused.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not stop within 10 s of SIGTERM:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
