//! The forwarding database: (VLAN, MAC) → port, shared by every PMD worker without locks.
//!
//! Open addressing over a fixed array of slots (twice the configured capacity, rounded up
//! to a power of two), probed over a bounded window of [`PROBE`] slots from the key's hash.
//! Workers learn and look up concurrently through `&Fdb`; one control thread adds static
//! entries, removes, ages and flushes ports at the same time. Nothing allocates after
//! [`Fdb::new`] (except [`Fdb::entries`], which builds the control plane's list).
//!
//! # Slot protocol
//!
//! A slot is two `AtomicU64`s: `meta` and `key` (`vlan << 48 | mac`). `meta` is the slot's
//! state word and the only one any writer changes by compare-and-swap:
//!
//! ```text
//!  63..62  state: 0 empty (never used: ends a probe), 1 free (removed: reusable, does not
//!          end a probe), 2 busy (being claimed), 3 valid
//!  61      static
//!  60..48  incarnation (13 bits, bumped each time the slot is claimed for a key)
//!  47..32  port
//!  31..0   last seen, seconds of the daemon's coarse clock
//! ```
//!
//! - **Claim** (a new key): CAS `meta` empty/free → busy, store `key` (release), store
//!   `meta` = valid with the next incarnation (release).
//! - **Update** (refresh, MAC move, static over learned): CAS `meta` from the exact word
//!   read. A learner delayed between reading a slot and writing it cannot write into the
//!   slot after it was reused for another key: the CAS fails because state or incarnation
//!   changed, and the learner looks again.
//! - **Remove** (age, flush, remove): CAS `meta` from the exact word read → free.
//! - **Read** (lookup, learn, listing): load `meta` (acquire), load `key` (acquire), load
//!   `meta` again; the key is the slot's only if both `meta` reads are valid with the same
//!   incarnation. A slot reused under a reader is a miss (the frame is flooded), never
//!   another key's port. The incarnation wraps after 8192 reuses of one slot, which would
//!   have to happen between two loads of one reader.
//!
//! Two workers learning the same new key at the same instant may each claim a slot. After
//! publishing, a claimer fences (SeqCst) and scans the window for the same key elsewhere;
//! at least one of the two sees the other, and both apply one rule (a static entry wins,
//! else the lower slot), so a duplicate is removed at once.
//!
//! Learning rewrites `meta` only when the port changed or the clock second ticked over, so
//! a steady flow does not bounce the slot's cache line between workers.

use crate::sync::atomic::{fence, AtomicU64, Ordering};

use super::io::PortIndex;
use super::vlan::Vlan;

/// Slots probed from a key's hash position. A key whose window has no free slot is not
/// learned ([`Learn::Full`]); its frames are flooded.
pub const PROBE: usize = 16;

const STATE_SHIFT: u32 = 62;
const EMPTY: u64 = 0;
const FREE: u64 = 1;
const BUSY: u64 = 2;
const VALID: u64 = 3;
const STATIC: u64 = 1 << 61;
const SEQ_SHIFT: u32 = 48;
const SEQ_MASK: u64 = (1 << 13) - 1;
const PORT_SHIFT: u32 = 32;

#[inline(always)]
const fn state(m: u64) -> u64 {
    m >> STATE_SHIFT
}

#[inline(always)]
const fn seq(m: u64) -> u64 {
    (m >> SEQ_SHIFT) & SEQ_MASK
}

#[inline(always)]
const fn port_of(m: u64) -> PortIndex {
    (m >> PORT_SHIFT) as PortIndex
}

#[inline(always)]
const fn time_of(m: u64) -> u32 {
    m as u32
}

/// A valid `meta` word of incarnation `seq`.
#[inline(always)]
const fn valid(seq: u64, port: PortIndex, now: u32, is_static: bool) -> u64 {
    (VALID << STATE_SHIFT)
        | if is_static { STATIC } else { 0 }
        | ((seq & SEQ_MASK) << SEQ_SHIFT)
        | ((port as u64) << PORT_SHIFT)
        | now as u64
}

/// `m` with its state replaced, incarnation kept.
#[inline(always)]
const fn with_state(m: u64, st: u64) -> u64 {
    (st << STATE_SHIFT) | (seq(m) << SEQ_SHIFT)
}

