//! In-flight tracking across a crash of the real `heddle-switch`: a test frontend (this
//! process, speaking vhost-user through the `vhost` crate, with rings in its own shared
//! memory) sends frames with unique payloads from port `a` to port `b` through the switch.
//! Port `a`'s frontend negotiates `INFLIGHT_SHMFD` and keeps the region the switch gave it.
//! The test stops the switch (SIGSTOP) until the region shows descriptors taken and not yet
//! returned, kills it there (SIGKILL), starts it again on the same config, reconnects both
//! frontends (`a` sends the region back with `SET_INFLIGHT_FD` and, as DPDK virtio-user after
//! a restart, a ring base of 0 or 0x8000), and checks: every TX descriptor comes back on the
//! used ring exactly once, no payload arrives twice, each payload whose descriptor was in
//! flight at the kill arrives exactly once, and the only payloads missing are ones whose
//! descriptors the switch had completed before the kill (they died in its memory).
//! Split and packed rings on port `a`; port `b` receives on a split ring.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use heddle_tests::env::{exclusive_cpus, free_file_prefix, require_hugepages};
use heddle_tests::switch::{config_yaml, SwitchProcess};
use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

const SIZE: u16 = 256;
const MEM: usize = 4 << 20;
const DESC: usize = 0;
const AVAIL: usize = 0x1000;
const USED: usize = 0x2000;
const BUFS: usize = 0x10000;
const BUF: usize = 2048;
const HDR: usize = 12;
/// Frames a sends in all: enough that traffic still flows while the test stops the switch
/// again and again until it catches descriptors in flight (with 4000 the traffic ended first,
/// a few thousand stops in, before one caught the narrow window; with 200,000 the first catch
/// came after 183 stops here).
const FRAMES: u32 = 200_000;
/// Frames sent and not yet received that `a` may have out (b's ring holds 256 buffers).
const WINDOW: u32 = 160;

const VERSION_1: u64 = 1 << 32;
const RING_PACKED: u64 = 1 << 34;
const PROTOCOL_FEATURES: u64 = 1 << 30;
const F_WRITE: u16 = 2;
const F_AVAIL: u16 = 1 << 7;
const F_USED: u16 = 1 << 15;

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0x1a, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0x1a, 0x0b];

struct Shm {
    file: File,
    base: *mut u8,
    len: usize,
}

// SAFETY: plain shared memory, accessed with volatile reads and writes only.
unsafe impl Send for Shm {}

impl Shm {
    fn new(len: usize) -> Shm {
        // SAFETY: valid C string; the fd is owned by the File below.
        let fd = unsafe { libc::memfd_create(c"inflight-guest".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64).unwrap();
        Shm::map(file, len)
    }

    fn map(file: File, len: usize) -> Shm {
        // SAFETY: a shared mapping of `len` bytes of a file at least that long; kept for the
        // test's life.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        Shm {
            file,
            base: base.cast(),
            len,
        }
    }

    fn write<T: Copy>(&self, off: usize, v: T) {
        assert!(off + std::mem::size_of::<T>() <= self.len);
        assert_eq!(
            off % std::mem::align_of::<T>(),
            0,
            "unaligned write at {off}"
        );
        // SAFETY: in bounds and aligned (both checked); the switch accesses this memory only
        // through volatile reads and atomics.
        unsafe { std::ptr::write_volatile(self.base.add(off).cast::<T>(), v) }
    }

    fn read<T: Copy>(&self, off: usize) -> T {
        assert!(off + std::mem::size_of::<T>() <= self.len);
        assert_eq!(
            off % std::mem::align_of::<T>(),
            0,
            "unaligned read at {off}"
        );
        // SAFETY: in bounds and aligned (both checked); as in `write`.
        unsafe { std::ptr::read_volatile(self.base.add(off).cast::<T>()) }
    }

    /// A little-endian u32 at any offset (a frame's payload need not be aligned), byte by
    /// byte.
    fn read_u32_le(&self, off: usize) -> u32 {
        u32::from_le_bytes(std::array::from_fn(|i| self.read::<u8>(off + i)))
    }
}

