//! The forwarding database: (VLAN, MAC) → port, shared by every PMD worker without locks.
//!
//! Open addressing over a fixed array of slots, each two `AtomicU64`s (key, value), probed
//! over a bounded window from the key's hash. Workers learn and look up concurrently; the
//! control thread adds static entries, ages, and flushes ports. Nothing allocates after
//! construction.
//!
//! - key: 0 = empty, `u64::MAX` = tombstone (a removed entry; reused by inserts, and it does
//!   not end a probe), else `1 << 63 | vlan << 48 | mac`.
//! - value: `VALID | STATIC? | port << 32 | last_seen` (seconds of the daemon's coarse clock).
//!
//! A slot is claimed by CAS on its key, then its value is published with a release store.
//! Removal clears the value first, then tombstones the key. A lookup reads key, value, then
//! the key again and answers only if the key did not change, so a slot reused for another
//! key under its feet is a miss (the frame is flooded), never a wrong port. Two workers
//! learning the same new MAC at the same instant may, rarely, each claim a slot; lookups
//! and learning use the first, and the other ages out.
//!
//! Learning rewrites a value only when the port changed or the second ticked over, so a
//! steady flow does not bounce the cache line between workers.

use std::sync::atomic::{AtomicU64, Ordering};

use super::io::PortIndex;
use super::vlan::Vlan;

const EMPTY: u64 = 0;
const TOMBSTONE: u64 = u64::MAX;
const KEY_USED: u64 = 1 << 63;
const VALID: u64 = 1 << 63;
const STATIC: u64 = 1 << 62;
/// Slots probed from the hash position.
pub const PROBE: usize = 16;

#[repr(C, align(16))]
#[derive(Default)]
struct Slot {
    key: AtomicU64,
    value: AtomicU64,
}

/// What learning a source address did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    /// Already known on this port, nothing written.
    Known,
    /// Known on this port, last-seen time refreshed.
    Refreshed,
    /// A new entry.
    Learned,
    /// The MAC moved from another port to this one.
    Moved,
    /// A static entry names another port; left alone.
    Static,
    /// No free slot in the probe window.
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
    /// Clock second of the last frame seen from it.
    pub last_seen: u32,
}

/// The shared forwarding database.
pub struct Fdb {
    slots: Box<[Slot]>,
    mask: usize,
    shift: u32,
    capacity: usize,
    aged: AtomicU64,
}

#[inline(always)]
fn key_of(vlan: Vlan, mac: &[u8; 6]) -> u64 {
    let m = u64::from_be_bytes([0, 0, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]]);
    KEY_USED | (u64::from(vlan.get()) << 48) | m
}

#[inline(always)]
fn value_of(port: PortIndex, now: u32, is_static: bool) -> u64 {
    VALID | if is_static { STATIC } else { 0 } | (u64::from(port) << 32) | u64::from(now)
}

#[inline(always)]
fn port_of(v: u64) -> PortIndex {
    (v >> 32) as PortIndex
}

impl Fdb {
    /// A table for about `capacity` entries (slots: twice that, rounded up to a power of two).
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

    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    #[inline(always)]
    fn slot(&self, home: usize, i: usize) -> &Slot {
        &self.slots[(home + i) & self.mask]
    }

    /// The port for `(vlan, mac)`, if known.
    #[inline]
    pub fn lookup(&self, vlan: Vlan, mac: &[u8; 6]) -> Option<PortIndex> {
        let key = key_of(vlan, mac);
        let home = self.home(key);
        for i in 0..PROBE {
            let s = self.slot(home, i);
            let k = s.key.load(Ordering::Acquire);
            if k == key {
                let v = s.value.load(Ordering::Acquire);
                if v & VALID == 0 || s.key.load(Ordering::Relaxed) != key {
                    return None;
                }
                return Some(port_of(v));
            }
            if k == EMPTY {
                return None;
            }
        }
        None
    }

