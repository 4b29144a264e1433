use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::{Mutex, OnceLock};

use super::error::{errno, strerror, DpdkError};

/// The running DPDK Environment Abstraction Layer. One per process, started once.
#[derive(Debug)]
pub struct Eal {
    args: Vec<String>,
    tsc_hz: u64,
}

static EAL: OnceLock<Eal> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

type Job = Box<dyn FnOnce() -> i32 + Send + 'static>;

extern "C" fn run_job(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Box<Job>` leaked by `Eal::launch` for exactly this call; it is
    // taken back here once, on the lcore that runs it.
    let job = unsafe { Box::from_raw(arg.cast::<Job>()) };
    job()
}

impl Eal {
    /// Starts the EAL with `args` (without the program name), or returns the running one
    /// when it was started before with the same arguments.
    pub fn init(args: &[String]) -> Result<&'static Eal, DpdkError> {
        let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(eal) = EAL.get() {
            return if eal.args == args {
                Ok(eal)
            } else {
                Err(DpdkError::EalAlreadyStarted)
            };
        }
        let mut owned = Vec::with_capacity(args.len() + 1);
        owned.push(CString::new("heddle").expect("static name has no NUL"));
        for a in args {
            owned.push(CString::new(a.as_str()).map_err(|_| DpdkError::NulByte(a.clone()))?);
        }
        // rte_eal_init may permute argv, so it gets its own array of pointers; the strings
        // themselves are leaked because DPDK keeps pointers into them (e.g. --file-prefix).
        let mut argv: Vec<*mut c_char> = owned.into_iter().map(CString::into_raw).collect();
        let argc = c_int::try_from(argv.len()).expect("argument count fits in an int");
        // SAFETY: argv holds argc valid NUL-terminated strings that are never freed; the
        // init lock makes this the only rte_eal_init call in the process.
        let rc = unsafe { dpdk_sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        std::mem::forget(argv);
        if rc < 0 {
            let code = errno();
            return Err(DpdkError::EalInit {
                code,
                msg: strerror(code),
                args: args.to_vec(),
            });
        }
        // SAFETY: the EAL is initialised, which is all rte_get_tsc_hz needs.
        let tsc_hz = unsafe { dpdk_sys::rte_get_tsc_hz() };
        Ok(EAL.get_or_init(|| Eal {
            args: args.to_vec(),
            tsc_hz,
        }))
    }

    /// The running EAL, if started.
    pub fn get() -> Option<&'static Eal> {
        EAL.get()
    }

    /// TSC ticks per second.
    pub fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    /// Runs `job` on worker lcore `lcore`, whose thread the EAL created and pinned.
    pub fn launch(
        &self,
        lcore: u32,
        job: impl FnOnce() -> i32 + Send + 'static,
    ) -> Result<(), DpdkError> {
        let job: Box<Job> = Box::new(Box::new(job));
        let arg = Box::into_raw(job).cast::<c_void>();
        // SAFETY: `run_job` takes back the box `arg` points to exactly once; if the launch
        // fails the EAL never calls it and the box is reclaimed below.
        let rc = unsafe { dpdk_sys::rte_eal_remote_launch(Some(run_job), arg, lcore) };
        if rc != 0 {
            // SAFETY: the launch failed, so `arg` was not handed to any lcore.
            drop(unsafe { Box::from_raw(arg.cast::<Job>()) });
            return Err(DpdkError::Launch {
                lcore,
                msg: strerror(-rc),
            });
        }
        Ok(())
    }

    /// Waits for the job on `lcore` to return and gives its return value.
    pub fn wait(&self, lcore: u32) -> i32 {
        // SAFETY: the EAL is running; waiting on an idle lcore returns at once.
        unsafe { dpdk_sys::rte_eal_wait_lcore(lcore) }
    }
}

/// The CPU's timestamp counter: cycles for PMD accounting. No syscall.
#[inline(always)]
pub fn tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no preconditions on x86_64.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: the shim reads DPDK's rte_rdtsc(), valid on every DPDK target.
        unsafe { dpdk_sys::heddle_rte_rdtsc() }
    }
}
