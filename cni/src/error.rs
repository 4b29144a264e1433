//! The CNI error reply: a spec code, one sentence (`msg`) and the cause (`details`).

use serde::Serialize;

/// Error codes from the CNI spec (0-99) and Heddle's own (100+).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist (CHECK of an attachment ADD never made).
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (`CNI_COMMAND`, `CNI_IFNAME`, ...).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (state directory, socket directory, device-info file).
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (stdin is not JSON of the right shape).
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network configuration (values out of range, bad MAC, path too long).
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: a transient condition (the node daemon is not reachable).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot take ADDs (the node daemon is not available).
    pub const NOT_AVAILABLE: u32 = 50;
    /// heddle-switch refused the port (conflicting spec, device error).
    pub const DAEMON_REFUSED: u32 = 100;
    /// A netlink operation (veth, address, route) failed.
    pub const NETLINK: u32 = 101;
    /// The delegated IPAM plugin failed or could not be run.
    pub const IPAM: u32 = 102;
    /// CHECK found the attachment broken (port or interface missing).
    pub const CHECK_FAILED: u32 = 103;
}

/// A CNI error, printed on stdout as `{"cniVersion","code","msg","details"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("CNI error {code}: {msg} ({details})")]
pub struct CniError {
    /// Spec or Heddle code (see [`code`]).
    pub code: u32,
    /// What went wrong and how to fix it.
    pub msg: String,
    /// The underlying cause.
    pub details: String,
}

impl CniError {
    /// An error with `code`, a sentence and details.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// Code 4.
    pub fn env(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        Self::new(code::INVALID_ENV, msg, details)
    }

    /// Code 7.
    pub fn config(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        Self::new(code::INVALID_CONFIG, msg, details)
    }

    /// Code 5, for a file-system operation on `path`.
    pub fn io(what: &str, path: &std::path::Path, e: std::io::Error) -> CniError {
        Self::new(
            code::IO_FAILURE,
            format!("{what} {} failed", path.display()),
            e.to_string(),
        )
    }

    /// Code 101.
    pub fn netlink(what: impl Into<String>, e: impl std::fmt::Display) -> CniError {
        Self::new(code::NETLINK, what, e.to_string())
    }

    /// The JSON the runtime reads from stdout.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

impl From<heddle_api::ClientError> for CniError {
    fn from(e: heddle_api::ClientError) -> CniError {
        if e.is_unreachable() {
            CniError::new(
                code::TRY_AGAIN_LATER,
                "heddle-switch is not reachable: start the node daemon (or fix switchSocket) and retry",
                e.to_string(),
            )
        } else {
            CniError::new(
                code::DAEMON_REFUSED,
                "heddle-switch refused the request",
                e.to_string(),
            )
        }
    }
}
