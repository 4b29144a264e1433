//! Embedded mode: the same allocators ([`NetworkIpam`], [`VlanPool`]) without Kubernetes, on a
//! crash-safe local store, for the local demo and single-node sites.
//!
//! # Why a journal plus snapshot
//! Every change is one checksummed line appended to `journal` and made durable with
//! `fdatasync` *before* the caller hears about it; a record that was not fully written when the
//! process died fails its checksum and is cut off at the next open (it was never acknowledged,
//! so nothing acknowledged is lost). Appending one short line costs one `fdatasync`, where
//! rewriting a snapshot per change would cost a full write of every lease plus two fsyncs.
//! To keep replay short, `compact` writes the whole state to `snapshot.tmp`, fsyncs it,
//! renames it over `snapshot`, fsyncs the directory, then truncates the journal. Records carry
//! a sequence number and the snapshot the last one it includes, so a crash between the rename
//! and the truncation replays nothing twice. Replay rebuilds the bitmaps through
//! [`NetworkIpam::restore`], which refuses an address held twice.
//!
//! # One process at a time
//! Several processes use one store on a node: `heddle-ipam` runs once per CNI call, often
//! many at once, and `heddle-manager embedded` from scripts. An open store holds an exclusive
//! `flock` on `lock` in the directory until it is dropped, so open (replay, torn-tail cut),
//! allocate and commit of one process never interleave with another's; the others wait.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::crd::{NetworkSpec, ProviderNetworkSpec, VlanAssignment};
use crate::ipam::{IpamError, NetworkIpam};
use crate::validation::{validate_network, validate_provider};
use crate::vlan::{VlanError, VlanPool};

/// Journal records between automatic compactions.
pub const DEFAULT_COMPACT_EVERY: u64 = 4096;

/// Why the embedded store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// File system trouble.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The configuration file is unusable.
    #[error("config: {0}")]
    Config(String),
    /// An unknown network name.
    #[error("network {0:?} is not in the embedded configuration; add it under `networks`")]
    UnknownNetwork(String),
    /// Allocation refused.
    #[error("network {network}: {source}")]
    Ipam {
        /// Network name.
        network: String,
        /// The cause.
        source: IpamError,
    },
    /// VLAN assignment refused.
    #[error("network {network}: {source}")]
    Vlan {
        /// Network name.
        network: String,
        /// The cause.
        source: VlanError,
    },
    /// The stored state contradicts itself (e.g. an address leased twice).
    #[error("{path}: corrupt store: {message}; move the directory away to start empty")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Provider networks and networks served by the embedded store (a YAML file in the CLI).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddedConfig {
    /// Provider networks by name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderNetworkSpec>,
    /// Networks by name.
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkSpec>,
}

impl EmbeddedConfig {
    /// Reads the networks file (YAML with `providers:` and `networks:`).
    pub fn read(path: &Path) -> Result<Self, StoreError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            StoreError::Config(format!(
                "{}: {e}; write the networks file or point to it",
                path.display()
            ))
        })?;
        serde_yaml::from_str(&text)
            .map_err(|e| StoreError::Config(format!("{}: {e}", path.display())))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case")]
enum Record {
    Allocate {
        seq: u64,
        network: String,
        owner: String,
        addresses: Vec<IpAddr>,
    },
    Release {
        seq: u64,
        network: String,
        owner: String,
    },
    AssignVlan {
        seq: u64,
        provider: String,
        network: String,
        vlan: u16,
    },
}