    /// Records that `mac` was seen on `port` in `vlan` at second `now`.
    #[inline]
    pub fn learn(&self, vlan: Vlan, mac: &[u8; 6], port: PortIndex, now: u32) -> Learn {
        self.upsert(key_of(vlan, mac), port, now, false)
    }

    fn upsert(&self, key: u64, port: PortIndex, now: u32, make_static: bool) -> Learn {
        let home = self.home(key);
        // Two passes at most: a lost race for a free slot is retried once.
        for _ in 0..2 {
            let mut free: Option<(usize, u64)> = None;
            let mut end = None;
            for i in 0..PROBE {
                let s = self.slot(home, i);
                let k = s.key.load(Ordering::Acquire);
                if k == key {
                    let v = s.value.load(Ordering::Acquire);
                    if v & VALID == 0 {
                        // Being published or removed by someone else right now.
                        return Learn::Known;
                    }
                    if v & STATIC != 0 && !make_static {
                        return if port_of(v) == port {
                            Learn::Known
                        } else {
                            Learn::Static
                        };
                    }
                    let new = value_of(port, now, make_static);
                    if v == new {
                        return Learn::Known;
                    }
                    s.value.store(new, Ordering::Release);
                    return if port_of(v) != port {
                        Learn::Moved
                    } else {
                        Learn::Refreshed
                    };
                }
                if k == TOMBSTONE && free.is_none() {
                    free = Some((i, k));
                }
                if k == EMPTY {
                    end = Some(i);
                    break;
                }
            }
            let Some((i, seen)) = free.or(end.map(|i| (i, EMPTY))) else {
                return Learn::Full;
            };
            let s = self.slot(home, i);
            if s.key
                .compare_exchange(seen, key, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                s.value
                    .store(value_of(port, now, make_static), Ordering::Release);
                return Learn::Learned;
            }
        }
        Learn::Full
    }

    /// Installs a static entry (control plane): never aged, never moved by learning.
    pub fn add_static(&self, vlan: Vlan, mac: [u8; 6], port: PortIndex) -> bool {
        self.upsert(key_of(vlan, &mac), port, 0, true) != Learn::Full
    }

    fn clear(&self, s: &Slot) {
        s.value.store(0, Ordering::Release);
        s.key.store(TOMBSTONE, Ordering::Release);
    }

    /// Removes `(vlan, mac)`; true when it was there.
    pub fn remove(&self, vlan: Vlan, mac: [u8; 6]) -> bool {
        let key = key_of(vlan, &mac);
        let home = self.home(key);
        for i in 0..PROBE {
            let s = self.slot(home, i);
            let k = s.key.load(Ordering::Acquire);
            if k == key {
                self.clear(s);
                return true;
            }
            if k == EMPTY {
                return false;
            }
        }
        false
    }

    /// Removes learned entries not seen for more than `max_age` seconds; returns how many.
    pub fn age(&self, now: u32, max_age: u32) -> usize {
        let mut n = 0;
        for (s, _, v) in self.live() {
            if v & STATIC != 0 || now.saturating_sub(v as u32) <= max_age {
                continue;
            }
            // Only if no worker refreshed it meanwhile.
            if s.value
                .compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                s.key.store(TOMBSTONE, Ordering::Release);
                n += 1;
            }
        }
        self.aged.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Removes every entry (static ones too) pointing at `port`; returns how many.
    pub fn flush_port(&self, port: PortIndex) -> usize {
        let mut n = 0;
        for (s, _, v) in self.live() {
            if port_of(v) == port {
                self.clear(s);
                n += 1;
            }
        }
        n
    }

    /// Every entry (control plane; a consistent view only when nothing learns meanwhile).
    pub fn entries(&self) -> Vec<FdbEntry> {
        let mut out = Vec::new();
        for (_, k, v) in self.live() {
            let b = k.to_be_bytes();
            let Some(vlan) = Vlan::new(((k >> 48) & 0x0fff) as u16) else {
                continue;
            };
            out.push(FdbEntry {
                vlan,
                mac: [b[2], b[3], b[4], b[5], b[6], b[7]],
                port: port_of(v),
                is_static: v & STATIC != 0,
                last_seen: v as u32,
            });
        }
        out
    }