/// One frontend: its memory, connection and the ring of vring `vring` (a's TX ring 1 or b's
/// RX ring 0).
struct Guest {
    mem: Shm,
    fe: Option<Frontend>,
    kick: EventFd,
    packed: bool,
    vring: usize,
    /// Split: next avail index and next used index to reap. Packed: next slot to post and
    /// to reap, with their wrap counters.
    avail: u16,
    used: u16,
    avail_wrap: bool,
    used_wrap: bool,
    /// What each descriptor (split head / packed buffer id = slot) carries: payload number.
    posted: HashMap<u16, u32>,
    /// The in-flight region (a only) and what GET_INFLIGHT_FD said about it.
    inflight: Option<(Shm, VhostUserInflight)>,
}

impl Guest {
    fn new(packed: bool, vring: usize) -> Guest {
        Guest {
            mem: Shm::new(MEM),
            fe: None,
            kick: EventFd::new(0).unwrap(),
            packed,
            vring,
            avail: 0,
            used: 0,
            avail_wrap: true,
            used_wrap: true,
            posted: HashMap::new(),
            inflight: None,
        }
    }

    /// Connects and sets the ring up (again after a restart, with the kept region).
    fn connect(&mut self, sock: &Path, track: bool) -> Result<()> {
        let mut fe = Frontend::connect(sock, 2).context("connect")?;
        fe.set_owner()?;
        fe.get_features()?;
        let packed = if self.packed { RING_PACKED } else { 0 };
        fe.set_features(VERSION_1 | PROTOCOL_FEATURES | packed)?;
        let offered = fe.get_protocol_features()?;
        let mut want = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
        if track {
            ensure!(
                offered.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD),
                "the switch does not offer INFLIGHT_SHMFD: {offered:?}"
            );
            want |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
        }
        fe.set_protocol_features(want)?;
        if track {
            if self.inflight.is_none() {
                let ask = VhostUserInflight::new(0, 0, 2, SIZE);
                let (info, file) = fe.get_inflight_fd(&ask)?;
                ensure!(info.mmap_size > 0 && info.num_queues == 2 && info.queue_size == SIZE);
                let shm = Shm::map(file, info.mmap_size as usize);
                self.inflight = Some((shm, info));
            }
            let (shm, info) = self.inflight.as_ref().unwrap();
            fe.set_inflight_fd(info, shm.file.as_raw_fd())?;
        }
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM as u64,
            userspace_addr: self.mem.base as u64,
            mmap_offset: 0,
            mmap_handle: self.mem.file.as_raw_fd(),
        };
        fe.set_mem_table(&[region])?;
        let uva = self.mem.base as u64;
        fe.set_vring_num(self.vring, SIZE)?;
        fe.set_vring_addr(
            self.vring,
            &VringConfigData {
                queue_max_size: SIZE,
                queue_size: SIZE,
                flags: 0,
                desc_table_addr: uva + DESC as u64,
                used_ring_addr: uva + USED as u64,
                avail_ring_addr: uva + AVAIL as u64,
                log_addr: None,
            },
        )?;
        // What DPDK virtio-user sends after a restart: a fresh ring's base.
        fe.set_vring_base(self.vring, if self.packed { 0x8000 } else { 0 })?;
        fe.set_vring_kick(self.vring, &self.kick)?;
        fe.set_vring_enable(self.vring, true)?;
        self.fe = Some(fe);
        Ok(())
    }

    fn free(&self) -> bool {
        self.posted.len() < usize::from(SIZE)
    }

    /// Posts one buffer: `frame` to send (device-readable), or an empty receive buffer.
    fn post(&mut self, payload: u32, frame: Option<&[u8]>) {
        let d = if self.packed {
            self.avail
        } else {
            (0..SIZE).find(|h| !self.posted.contains_key(h)).unwrap()
        };
        let buf = BUFS + BUF * usize::from(d);
        let (len, flags) = match frame {
            Some(f) => {
                for (i, b) in [0u8; HDR].iter().chain(f).enumerate() {
                    self.mem.write(buf + i, *b);
                }
                ((HDR + f.len()) as u32, 0)
            }
            None => (BUF as u32, F_WRITE),
        };
        let off = DESC + 16 * usize::from(d);
        self.mem.write(off, buf as u64);
        self.mem.write(off + 8, len);
        self.posted.insert(d, payload);
        if self.packed {
            self.mem.write(off + 12, d);
            let f = flags | if self.avail_wrap { F_AVAIL } else { F_USED };
            fence(Ordering::Release);
            self.mem.write(off + 14, f);
            self.avail += 1;
            if self.avail == SIZE {
                self.avail = 0;
                self.avail_wrap = !self.avail_wrap;
            }
        } else {
            self.mem.write(off + 12, flags);
            self.mem.write(off + 14, 0u16);
            self.mem
                .write(AVAIL + 4 + 2 * usize::from(self.avail % SIZE), d);
            self.avail = self.avail.wrapping_add(1);
            fence(Ordering::Release);
            self.mem.write(AVAIL + 2, self.avail);
        }
    }

    /// Every descriptor returned since the last call: (payload, bytes written, buffer).
    fn reap(&mut self) -> Result<Vec<(u32, u32, usize)>> {
        let mut out = Vec::new();
        loop {
            let (id, len) = if self.packed {
                let off = DESC + 16 * usize::from(self.used);
                let flags: u16 = self.mem.read(off + 14);
                let w = self.used_wrap;
                if (flags & F_AVAIL != 0) != w || (flags & F_USED != 0) != w {
                    break;
                }
                fence(Ordering::Acquire);
                let id: u16 = self.mem.read(off + 12);
                let len: u32 = self.mem.read(off + 8);
                self.used += 1;
                if self.used == SIZE {
                    self.used = 0;
                    self.used_wrap = !self.used_wrap;
                }
                (id, len)
            } else {
                let idx: u16 = self.mem.read(USED + 2);
                if idx == self.used {
                    break;
                }
                fence(Ordering::Acquire);
                let e = USED + 4 + 8 * usize::from(self.used % SIZE);
                let id: u32 = self.mem.read(e);
                let len: u32 = self.mem.read(e + 4);
                self.used = self.used.wrapping_add(1);
                (id as u16, len)
            };
            let Some(p) = self.posted.remove(&id) else {
                bail!("descriptor {id} returned but not posted (returned twice?)");
            };
            out.push((p, len, BUFS + BUF * usize::from(id)));
        }
        Ok(out)
    }

    /// Descriptors the region marks in flight on this guest's vring (split: heads; packed:
    /// the buffer id of each chain's head entry).
    fn in_flight(&self) -> Vec<u16> {
        let Some((shm, info)) = &self.inflight else {
            return Vec::new();
        };
        let stride = (info.mmap_size / u64::from(info.num_queues)) as usize;
        let q = stride * self.vring;
        let (hdr, entry, id_at) = if self.packed {
            (32, 32, Some(16))
        } else {
            (16, 16, None)
        };
        (0..SIZE)
            .filter(|&i| shm.read::<u8>(q + hdr + entry * usize::from(i)) == 1)
            .map(|i| match id_at {
                Some(at) => shm.read::<u16>(q + hdr + entry * usize::from(i) + at),
                None => i,
            })
            .collect()
    }
}

