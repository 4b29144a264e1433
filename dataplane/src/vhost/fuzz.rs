//! Entry points for fuzzing the vhost-user control path: arbitrary bytes from a frontend
//! go through the `vhost` crate's message parser into [`VhostDevice`]. Called by the
//! cargo-fuzz target in `dataplane/fuzz` and, briefly, by the test suite.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::BackendReqHandler;

use super::device::VhostDevice;
use super::ring::PortRings;

/// Feeds `data` to a device as if a frontend had written it on the socket, until the
/// handler reports an error that ends the connection. Must never panic.
pub fn fuzz_protocol(data: &[u8]) {
    let Ok((mut frontend, backend)) = UnixStream::pair() else {
        return;
    };
    // The socket buffer holds the whole input (inputs are small), then EOF.
    let _ = frontend.set_nonblocking(true);
    let _ = frontend.write_all(data);
    let _ = frontend.shutdown(std::net::Shutdown::Write);
    let rings = Arc::new(PortRings::new(2, 1));
    let device = Arc::new(Mutex::new(VhostDevice::new(
        "fuzz".into(),
        rings,
        Arc::new(|| {}),
    )));
    let mut handler = BackendReqHandler::from_stream(backend, device);
    // Each request consumes at least a header, so this ends.
    for _ in 0..(data.len() / 12 + 2) {
        if let Err(e) = handler.handle_request() {
            if super::port::ends_connection(&e) {
                break;
            }
        }
    }
}