impl Record {
    fn seq(&self) -> u64 {
        match self {
            Record::Allocate { seq, .. }
            | Record::Release { seq, .. }
            | Record::AssignVlan { seq, .. } => *seq,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    seq: u64,
    leases: BTreeMap<String, BTreeMap<String, Vec<IpAddr>>>,
    vlans: BTreeMap<String, BTreeMap<String, u16>>,
}

/// The embedded allocator state on disk in one directory.
#[derive(Debug)]
pub struct EmbeddedStore {
    dir: PathBuf,
    /// Held (`flock`, exclusive) for the life of the store; released when the file closes.
    _lock: File,
    journal: File,
    journal_len: u64,
    seq: u64,
    records_since_snapshot: u64,
    compact_every: u64,
    config: EmbeddedConfig,
    networks: BTreeMap<String, NetworkIpam>,
    vlans: BTreeMap<String, VlanPool>,
}

impl EmbeddedStore {
    /// Open (or create) the store in `dir`, replay it, and assign VLANs to networks that have
    /// none yet.
    pub fn open(dir: impl AsRef<Path>, config: EmbeddedConfig) -> Result<Self, StoreError> {
        Self::open_with(dir, config, DEFAULT_COMPACT_EVERY)
    }

    /// [`open`](Self::open) with a compaction interval (records between snapshots).
    pub fn open_with(
        dir: impl AsRef<Path>,
        config: EmbeddedConfig,
        compact_every: u64,
    ) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        validate_config(&config)?;
        let mut networks = BTreeMap::new();
        for (name, spec) in &config.networks {
            let ipam = NetworkIpam::from_spec(spec).map_err(|source| StoreError::Ipam {
                network: name.clone(),
                source,
            })?;
            networks.insert(name.clone(), ipam);
        }
        let mut vlans = BTreeMap::new();
        for (name, p) in &config.providers {
            vlans.insert(
                name.clone(),
                VlanPool::new(name.clone(), p.vlan_pool.clone()),
            );
        }

        let lock = lock_dir(&dir)?;
        let snap_path = dir.join("snapshot");
        let snapshot = read_snapshot(&snap_path)?;
        let journal_path = dir.join("journal");
        let (records, valid_len) = read_journal(&journal_path)?;
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&journal_path)
            .map_err(io(&journal_path))?;
        // Cut a torn tail so new records follow the last good one.
        if journal.metadata().map_err(io(&journal_path))?.len() != valid_len {
            journal.set_len(valid_len).map_err(io(&journal_path))?;
            journal.sync_all().map_err(io(&journal_path))?;
        }
        sync_dir(&dir)?;

        let mut store = Self {
            dir,
            _lock: lock,
            journal,
            journal_len: valid_len,
            seq: snapshot.seq,
            records_since_snapshot: 0,
            compact_every,
            config,
            networks,
            vlans,
        };
        let corrupt = |m: String| StoreError::Corrupt {
            path: snap_path.clone(),
            message: m,
        };
        for (net, leases) in &snapshot.leases {
            match store.networks.get_mut(net) {
                Some(ipam) => ipam.restore(leases).map_err(|e| corrupt(e.to_string()))?,
                None => {
                    tracing::warn!(network = %net, "dropping leases of a network no longer configured")
                }
            }
        }
        for (prov, nets) in &snapshot.vlans {
            if let Some(pool) = store.vlans.get_mut(prov) {
                for (net, &vlan) in nets {
                    if !pool.restore(net, vlan) {
                        return Err(corrupt(format!(
                            "VLAN {vlan} of {net} held twice on {prov}"
                        )));
                    }
                }
            }
        }
        for rec in records {
            if rec.seq() <= snapshot.seq {
                continue; // Already in the snapshot (crash between rename and truncation).
            }
            store.apply(&rec).map_err(|m| StoreError::Corrupt {
                path: journal_path.clone(),
                message: m,
            })?;
            store.seq = rec.seq();
            store.records_since_snapshot += 1;
        }
        store.assign_vlans()?;
        Ok(store)
    }

    fn apply(&mut self, rec: &Record) -> Result<(), String> {
        match rec {
            Record::Allocate {
                network,
                owner,
                addresses,
                ..
            } => {
                if let Some(ipam) = self.networks.get_mut(network) {
                    ipam.restore([(owner, addresses)])
                        .map_err(|e| e.to_string())?;
                }
            }
            Record::Release { network, owner, .. } => {
                if let Some(ipam) = self.networks.get_mut(network) {
                    ipam.release(owner);
                }
            }
            Record::AssignVlan {
                provider,
                network,
                vlan,
                ..
            } => {
                if let Some(pool) = self.vlans.get_mut(provider) {
                    if !pool.restore(network, *vlan) {
                        return Err(format!("VLAN {vlan} of {network} held twice on {provider}"));
                    }
                }
            }
        }
        Ok(())
    }