fn frame(payload: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&0x88b5u16.to_be_bytes());
    f.extend_from_slice(&payload.to_le_bytes());
    f.resize(64, 0x5a);
    f
}

/// Both frontends and the counts the test checks.
struct World {
    a: Guest,
    b: Guest,
    next: u32,
    returned: Vec<u32>,
    received: Vec<u32>,
    /// Payloads received at least once.
    got: u32,
    /// Frames the switch completed before the kill and took down with it: never received,
    /// so not counted against the window after the restart.
    forgiven: u32,
}

impl World {
    /// One round of both guests: b takes what arrived and posts its buffers again, a reaps
    /// and sends more while b has room.
    fn step(&mut self) -> Result<()> {
        for (_, len, buf) in self.b.reap()? {
            ensure!(len as usize >= HDR + 18, "short frame at b ({len} bytes)");
            let p = self.b.mem.read_u32_le(buf + HDR + 14);
            ensure!(p < FRAMES, "garbage payload {p} at b");
            if self.received[p as usize] == 0 {
                self.got += 1;
            }
            self.received[p as usize] += 1;
        }
        while self.b.free() {
            self.b.post(0, None);
        }
        for (p, _, _) in self.a.reap()? {
            self.returned[p as usize] += 1;
        }
        loop {
            let Some(out) = self.next.checked_sub(self.got + self.forgiven) else {
                bail!(
                    "b received more payloads ({}) than a sent ({}) less those lost at the kill ({}): a frame completed before the kill was delivered after it",
                    self.got,
                    self.next,
                    self.forgiven
                );
            };
            if self.next == FRAMES || !self.a.free() || out >= WINDOW {
                break;
            }
            let f = frame(self.next);
            self.a.post(self.next, Some(&f));
            self.next += 1;
        }
        Ok(())
    }
}

