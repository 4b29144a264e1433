use std::ffi::CStr;

/// Everything a DPDK call can refuse, with the code DPDK gave and its text.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    /// `rte_eal_init` failed.
    #[error("DPDK EAL refused to start ({msg}, errno {code}): check the EAL arguments {args:?}")]
    EalInit {
        /// The `rte_errno` value.
        code: i32,
        /// `rte_strerror(code)`.
        msg: String,
        /// The arguments passed.
        args: Vec<String>,
    },
    /// A second EAL start was attempted with other arguments.
    #[error("the DPDK EAL is already running in this process; it can be started once")]
    EalAlreadyStarted,
    /// An argument contained a NUL byte.
    #[error("argument {0:?} contains a NUL byte")]
    NulByte(String),
    /// A mempool could not be created.
    #[error("cannot create mempool {name} of {count} mbufs ({msg}): give the switch more hugepage memory (memory.socket_mem_mb) or fewer mbufs")]
    Mempool {
        /// Pool name.
        name: String,
        /// Mbufs asked for.
        count: u32,
        /// `rte_strerror`.
        msg: String,
    },
    /// `rte_dev_probe` refused the devargs.
    #[error("DPDK rejected devargs {devargs:?} ({msg}): check the driver name and its options (e.g. net_vhost0,iface=/run/x.sock)")]
    Probe {
        /// The devargs string.
        devargs: String,
        /// `rte_strerror`.
        msg: String,
    },
    /// The device exists but no ethdev port carries its name.
    #[error("device {0:?} was probed but exposes no ethdev port")]
    NoPort(String),
    /// An ethdev operation failed.
    #[error("port {port} ({name}): {op} failed ({msg}, errno {code})")]
    Port {
        /// DPDK port id.
        port: u16,
        /// Device name.
        name: String,
        /// The operation.
        op: &'static str,
        /// The negative return value or `rte_errno`.
        code: i32,
        /// `rte_strerror`.
        msg: String,
    },
    /// Launching a PMD worker on an lcore failed.
    #[error("cannot launch a worker on lcore {lcore}: {msg}")]
    Launch {
        /// The lcore id.
        lcore: u32,
        /// Why.
        msg: String,
    },
}

/// The text DPDK gives for an error code.
pub(crate) fn strerror(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated
    // string that stays valid until the next call on this thread; it is copied at once.
    unsafe {
        let p = dpdk_sys::rte_strerror(code);
        if p.is_null() {
            return format!("error {code}");
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// The calling thread's `rte_errno`.
pub(crate) fn errno() -> i32 {
    // SAFETY: reads the per-lcore errno variable through the shim; no preconditions.
    unsafe { dpdk_sys::heddle_rte_errno() }
}