    fn assign_vlans(&mut self) -> Result<(), StoreError> {
        let wanted: Vec<(String, String, Option<u16>)> = self
            .config
            .networks
            .iter()
            .map(|(n, s)| (n.clone(), s.provider.clone(), s.vlan))
            .collect();
        // Networks naming their VLAN first, so an assigned one never takes a named one.
        let mut wanted = wanted;
        wanted.sort_by_key(|(_, _, vlan)| vlan.is_none());
        for (network, provider, requested) in wanted {
            let Some(pool) = self.vlans.get_mut(&provider) else {
                continue;
            };
            if pool.vlan_of(&network).is_some() {
                // Stable: keep it (a changed spec.vlan is reported by `vlan_error`).
                continue;
            }
            let vlan = pool
                .assign(&network, requested)
                .map_err(|source| StoreError::Vlan {
                    network: network.clone(),
                    source,
                })?;
            let seq = self.seq + 1;
            if let Err(e) = self.append(&Record::AssignVlan {
                seq,
                provider: provider.clone(),
                network: network.clone(),
                vlan,
            }) {
                if let Some(pool) = self.vlans.get_mut(&provider) {
                    pool.release(&network);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn append(&mut self, rec: &Record) -> Result<(), StoreError> {
        let path = self.dir.join("journal");
        let json = serde_json::to_string(rec).expect("records serialize");
        let line = format!("{:08x} {json}\n", crc32(json.as_bytes()));
        let written = self
            .journal
            .write_all(line.as_bytes())
            .and_then(|()| self.journal.sync_data());
        if let Err(e) = written {
            // Never leave a half record for the next one to follow: replay stops at it.
            let _ = self.journal.set_len(self.journal_len);
            return Err(io(&path)(e));
        }
        self.journal_len += line.len() as u64;
        self.seq = rec.seq();
        self.records_since_snapshot += 1;
        if self.records_since_snapshot >= self.compact_every {
            self.compact()?;
        }
        Ok(())
    }

    /// Give `owner` addresses on `network` (see [`NetworkIpam::allocate`]); durable before it
    /// returns.
    pub fn allocate(
        &mut self,
        network: &str,
        owner: &str,
        requested: &[IpAddr],
    ) -> Result<Vec<IpAddr>, StoreError> {
        let ipam = self
            .networks
            .get_mut(network)
            .ok_or_else(|| StoreError::UnknownNetwork(network.into()))?;
        if let Some(held) = ipam.leases().get(owner) {
            if requested.is_empty() || requested.iter().all(|a| held.contains(a)) {
                return Ok(held.clone());
            }
        }
        let addresses = ipam
            .allocate(owner, requested)
            .map_err(|source| StoreError::Ipam {
                network: network.into(),
                source,
            })?;
        let rec = Record::Allocate {
            seq: self.seq + 1,
            network: network.into(),
            owner: owner.into(),
            addresses: addresses.clone(),
        };
        if let Err(e) = self.append(&rec) {
            if let Some(ipam) = self.networks.get_mut(network) {
                ipam.release(owner);
            }
            return Err(e);
        }
        Ok(addresses)
    }

    /// Free what `owner` holds on `network`; durable before it returns. Releasing twice is
    /// fine (returns nothing the second time).
    pub fn release(&mut self, network: &str, owner: &str) -> Result<Vec<IpAddr>, StoreError> {
        let ipam = self
            .networks
            .get(network)
            .ok_or_else(|| StoreError::UnknownNetwork(network.into()))?;
        if !ipam.leases().contains_key(owner) {
            return Ok(Vec::new());
        }
        // Memory first, so a compaction triggered by this record already leaves it out.
        let addresses = self
            .networks
            .get_mut(network)
            .map(|i| i.release(owner))
            .unwrap_or_default();
        let rec = Record::Release {
            seq: self.seq + 1,
            network: network.into(),
            owner: owner.into(),
        };
        if let Err(e) = self.append(&rec) {
            if let Some(ipam) = self.networks.get_mut(network) {
                let _ = ipam.restore([(&owner.to_string(), &addresses)]);
            }
            return Err(e);
        }
        Ok(addresses)
    }

    /// Release every lease on `network` whose owner `live` rejects; returns those owners.
    pub fn collect_leaks(
        &mut self,
        network: &str,
        mut live: impl FnMut(&str) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        let ipam = self
            .networks
            .get(network)
            .ok_or_else(|| StoreError::UnknownNetwork(network.into()))?;
        let dead: Vec<String> = ipam.leases().keys().filter(|o| !live(o)).cloned().collect();
        for o in &dead {
            self.release(network, o)?;
        }
        Ok(dead)
    }

    /// Write the whole state to a new snapshot and empty the journal.
    pub fn compact(&mut self) -> Result<(), StoreError> {
        let snap = Snapshot {
            seq: self.seq,
            leases: self
                .networks
                .iter()
                .map(|(n, i)| (n.clone(), i.leases().clone()))
                .collect(),
            vlans: self
                .vlans
                .iter()
                .map(|(p, pool)| {
                    (
                        p.clone(),
                        pool.assignments()
                            .iter()
                            .map(|(v, n)| (n.clone(), *v))
                            .collect(),
                    )
                })
                .collect(),
        };
        let body = serde_json::to_string(&snap).expect("snapshots serialize");
        let tmp = self.dir.join("snapshot.tmp");
        let dst = self.dir.join("snapshot");
        {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(format!("{:08x}\n{body}", crc32(body.as_bytes())).as_bytes())
                .map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
        sync_dir(&self.dir)?;
        let jp = self.dir.join("journal");
        self.journal.set_len(0).map_err(io(&jp))?;
        self.journal.sync_all().map_err(io(&jp))?;
        self.journal_len = 0;
        self.records_since_snapshot = 0;
        Ok(())
    }

    /// Leases of `network` by owner.
    pub fn leases(&self, network: &str) -> Option<&BTreeMap<String, Vec<IpAddr>>> {
        self.networks.get(network).map(NetworkIpam::leases)
    }

    /// The network's allocator (counts, invariants).
    pub fn network(&self, network: &str) -> Option<&NetworkIpam> {
        self.networks.get(network)
    }

    /// VLAN assigned to `network`.
    pub fn vlan(&self, network: &str) -> Option<u16> {
        let provider = &self.config.networks.get(network)?.provider;
        self.vlans.get(provider)?.vlan_of(network)
    }

    /// Check every network's pools against its leases.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (n, ipam) in &self.networks {
            ipam.check_invariants()
                .map_err(|e| format!("network {n}: {e}"))?;
        }
        Ok(())
    }
}

/// The same checks the controller makes: provider specs, VLANs in the pool, subnets well
/// formed and not overlapping on one provider.
fn validate_config(config: &EmbeddedConfig) -> Result<(), StoreError> {
    for (name, p) in &config.providers {
        validate_provider(p).map_err(|e| StoreError::Config(format!("providers.{name}: {e}")))?;
    }
    let mut claims: BTreeMap<&str, Vec<VlanAssignment>> = BTreeMap::new();
    for (name, spec) in &config.networks {
        let Some(provider) = config.providers.get(&spec.provider) else {
            return Err(StoreError::Config(format!(
                "networks.{name}.provider: {:?} is not under `providers`; add it or fix the name",
                spec.provider
            )));
        };
        let others = claims.entry(spec.provider.as_str()).or_default();
        let valid = validate_network(name, spec, &spec.provider, provider, None, others)
            .map_err(|e| StoreError::Config(format!("networks.{name}: {e}")))?;
        others.push(VlanAssignment {
            network: name.clone(),
            uid: String::new(),
            vlan: 0,
            subnets: valid.subnets(),
        });
    }
    Ok(())
}

/// Takes the store's exclusive lock, waiting for another process that holds it.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("lock");
    heddle_cni::lock::exclusive(&path).map_err(io(&path))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn read_snapshot(path: &Path) -> Result<Snapshot, StoreError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Snapshot::default()),
        Err(e) => return Err(io(path)(e)),
    };
    let corrupt = |m: &str| StoreError::Corrupt {
        path: path.to_path_buf(),
        message: m.into(),
    };
    let (crc, body) = text
        .split_once('\n')
        .ok_or_else(|| corrupt("no checksum line"))?;
    // The snapshot is only ever renamed into place complete, so a bad one is real damage.
    if u32::from_str_radix(crc, 16).ok() != Some(crc32(body.as_bytes())) {
        return Err(corrupt("checksum mismatch"));
    }
    serde_json::from_str(body).map_err(|e| corrupt(&e.to_string()))
}

