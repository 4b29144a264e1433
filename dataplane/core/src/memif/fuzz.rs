//! Entry point for fuzzing the memif control path: arbitrary bytes from a slave go through
//! [`Msg::parse`](super::protocol::Msg::parse) into a [`Session`], as the port thread feeds
//! them, and the rings a successful `CONNECT` yields are run for a few bursts. Called by the
//! cargo-fuzz target `memif_protocol` in `dataplane/fuzz` and by the test suite, which
//! replays its committed corpus.
//!
//! Input: a sequence of records, each one control byte then up to 128 message bytes. Bit 0
//! of the control byte attaches a region file (a sealed memfd of `4096 * (1 + bits 1-3)`
//! bytes whose every 8-byte word starts with the ring cookie, so rings can pass the cookie
//! check and then run over whatever the fuzzer made of their indexes); bits 4-7 shorten the
//! message (a record of `128 - 8 * n` bytes), to reach the length checks.

use super::protocol::{COOKIE, MSG_SIZE};
use super::session::{Session, Step};
use super::testing::memfd;
use crate::switch::io::Burst;
use crate::switch::testing::{frame, mac, TestPacket};
use crate::vhost::testing::VecPool;

/// The most records fed to one session.
pub const MAX_RECORDS: usize = 64;

fn region(ctl: u8) -> std::fs::File {
    use std::io::Write;
    let len = 4096 * (1 + u64::from((ctl >> 1) & 7));
    let mut f = memfd(len);
    let mut word = [0u8; 8];
    word[..4].copy_from_slice(&COOKIE.to_le_bytes());
    let page: Vec<u8> = word.iter().copied().cycle().take(4096).collect();
    for _ in 0..len / 4096 {
        let _ = f.write_all(&page);
    }
    f
}

/// Feeds `data` to a session for interface 0 with 2 queue pairs. Must never panic or block.
pub fn fuzz_protocol(data: &[u8]) {
    let mut session = Session::new(0, 2);
    let _ = session.hello();
    let mut rest = data;
    for _ in 0..MAX_RECORDS {
        let Some((&ctl, tail)) = rest.split_first() else {
            break;
        };
        let len = (MSG_SIZE - 8 * usize::from(ctl >> 4)).min(tail.len());
        let (msg, next) = tail.split_at(len);
        rest = next;
        let fd = (ctl & 1 != 0).then(|| region(ctl));
        match session.handle(msg, fd) {
            Ok(Step::Reply(_)) => {}
            Ok(Step::Connected { rx, tx, .. }) => {
                let mut pool = VecPool::new(2048, 64);
                let pkts = [
                    TestPacket::new(&frame(mac(1), mac(2), None, 60)),
                    TestPacket::new(&frame(mac(3), mac(4), None, 1500)),
                ];
                for mut q in rx {
                    let mut out = Burst::new();
                    let mut st = Default::default();
                    q.queue.dequeue(&mut pool, &mut out, &mut st);
                    pool.give_back(out.drain());
                }
                for mut q in tx {
                    let mut st = Default::default();
                    q.queue.enqueue(&pkts, &mut st);
                }
                break;
            }
            Ok(Step::Disconnect(_)) | Err(_) => break,
        }
    }
}
