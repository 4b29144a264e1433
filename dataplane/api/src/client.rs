//! A blocking client for the node daemon's Unix-socket API.
//!
//! Written by hand rather than with hyper: `heddle-cni` and `heddlectl` are short-lived
//! processes that make one or two requests, and a synchronous `Connection: close` exchange
//! over `std::os::unix::net::UnixStream` needs no async runtime, keeping their start-up cost
//! (which is on the pod-creation path) near zero. The server side uses axum/hyper.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{
    ErrorReply, FdbEntry, Health, PortSpec, PortStatus, RemoveReply, StatsReply, TrunkVlans,
};

/// Default path of the daemon's socket.
pub const DEFAULT_SOCKET: &str = "/run/heddle/switch.sock";

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens on the socket.
    #[error("cannot reach heddle-switch at {path}: {source}: is the daemon running? (systemctl status heddle-switch, or start heddle-switch; --socket names another path)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The exchange broke off.
    #[error("talking to heddle-switch at {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The daemon refused the request; `message` is its sentence.
    #[error("{message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The daemon's error sentence.
        message: String,
    },
    /// The reply was not what the API promises.
    #[error("heddle-switch sent a malformed reply: {0}")]
    Malformed(String),
}

impl ClientError {
    /// True when the daemon is not there at all (as opposed to refusing the request).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Connect { .. })
    }
}

/// Client for one daemon socket.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
}

/// A raw reply: status and body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Client {
    /// A client for the socket at `path`.
    pub fn new(path: impl AsRef<Path>) -> Client {
        Client {
            path: path.as_ref().to_owned(),
            timeout: Duration::from_secs(30),
        }
    }

    /// Sets the per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Sends one request and reads the whole reply.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Reply, ClientError> {
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let mut s = UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
            path: self.path.clone(),
            source,
        })?;
        s.set_read_timeout(Some(self.timeout)).map_err(io)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: heddle\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).map_err(io)?;
        s.write_all(body).map_err(io)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(io)?;
        parse_reply(&raw)
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<T, ClientError> {
        let reply = self.request(method, path, body)?;
        if !(200..300).contains(&reply.status) {
            let message = serde_json::from_slice::<ErrorReply>(&reply.body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&reply.body).into_owned());
            return Err(ClientError::Refused {
                status: reply.status,
                message,
            });
        }
        serde_json::from_slice(&reply.body).map_err(|e| ClientError::Malformed(e.to_string()))
    }

    fn json<B: Serialize>(body: &B) -> Vec<u8> {
        serde_json::to_vec(body).expect("API types always serialise")
    }

    /// `GET /v1/health`.
    pub fn health(&self) -> Result<Health, ClientError> {
        self.call("GET", "/v1/health", None)
    }

    /// `GET /v1/ports`.
    pub fn ports(&self) -> Result<Vec<PortStatus>, ClientError> {
        self.call("GET", "/v1/ports", None)
    }

    /// `POST /v1/ports`: creates the port, or returns the existing one with the same spec.
    pub fn add_port(&self, spec: &PortSpec) -> Result<PortStatus, ClientError> {
        self.call("POST", "/v1/ports", Some(&Self::json(spec)))
    }

    /// `DELETE /v1/ports/{name}`: succeeds also when the port does not exist.
    pub fn remove_port(&self, name: &str) -> Result<RemoveReply, ClientError> {
        self.call(
            "DELETE",
            &format!("/v1/ports/{}", encode_segment(name)),
            None,
        )
    }

    /// `PUT /v1/ports/{name}/vlans`: replaces the VLAN set of a trunk port.
    pub fn set_trunk_vlans(
        &self,
        name: &str,
        vlans: &TrunkVlans,
    ) -> Result<PortStatus, ClientError> {
        self.call(
            "PUT",
            &format!("/v1/ports/{}/vlans", encode_segment(name)),
            Some(&Self::json(vlans)),
        )
    }

    /// `GET /v1/stats`.
    pub fn stats(&self) -> Result<StatsReply, ClientError> {
        self.call("GET", "/v1/stats", None)
    }

    /// `GET /v1/fdb`.
    pub fn fdb(&self) -> Result<Vec<FdbEntry>, ClientError> {
        self.call("GET", "/v1/fdb", None)
    }

    /// `GET /v1/hugepages`.
    pub fn hugepages(&self) -> Result<heddle_hugepages::Inventory, ClientError> {
        self.call("GET", "/v1/hugepages", None)
    }

    /// `GET /metrics` (Prometheus text).
    pub fn metrics(&self) -> Result<String, ClientError> {
        let reply = self.request("GET", "/metrics", None)?;
        Ok(String::from_utf8_lossy(&reply.body).into_owned())
    }
}

/// Percent-encodes a path segment (port names may hold `/`).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn parse_reply(raw: &[u8]) -> Result<Reply, ClientError> {
    let bad = |what: &str| ClientError::Malformed(what.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse::<usize>().ok();
            }
        }
    }
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest).ok_or_else(|| bad("broken chunked body"))?
    } else {
        let n = length.unwrap_or(rest.len()).min(rest.len());
        rest[..n].to_vec()
    };
    Ok(Reply { status, body })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_replies() {
        let r = parse_reply(b"HTTP/1.1 409 Conflict\r\ncontent-length: 5\r\n\r\nhello").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (409, &b"hello"[..]));
        let r = parse_reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse_reply(b"garbage").is_err());
    }

    #[test]
    fn encodes_slashes_in_names() {
        assert_eq!(encode_segment("abc/eth0"), "abc%2Feth0");
    }

    #[test]
    fn missing_daemon_is_reported_as_unreachable() {
        let err = Client::new("/nonexistent/heddle.sock")
            .health()
            .unwrap_err();
        assert!(err.is_unreachable());
        assert!(err.to_string().contains("is the daemon running"));
    }
}