/// Waits until every thread of `pid` is stopped (state `T` in `/proc/<pid>/task/*/stat`), so
/// nothing the switch does can change the rings or the region while the test reads them.
fn wait_stopped(pid: libc::pid_t) -> Result<()> {
    let t = Instant::now();
    loop {
        let mut all = true;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let stat = std::fs::read_to_string(task?.path().join("stat")).unwrap_or_default();
            // The state follows the command name's closing parenthesis.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            if !matches!(state, Some("T") | Some("t") | None) {
                all = false;
            }
        }
        if all {
            return Ok(());
        }
        ensure!(
            t.elapsed() < Duration::from_secs(5),
            "the switch did not stop"
        );
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn run(packed: bool) -> Result<()> {
    require_hugepages(300)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let ports = format!(
        "  - {{name: pod-a, devargs: \"vhost-user-a,iface={},packed=1\", mode: access, vlan: 7, mac: \"{}\"}}\n  - {{name: pod-b, devargs: \"vhost-user-b,iface={}\", mode: access, vlan: 7, mac: \"{}\"}}\n",
        sa.display(),
        mac(MAC_A),
        sb.display(),
        mac(MAC_B)
    );
    let yaml = config_yaml(dir.path(), &free_file_prefix("heddle-if"), &ports);
    let mut switch = SwitchProcess::start(dir.path(), &yaml)?;
    let world = Arc::new(Mutex::new(World {
        a: Guest::new(packed, 1),
        b: Guest::new(false, 0),
        next: 0,
        returned: vec![0; FRAMES as usize],
        received: vec![0; FRAMES as usize],
        got: 0,
        forgiven: 0,
    }));
    {
        let mut w = world.lock().unwrap();
        w.a.connect(&sa, true)?;
        w.b.connect(&sb, false)?;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let guest = {
        let (world, stop) = (world.clone(), stop.clone());
        std::thread::spawn(move || -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                world.lock().unwrap().step()?;
                std::thread::yield_now();
            }
            Ok(())
        })
    };
    let progress = |w: &World| w.got;
    let t = Instant::now();
    while progress(&world.lock().unwrap()) < 500 {
        ensure!(
            t.elapsed() < Duration::from_secs(20) && !guest.is_finished(),
            "no traffic before the kill:\n{}",
            switch.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // Stop the switch until it holds descriptors of a's in flight, then kill it there.
    let pid = switch.pid().context("pid")? as libc::pid_t;
    let mut tries = 0u32;
    let in_flight = loop {
        tries += 1;
        ensure!(
            tries < 20_000,
            "never caught the switch with descriptors in flight"
        );
        // SAFETY: signals to our own child process.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        wait_stopped(pid)?;
        let mut w = world.lock().unwrap();
        // What the switch returned before it stopped is reaped now, so `posted` holds only
        // what it has not returned.
        w.step()?;
        let flying: Vec<(u16, u32)> =
            w.a.in_flight()
                .into_iter()
                .filter_map(|d| w.a.posted.get(&d).map(|&p| (d, p)))
                .collect();
        if !flying.is_empty() && w.next < FRAMES - 500 {
            let stale: Vec<u16> =
                w.a.in_flight()
                    .into_iter()
                    .filter(|d| !w.a.posted.contains_key(d))
                    .collect();
            ensure!(
                stale.is_empty(),
                "the region marks descriptors a already has back: {stale:?}"
            );
            switch.kill9()?;
            break flying;
        }
        drop(w);
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        std::thread::sleep(Duration::from_micros(u64::from(tries % 7) * 150));
    };
    let done_before: Vec<u32> = world.lock().unwrap().returned.clone();
    eprintln!(
        "killed after {tries} tries with {} descriptor(s) in flight: {in_flight:?}",
        in_flight.len()
    );

    // Same config, same sockets; both frontends reconnect, a with its region.
    let mut switch = SwitchProcess::start(dir.path(), &yaml)?;
    {
        let mut w = world.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = w.b.connect(&sb, false).and_then(|_| w.a.connect(&sa, true));
            match r {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("reconnect: {e:#}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
        // What a had sent and got back but b never received went down with the switch;
        // what a still has posted (in flight at the kill or not yet taken) is still to come.
        w.step()?;
        w.forgiven = w.next - w.got - w.a.posted.len() as u32;
        eprintln!(
            "{} frame(s) completed before the kill and never received",
            w.forgiven
        );
    }
    let t = Instant::now();
    loop {
        if guest.is_finished() {
            let r = guest.join().unwrap();
            bail!(
                "the guests stopped after the restart: {r:?}\n{}",
                switch.log()
            );
        }
        {
            let w = world.lock().unwrap();
            let all_back = w.next == FRAMES && w.a.posted.is_empty();
            let lost = w.received.iter().filter(|&&c| c == 0).count();
            if all_back && lost <= 64 {
                break;
            }
            ensure!(
                t.elapsed() < Duration::from_secs(30),
                "traffic did not finish after the restart: sent {}, {} not returned, {lost} not received\n{}",
                w.next,
                w.a.posted.len(),
                switch.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the last frames land.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    guest.join().unwrap()?;
    let w = world.lock().unwrap();
    for (p, &r) in w.returned.iter().enumerate() {
        ensure!(r == 1, "payload {p}: descriptor returned {r} times");
    }
    for (p, &c) in w.received.iter().enumerate() {
        ensure!(c <= 1, "payload {p} received {c} times");
    }
    for &(d, p) in &in_flight {
        ensure!(
            w.received[p as usize] == 1,
            "payload {p} (descriptor {d}, in flight at the kill) received {} times",
            w.received[p as usize]
        );
    }
    let lost: Vec<usize> = (0..FRAMES as usize)
        .filter(|&p| w.received[p] == 0)
        .collect();
    for &p in &lost {
        ensure!(
            done_before[p] == 1,
            "payload {p} lost although its descriptor was not completed before the kill"
        );
    }
    eprintln!(
        "{} payloads, each descriptor returned once; {} in flight at the kill, each delivered once; {} completed before the kill and lost with the switch",
        FRAMES,
        in_flight.len(),
        lost.len()
    );
    let stats = switch.client().stats()?;
    for p in &stats.ports {
        let v = p.vhost.as_ref().context("vhost stats")?;
        ensure!(
            v.broken_rings == 0 && v.bad_chains == 0,
            "{}: {v:?}",
            p.name
        );
    }
    switch.stop()?;
    Ok(())
}

#[test]
fn split_ring_descriptors_in_flight_at_kill9_complete_exactly_once() -> Result<()> {
    run(false)
}

#[test]
fn packed_ring_descriptors_in_flight_at_kill9_complete_exactly_once() -> Result<()> {
    run(true)
}