#[inline(always)]
fn key_of(vlan: Vlan, mac: &[u8; 6]) -> u64 {
    let m = u64::from_be_bytes([0, 0, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]]);
    (u64::from(vlan.get()) << 48) | m
}

#[repr(C, align(16))]
#[derive(Default)]
struct Slot {
    meta: AtomicU64,
    key: AtomicU64,
}

/// What reading one slot found.
enum Read {
    /// Never used: the probe ends here.
    Empty,
    /// Free, or being claimed: no key here, keep probing.
    Vacant(u64),
    /// A consistent (key, meta) pair.
    Entry(u64, u64),
    /// Changed while being read.
    Raced,
}

impl Slot {
    /// A consistent read of the slot (the protocol's *Read*).
    #[inline(always)]
    fn read(&self) -> Read {
        let m = self.meta.load(Ordering::Acquire);
        match state(m) {
            EMPTY => Read::Empty,
            VALID => {
                // Acquire: pairs with the claimer's release store of `meta`, so the key is
                // this incarnation's or newer; and if it is newer, the next load sees the
                // newer claimer's busy state or later (its CAS precedes its key store).
                let k = self.key.load(Ordering::Acquire);
                let m2 = self.meta.load(Ordering::Relaxed);
                if state(m2) == VALID && seq(m2) == seq(m) {
                    Read::Entry(k, m2)
                } else {
                    Read::Raced
                }
            }
            _ => Read::Vacant(m),
        }
    }

    /// Removes the entry of incarnation `seq(m)`, whatever its port or time became; false
    /// when it is already gone.
    fn remove_incarnation(&self, mut m: u64) -> bool {
        let inc = seq(m);
        loop {
            if state(m) != VALID || seq(m) != inc {
                return false;
            }
            match self.meta.compare_exchange_weak(
                m,
                with_state(m, FREE),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => m = now,
            }
        }
    }
}

/// What learning a source address did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    /// Already known on this port this second: nothing written.
    Known,
    /// Known on this port; last-seen time refreshed.
    Refreshed,
    /// A new entry.
    Learned,
    /// The MAC moved from another port to this one.
    Moved,
    /// A static entry names another port; left alone.
    Static,
    /// No free slot in the probe window (or the window kept changing under the learner).
    Full,
}

/// One entry, for the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// VLAN.
    pub vlan: Vlan,
    /// MAC.
    pub mac: [u8; 6],
    /// Port.
    pub port: PortIndex,
    /// Static (never learned over, never aged).
    pub is_static: bool,
    /// Clock second of the last frame seen from it (0 for static entries).
    pub last_seen: u32,
}

impl FdbEntry {
    /// Seconds since the entry was last seen at clock second `now` (0 for static entries).
    pub fn age(&self, now: u32) -> u32 {
        if self.is_static {
            0
        } else {
            now.saturating_sub(self.last_seen)
        }
    }
}

/// The shared forwarding database. `Sync`: share it by reference between workers.
pub struct Fdb {
    slots: Box<[Slot]>,
    mask: usize,
    shift: u32,
    capacity: usize,
    aged: AtomicU64,
}

/// Passes over a changing window before learning gives up.
const ATTEMPTS: usize = 4;

impl Fdb {
    /// A table for about `capacity` entries: twice that many slots, rounded up to a power
    /// of two (at least 16). Allocates all of it here.
    pub fn new(capacity: usize) -> Fdb {
        let slots = (capacity.max(8) * 2).next_power_of_two();
        Fdb {
            slots: (0..slots).map(|_| Slot::default()).collect(),
            mask: slots - 1,
            shift: 64 - slots.trailing_zeros(),
            capacity,
            aged: AtomicU64::new(0),
        }
    }

    /// Entries it was sized for.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots in the table.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    #[inline(always)]
    fn slot(&self, home: usize, i: usize) -> &Slot {
        &self.slots[(home + i) & self.mask]
    }