/// The valid records of the journal and the length of the valid prefix.
fn read_journal(path: &Path) -> Result<(Vec<Record>, u64), StoreError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes).map_err(io(path))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io(path)(e)),
    }
    let mut records = Vec::new();
    let mut valid = 0usize;
    while let Some(nl) = bytes[valid..].iter().position(|&b| b == b'\n') {
        let line = &bytes[valid..valid + nl];
        let parsed = std::str::from_utf8(line).ok().and_then(|l| {
            let (crc, json) = l.split_once(' ')?;
            (u32::from_str_radix(crc, 16).ok()? == crc32(json.as_bytes()))
                .then(|| serde_json::from_str::<Record>(json).ok())
                .flatten()
        });
        match parsed {
            Some(r) => records.push(r),
            None => {
                tracing::warn!(path = %path.display(), offset = valid, "journal ends in a torn record; cutting it");
                break;
            }
        }
        valid += nl + 1;
    }
    Ok((records, valid as u64))
}

/// CRC-32 (IEEE 802.3, the zlib/PNG one) of `data`, by `crc32fast`: the same function the
/// journal has always used, so journals and snapshots written before keep their checksums
/// (`crc32_is_the_function_old_journals_were_written_with` compares it with the former
/// table-driven code).
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AllocationMode, NetworkKind, Subnet, VlanRange};

    /// A one-provider, one-network config used by the tests and the crash test.
    pub(crate) fn config() -> EmbeddedConfig {
        let mut c = EmbeddedConfig::default();
        c.providers.insert(
            "uplink0".into(),
            ProviderNetworkSpec {
                interface: Some("eth1".into()),
                vf_pool: None,
                node_selector: Default::default(),
                vlan_pool: vec![VlanRange {
                    start: 100,
                    end: 110,
                }],
                mtu: None,
            },
        );
        c.networks.insert(
            "n3".into(),
            NetworkSpec {
                kind: NetworkKind::VhostUser,
                provider: "uplink0".into(),
                vlan: None,
                ipv4: Some(Subnet {
                    cidr: "10.3.0.0/24".into(),
                    ranges: vec![],
                    gateway: Some("10.3.0.1".into()),
                    exclude: vec![],
                }),
                ipv6: Some(Subnet {
                    cidr: "fd00:3::/120".into(),
                    ranges: vec![],
                    gateway: None,
                    exclude: vec![],
                }),
                allocation: AllocationMode::Dynamic,
                vhost_user: None,
                memif: None,
                resource_name: None,
            },
        );
        c
    }

    #[test]
    fn crc32_matches_the_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    /// The table-driven CRC-32 (reflected, polynomial 0xEDB88320, initial and final XOR
    /// with all ones) the journal and snapshots were written with before `crc32fast`,
    /// verbatim.
    const CRC_TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };

    fn old_crc32(data: &[u8]) -> u32 {
        !data.iter().fold(!0u32, |c, &b| {
            CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
        })
    }

    /// Journals and snapshots written by the old code keep verifying: the two functions
    /// agree on every length up to 4 KiB (each byte value, at each alignment crc32fast's
    /// SIMD path may take) and on real journal lines.
    #[test]
    fn crc32_is_the_function_old_journals_were_written_with() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for len in 0..=data.len() {
            assert_eq!(crc32(&data[..len]), old_crc32(&data[..len]), "length {len}");
        }
        for off in 1..64 {
            assert_eq!(crc32(&data[off..]), old_crc32(&data[off..]), "offset {off}");
        }
        for b in 0..=255u8 {
            assert_eq!(crc32(&[b; 3]), old_crc32(&[b; 3]));
        }
        let line = r#"{"op":"allocate","network":"n3","owner":"c1/eth1","ip":"10.1.0.2"}"#;
        assert_eq!(crc32(line.as_bytes()), old_crc32(line.as_bytes()));
    }

    #[test]
    fn state_survives_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = EmbeddedStore::open_with(dir.path(), config(), 3).unwrap();
        assert_eq!(s.vlan("n3"), Some(100));
        let a = s.allocate("n3", "c1/eth1", &[]).unwrap();
        let b = s.allocate("n3", "c2/eth1", &[]).unwrap();
        assert_eq!(s.allocate("n3", "c1/eth1", &[]).unwrap(), a);
        s.release("n3", "c1/eth1").unwrap();
        assert!(s.release("n3", "c1/eth1").unwrap().is_empty());
        let c = s.allocate("n3", "c3/eth1", &[]).unwrap();
        assert_ne!(c, a, "next-fit does not reuse a just-released address");
        drop(s);
        let s = EmbeddedStore::open_with(dir.path(), config(), 3).unwrap();
        assert_eq!(s.vlan("n3"), Some(100));
        let leases = s.leases("n3").unwrap();
        assert_eq!(leases.len(), 2);
        assert_eq!(leases["c2/eth1"], b);
        assert_eq!(leases["c3/eth1"], c);
        s.check_invariants().unwrap();
    }

    #[test]
    fn torn_tail_is_cut_and_earlier_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = EmbeddedStore::open(dir.path(), config()).unwrap();
        let a = s.allocate("n3", "c1/eth1", &[]).unwrap();
        drop(s);
        let mut j = OpenOptions::new()
            .append(true)
            .open(dir.path().join("journal"))
            .unwrap();
        j.write_all(b"deadbeef {\"op\":\"allocate\",\"seq\":9,\"net")
            .unwrap();
        drop(j);
        let mut s = EmbeddedStore::open(dir.path(), config()).unwrap();
        assert_eq!(s.leases("n3").unwrap()["c1/eth1"], a);
        let b = s.allocate("n3", "c2/eth1", &[]).unwrap();
        drop(s);
        let s = EmbeddedStore::open(dir.path(), config()).unwrap();
        assert_eq!(s.leases("n3").unwrap()["c2/eth1"], b);
        s.check_invariants().unwrap();
    }

    #[test]
    fn config_is_validated_like_the_controller_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config();
        let mut other = c.networks["n3"].clone();
        other.ipv4.as_mut().unwrap().cidr = "10.3.0.128/25".into();
        other.ipv4.as_mut().unwrap().gateway = None;
        other.ipv6 = None;
        c.networks.insert("n4".into(), other.clone());
        let err = EmbeddedStore::open(dir.path(), c).unwrap_err().to_string();
        assert_eq!(err, "config: networks.n4: spec.ipv4.cidr: 10.3.0.128/25 overlaps 10.3.0.0/24 of network n3 on provider network uplink0; use a disjoint subnet");
        let mut c = config();
        other.provider = "nope".into();
        c.networks.insert("n4".into(), other);
        let err = EmbeddedStore::open(dir.path(), c).unwrap_err().to_string();
        assert!(
            err.starts_with("config: networks.n4.provider: \"nope\" is not under `providers`"),
            "{err}"
        );
    }

    #[test]
    fn named_vlans_are_served_before_assigned_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config();
        let mut n4 = c.networks["n3"].clone();
        n4.vlan = Some(100);
        n4.ipv4.as_mut().unwrap().cidr = "10.4.0.0/24".into();
        n4.ipv4.as_mut().unwrap().gateway = None;
        n4.ipv6 = None;
        c.networks.insert("n4".into(), n4);
        let s = EmbeddedStore::open(dir.path(), c).unwrap();
        assert_eq!((s.vlan("n3"), s.vlan("n4")), (Some(101), Some(100)));
    }

    #[test]
    fn leaks_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = EmbeddedStore::open(dir.path(), config()).unwrap();
        for i in 0..4 {
            s.allocate("n3", &format!("c{i}/eth1"), &[]).unwrap();
        }
        let dead = s.collect_leaks("n3", |o| o == "c2/eth1").unwrap();
        assert_eq!(dead.len(), 3);
        drop(s);
        let s = EmbeddedStore::open(dir.path(), config()).unwrap();
        assert_eq!(
            s.leases("n3").unwrap().keys().collect::<Vec<_>>(),
            vec!["c2/eth1"]
        );
    }
}
