//! Entry points for fuzzing the vhost-user control path: arbitrary bytes from a frontend
//! go through the `vhost` crate's message parser into [`VhostDevice`]. Called by the
//! cargo-fuzz target in `dataplane/fuzz` and by the test suite, which replays its committed
//! corpus (`dataplane/tests/fuzz_corpus.rs`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::BackendReqHandler;

use super::device::VhostDevice;
use super::ring::PortRings;

/// The most input bytes fed to one connection. The frontend writes the input before the
/// backend reads, so it must fit the socket's buffer (about 200 KiB); the rest is dropped.
pub const MAX_INPUT: usize = 64 * 1024;

/// Reads and discards whatever the backend has replied so far (the frontend end is
/// non-blocking). Without this a flood of requests that need replies (`GET_FEATURES`) fills
/// the socket and the backend blocks in `sendmsg` forever. File descriptors passed with a
/// reply are closed by the kernel, as the read takes no ancillary data.
fn drain(frontend: &mut UnixStream, sink: &mut [u8]) {
    while let Ok(n) = frontend.read(sink) {
        if n == 0 {
            break;
        }
    }
}

/// Feeds `data` to a device as if a frontend had written it on the socket, until the
/// handler reports an error that ends the connection, reading the replies as it goes. Must
/// never panic or block.
pub fn fuzz_protocol(data: &[u8]) {
    let data = &data[..data.len().min(MAX_INPUT)];
    let Ok((mut frontend, backend)) = UnixStream::pair() else {
        return;
    };
    // The socket buffer holds the whole input, then EOF.
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
    let mut sink = [0u8; 4096];
    // Each request consumes at least a header, so this ends.
    for _ in 0..(data.len() / 12 + 2) {
        let result = handler.handle_request();
        drain(&mut frontend, &mut sink);
        if let Err(e) = result {
            if super::port::ends_connection(&e) {
                break;
            }
        }
    }
}