    /// The port for `(vlan, mac)`, if known. Never another key's port, even while the
    /// entry is being removed or its slot reused (then: `None`).
    #[inline]
    pub fn lookup(&self, vlan: Vlan, mac: &[u8; 6]) -> Option<PortIndex> {
        let key = key_of(vlan, mac);
        let home = self.home(key);
        for i in 0..PROBE {
            let s = self.slot(home, i);
            let m = s.meta.load(Ordering::Acquire);
            match state(m) {
                EMPTY => return None,
                // As in `Slot::read`, inlined to skip the second `meta` load for keys that
                // do not match.
                VALID if s.key.load(Ordering::Acquire) == key => {
                    let m2 = s.meta.load(Ordering::Relaxed);
                    return (state(m2) == VALID && seq(m2) == seq(m)).then(|| port_of(m2));
                }
                _ => {}
            }
        }
        None
    }

    /// Records that `mac` was seen on `port` in `vlan` at clock second `now`. Called by
    /// workers for every unicast source.
    #[inline]
    pub fn learn(&self, vlan: Vlan, mac: &[u8; 6], port: PortIndex, now: u32) -> Learn {
        self.upsert(key_of(vlan, mac), port, now, false)
    }

    fn upsert(&self, key: u64, port: PortIndex, now: u32, make_static: bool) -> Learn {
        let home = self.home(key);
        'attempt: for _ in 0..ATTEMPTS {
            let mut free: Option<(usize, u64)> = None;
            for i in 0..PROBE {
                let s = self.slot(home, i);
                match s.read() {
                    Read::Empty => {
                        free.get_or_insert((i, EMPTY << STATE_SHIFT));
                        break;
                    }
                    Read::Vacant(m) => {
                        if state(m) == FREE && free.is_none() {
                            free = Some((i, m));
                        }
                    }
                    Read::Raced => continue 'attempt,
                    Read::Entry(k, m) if k == key => {
                        let was_static = m & STATIC != 0;
                        if was_static && !make_static {
                            return if port_of(m) == port {
                                Learn::Known
                            } else {
                                Learn::Static
                            };
                        }
                        let new = valid(seq(m), port, now, make_static);
                        if new == m {
                            return Learn::Known;
                        }
                        if s.meta
                            .compare_exchange(m, new, Ordering::AcqRel, Ordering::Relaxed)
                            .is_err()
                        {
                            continue 'attempt;
                        }
                        return if port_of(m) != port {
                            Learn::Moved
                        } else {
                            Learn::Refreshed
                        };
                    }
                    Read::Entry(..) => {}
                }
            }
            let Some((i, seen)) = free else {
                return Learn::Full;
            };
            let s = self.slot(home, i);
            if s.meta
                .compare_exchange(
                    seen,
                    with_state(seen, BUSY),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue 'attempt;
            }
            // Release: a reader that loads this key then sees our busy state or later.
            s.key.store(key, Ordering::Release);
            let published = valid(seq(seen) + 1, port, now, make_static);
            s.meta.store(published, Ordering::Release);
            self.dedupe(home, i, key, published);
            return Learn::Learned;
        }
        Learn::Full
    }

    /// After claiming slot `mine` of the window at `home` for `key`: removes a duplicate
    /// claimed concurrently by another thread. The SeqCst fence makes sure that of two
    /// racing claimers at least one sees the other's published entry; both pick the same
    /// victim: the non-static one, else the higher slot.
    #[cold]
    fn dedupe(&self, home: usize, mine: usize, key: u64, published: u64) {
        fence(Ordering::SeqCst);
        for j in 0..PROBE {
            if j == mine {
                continue;
            }
            let other = self.slot(home, j);
            let Read::Entry(k, m) = other.read() else {
                continue;
            };
            if k != key {
                continue;
            }
            let mine_static = published & STATIC != 0;
            let other_static = m & STATIC != 0;
            let remove_mine = if mine_static != other_static {
                other_static
            } else {
                j < mine
            };
            if remove_mine {
                self.slot(home, mine).remove_incarnation(published);
                return;
            }
            other.remove_incarnation(m);
        }
    }

    /// Installs a static entry (control plane): never aged, never moved by learning; it
    /// replaces a learned entry for the same key. False when the window is full.
    pub fn add_static(&self, vlan: Vlan, mac: [u8; 6], port: PortIndex) -> bool {
        self.upsert(key_of(vlan, &mac), port, 0, true) != Learn::Full
    }

    /// Removes `(vlan, mac)`, static or learned; true when it was there.
    pub fn remove(&self, vlan: Vlan, mac: [u8; 6]) -> bool {
        let key = key_of(vlan, &mac);
        let home = self.home(key);
        let mut found = false;
        for i in 0..PROBE {
            let s = self.slot(home, i);
            match s.read() {
                Read::Empty => break,
                Read::Entry(k, m) if k == key => found |= s.remove_incarnation(m),
                _ => {}
            }
        }
        found
    }

    /// Removes learned entries not seen for more than `max_age` seconds at clock second
    /// `now`; returns how many. An entry refreshed meanwhile by a worker is kept.
    pub fn age(&self, now: u32, max_age: u32) -> usize {
        let mut n = 0;
        for s in self.slots.iter() {
            let m = s.meta.load(Ordering::Acquire);
            if state(m) != VALID || m & STATIC != 0 || now.saturating_sub(time_of(m)) <= max_age {
                continue;
            }
            // The exact word: fails if a worker refreshed or moved it since.
            if s.meta
                .compare_exchange(m, with_state(m, FREE), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                n += 1;
            }
        }
        self.aged.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Removes every entry (static ones too) pointing at `port`; returns how many.
    pub fn flush_port(&self, port: PortIndex) -> usize {
        let mut n = 0;
        for s in self.slots.iter() {
            let mut m = s.meta.load(Ordering::Acquire);
            while state(m) == VALID && port_of(m) == port {
                match s.meta.compare_exchange_weak(
                    m,
                    with_state(m, FREE),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        n += 1;
                        break;
                    }
                    Err(now) => m = now,
                }
            }
        }
        n
    }

    /// Every entry (control plane). Entries learned or removed while it runs may or may
    /// not be listed; each listed entry was in the table with that port at some instant.
    pub fn entries(&self) -> Vec<FdbEntry> {
        let mut out = Vec::new();
        for s in self.slots.iter() {
            let Read::Entry(k, m) = s.read() else {
                continue;
            };
            let b = k.to_be_bytes();
            let Some(vlan) = Vlan::new((k >> 48) as u16) else {
                continue;
            };
            out.push(FdbEntry {
                vlan,
                mac: [b[2], b[3], b[4], b[5], b[6], b[7]],
                port: port_of(m),
                is_static: m & STATIC != 0,
                last_seen: time_of(m),
            });
        }
        out
    }

    /// Entries now in the table (a scan of every slot: control plane only).
    pub fn len(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| state(s.meta.load(Ordering::Relaxed)) == VALID)
            .count()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries removed by ageing since start.
    pub fn aged_total(&self) -> u64 {
        self.aged.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn v(id: u16) -> Vlan {
        Vlan::new(id).unwrap()
    }

    fn mac(n: u32) -> [u8; 6] {
        let b = n.to_be_bytes();
        [2, 0, b[0], b[1], b[2], b[3]]
    }

    /// Keys whose probe windows start at the same slot of `f`.
    fn colliding(f: &Fdb, vlan: Vlan, count: usize) -> Vec<[u8; 6]> {
        let home = f.home(key_of(vlan, &mac(0)));
        (0u32..)
            .map(mac)
            .filter(|m| f.home(key_of(vlan, m)) == home)
            .take(count)
            .collect()
    }

    #[test]
    fn fdb_is_sync_and_sized_in_powers_of_two() {
        fn sync<T: Sync + Send>() {}
        sync::<Fdb>();
        assert_eq!(Fdb::new(65536).slots(), 131072);
        assert_eq!(Fdb::new(1000).slots(), 2048);
        assert_eq!(Fdb::new(1).slots(), 16);
    }

    #[test]
    fn learn_lookup_move_and_refresh() {
        let f = Fdb::new(64);
        assert_eq!(f.lookup(v(1), &mac(1)), None);
        assert_eq!(f.learn(v(1), &mac(1), 3, 10), Learn::Learned);
        assert_eq!(f.lookup(v(1), &mac(1)), Some(3));
        assert_eq!(f.lookup(v(2), &mac(1)), None, "VLANs are separate tables");
        assert_eq!(f.learn(v(1), &mac(1), 3, 10), Learn::Known);
        assert_eq!(f.learn(v(1), &mac(1), 3, 11), Learn::Refreshed);
        assert_eq!(f.learn(v(1), &mac(1), 4, 11), Learn::Moved);
        assert_eq!(f.lookup(v(1), &mac(1)), Some(4));
        assert_eq!(f.len(), 1);
        assert!(!f.is_empty());
    }

    #[test]
    fn static_entries_are_not_learned_over_nor_aged_but_are_flushed() {
        let f = Fdb::new(64);
        assert!(f.add_static(v(5), mac(9), 1));
        assert_eq!(f.learn(v(5), &mac(9), 2, 100), Learn::Static);
        assert_eq!(f.learn(v(5), &mac(9), 1, 100), Learn::Known);
        assert_eq!(f.lookup(v(5), &mac(9)), Some(1));
        assert_eq!(f.age(1_000_000, 300), 0);
        assert_eq!(f.lookup(v(5), &mac(9)), Some(1));
        assert_eq!(f.flush_port(1), 1);
        assert_eq!(f.lookup(v(5), &mac(9)), None);
    }

    #[test]
    fn a_static_entry_replaces_a_learned_one() {
        let f = Fdb::new(64);
        f.learn(v(5), &mac(9), 2, 100);
        assert!(f.add_static(v(5), mac(9), 1));
        assert_eq!(f.lookup(v(5), &mac(9)), Some(1));
        assert_eq!(f.len(), 1);
        assert!(f.entries()[0].is_static);
        assert_eq!(f.learn(v(5), &mac(9), 2, 101), Learn::Static);
    }

    #[test]
    fn ageing_removes_only_stale_learned_entries_and_slots_are_reused() {
        let f = Fdb::new(64);
        f.learn(v(1), &mac(1), 1, 10);
        f.learn(v(1), &mac(2), 1, 300);
        assert_eq!(f.age(310, 300), 0, "exactly max_age old is kept");
        assert_eq!(f.age(311, 300), 1);
        assert_eq!(f.lookup(v(1), &mac(1)), None);
        assert_eq!(f.lookup(v(1), &mac(2)), Some(1));
        assert_eq!(f.aged_total(), 1);
        assert_eq!(f.learn(v(1), &mac(1), 2, 312), Learn::Learned);
        assert_eq!(f.lookup(v(1), &mac(1)), Some(2));
        assert!(f.remove(v(1), mac(1)));
        assert!(!f.remove(v(1), mac(1)));
        assert_eq!(f.entries().len(), 1);
        // A refresh keeps an entry alive.
        f.learn(v(1), &mac(2), 1, 700);
        assert_eq!(f.age(900, 300), 0);
        assert_eq!(f.lookup(v(1), &mac(2)), Some(1));
    }

    #[test]
    fn flush_port_removes_only_that_ports_entries() {
        let f = Fdb::new(64);
        for n in 0..10 {
            f.learn(v(1 + (n % 2) as u16), &mac(n), (n % 3) as u16, 1);
        }
        assert!(f.add_static(v(7), mac(99), 1));
        assert_eq!(f.flush_port(1), 4); // n = 1, 4, 7 and the static one
        assert_eq!(f.len(), 7);
        assert!(f.entries().iter().all(|e| e.port != 1));
        assert_eq!(f.flush_port(1), 0);
    }

    #[test]
    fn removal_in_the_middle_of_a_probe_chain_keeps_later_keys_reachable() {
        let f = Fdb::new(64);
        let keys = colliding(&f, v(1), 5);
        for (i, m) in keys.iter().enumerate() {
            assert_eq!(f.learn(v(1), m, i as u16, 1), Learn::Learned);
        }
        assert!(f.remove(v(1), keys[1]));
        for (i, m) in keys.iter().enumerate() {
            let want = (i != 1).then_some(i as u16);
            assert_eq!(f.lookup(v(1), m), want);
        }
        // The freed slot is reused, and the key is not duplicated.
        assert_eq!(f.learn(v(1), &keys[1], 9, 2), Learn::Learned);
        assert_eq!(f.learn(v(1), &keys[4], 4, 2), Learn::Refreshed);
        assert_eq!(f.len(), 5);
    }

    #[test]
    fn a_full_probe_window_reports_full_and_never_misdirects() {
        let f = Fdb::new(1024);
        let keys = colliding(&f, v(1), PROBE + 5);
        let mut learned = 0;
        for (n, m) in keys.iter().enumerate() {
            match f.learn(v(1), m, (n % 7) as u16, 1) {
                Learn::Learned => learned += 1,
                Learn::Full => assert!(n >= PROBE),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(learned, PROBE);
        for (n, m) in keys.iter().enumerate() {
            let want = (n < PROBE).then_some((n % 7) as u16);
            assert_eq!(f.lookup(v(1), m), want);
        }
        // Freeing one slot lets the next key in.
        assert!(f.remove(v(1), keys[3]));
        assert_eq!(f.learn(v(1), &keys[PROBE], 2, 1), Learn::Learned);
    }

    #[test]
    fn entries_report_vlan_mac_port_and_kind() {
        let f = Fdb::new(64);
        f.learn(v(4094), &[0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x01], 7, 42);
        let e = f.entries();
        assert_eq!(
            e,
            vec![FdbEntry {
                vlan: v(4094),
                mac: [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x01],
                port: 7,
                is_static: false,
                last_seen: 42
            }]
        );
        assert_eq!(e[0].age(50), 8);
    }

    #[test]
    fn slot_reuse_changes_the_incarnation() {
        let f = Fdb::new(64);
        f.learn(v(1), &mac(1), 1, 1);
        let home = f.home(key_of(v(1), &mac(1)));
        let m1 = f.slot(home, 0).meta.load(Ordering::Relaxed);
        f.remove(v(1), mac(1));
        f.learn(v(1), &mac(1), 1, 1);
        let m2 = f.slot(home, 0).meta.load(Ordering::Relaxed);
        assert_eq!(port_of(m1), port_of(m2));
        assert_ne!(m1, m2, "a stale CAS from before the reuse must fail");
    }

    /// Two workers learn disjoint MAC sets, each MAC only ever on its own port, while the
    /// control thread ages everything aggressively (so slots are reused constantly) and a
    /// reader looks everything up: a lookup answers the MAC's own port or nothing.
    #[test]
    fn concurrent_learning_ageing_and_lookups_never_give_a_wrong_port() {
        // Small table: windows overlap heavily and slots churn.
        let f = Arc::new(Fdb::new(128));
        let stop = Arc::new(AtomicBool::new(false));
        let port = |n: u32| (n % 7) as u16;
        let vl = |n: u32| v(1 + (n % 3) as u16);
        let mut threads = Vec::new();
        for t in 0..2u32 {
            let f = f.clone();
            threads.push(std::thread::spawn(move || {
                for round in 0..300u32 {
                    for n in (t..600).step_by(2) {
                        f.learn(vl(n), &mac(n), port(n), round);
                    }
                }
            }));
        }
        let ager = {
            let (f, stop) = (f.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut now = 0;
                while !stop.load(Ordering::Relaxed) {
                    now += 1;
                    f.age(now, 0);
                    f.remove(vl(now % 600), mac(now % 600));
                }
            })
        };
        let mut hits = 0u64;
        for _ in 0..300 {
            for n in 0..600u32 {
                if let Some(p) = f.lookup(vl(n), &mac(n)) {
                    assert_eq!(p, port(n), "mac {n}");
                    hits += 1;
                }
                // A key never learned must never be found.
                assert_eq!(f.lookup(v(4000), &mac(n)), None);
            }
        }
        for t in threads {
            t.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        ager.join().unwrap();
        for e in f.entries() {
            let n = u32::from_be_bytes([e.mac[2], e.mac[3], e.mac[4], e.mac[5]]);
            assert_eq!((e.vlan, e.port), (vl(n), port(n)));
        }
        assert!(hits > 0);
    }

    /// Both workers learn the same new MACs at the same time (on different ports, as in
    /// a MAC move race): the table never holds a key twice.
    #[test]
    fn racing_claims_of_one_key_leave_one_entry() {
        let f = Arc::new(Fdb::new(4096));
        let go = Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = (0..2u16)
            .map(|t| {
                let (f, go) = (f.clone(), go.clone());
                std::thread::spawn(move || {
                    go.wait();
                    for n in 0..2000 {
                        f.learn(v(1), &mac(n), t, 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut keys: Vec<_> = f.entries().iter().map(|e| e.mac).collect();
        let total = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), total, "a key is held twice");
        assert!(f.len() <= 2000);
    }
}

#[cfg(all(heddle_loom, test))]
mod loom_models;