    /// Entries now in the table.
    pub fn len(&self) -> usize {
        self.live().count()
    }

    /// Occupied slots with a published value: (slot, key, value). Control plane only.
    fn live(&self) -> impl Iterator<Item = (&Slot, u64, u64)> {
        self.slots.iter().filter_map(|s| {
            let k = s.key.load(Ordering::Acquire);
            if k == EMPTY || k == TOMBSTONE {
                return None;
            }
            let v = s.value.load(Ordering::Acquire);
            (v & VALID != 0).then_some((s, k, v))
        })
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
    use std::sync::Arc;

    fn v(id: u16) -> Vlan {
        Vlan::new(id).unwrap()
    }

    fn mac(n: u32) -> [u8; 6] {
        let b = n.to_be_bytes();
        [2, 0, b[0], b[1], b[2], b[3]]
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
    }

    #[test]
    fn static_entries_are_not_learned_over_nor_aged_but_are_flushed() {
        let f = Fdb::new(64);
        assert!(f.add_static(v(5), mac(9), 1));
        assert_eq!(f.learn(v(5), &mac(9), 2, 100), Learn::Static);
        assert_eq!(f.lookup(v(5), &mac(9)), Some(1));
        assert_eq!(f.age(1_000_000, 300), 0);
        assert_eq!(f.lookup(v(5), &mac(9)), Some(1));
        assert_eq!(f.flush_port(1), 1);
        assert_eq!(f.lookup(v(5), &mac(9)), None);
    }

    #[test]
    fn ageing_removes_only_stale_learned_entries_and_slots_are_reused() {
        let f = Fdb::new(64);
        f.learn(v(1), &mac(1), 1, 10);
        f.learn(v(1), &mac(2), 1, 300);
        assert_eq!(f.age(311, 300), 1);
        assert_eq!(f.lookup(v(1), &mac(1)), None);
        assert_eq!(f.lookup(v(1), &mac(2)), Some(1));
        assert_eq!(f.aged_total(), 1);
        assert_eq!(f.learn(v(1), &mac(1), 2, 312), Learn::Learned);
        assert_eq!(f.lookup(v(1), &mac(1)), Some(2));
        assert!(f.remove(v(1), mac(1)));
        assert!(!f.remove(v(1), mac(1)));
        assert_eq!(f.entries().len(), 1);
    }

    #[test]
    fn a_full_probe_window_reports_full_and_never_misdirects() {
        let f = Fdb::new(8); // 16 slots: every key's window covers the whole table
        let mut learned = 0;
        let mut full = 0;
        for n in 0..40 {
            match f.learn(v(1), &mac(n), (n % 7) as u16, 1) {
                Learn::Learned => learned += 1,
                Learn::Full => full += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(learned, 16);
        assert_eq!(full, 24);
        for n in 0..40 {
            if let Some(p) = f.lookup(v(1), &mac(n)) {
                assert_eq!(p, (n % 7) as u16);
            }
        }
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
    }

    #[test]
    fn concurrent_learning_and_ageing_never_gives_a_wrong_port() {
        // Each MAC n is only ever learned on port n % 5. Readers must see that or nothing.
        let f = Arc::new(Fdb::new(256));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        for t in 0..2u32 {
            let f = f.clone();
            threads.push(std::thread::spawn(move || {
                for round in 0..200u32 {
                    for n in 0..400u32 {
                        f.learn(v(1 + (n % 3) as u16), &mac(n), (n % 5) as u16, round + t);
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
                }
            })
        };
        for _ in 0..200 {
            for n in 0..400u32 {
                if let Some(p) = f.lookup(v(1 + (n % 3) as u16), &mac(n)) {
                    assert_eq!(p, (n % 5) as u16, "mac {n}");
                }
            }
        }
        for t in threads {
            t.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        ager.join().unwrap();
    }
}
