//! The identity of an attachment and the stable names derived from it. Pure: no I/O, so
//! every layer (config checks, plans, records, VF allocations) can use it.

/// FNV-1a, 64 bits: a stable hash for short names (not for security: every input is
/// validated before it is used in a path).
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The identity of an attachment: `(container id, ifname)`, as the spec keys it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AttachmentKey {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

impl AttachmentKey {
    /// 16 hex digits naming this attachment in DPDK device names and host interfaces.
    pub fn id(&self) -> String {
        format!(
            "{:016x}",
            fnv1a(format!("{}/{}", self.container_id, self.ifname).as_bytes())
        )
    }

    /// The record's file name: `<container id>-<ifname>.json` (both validated: no `/`).
    pub fn record_file(&self) -> String {
        format!("{}-{}.json", self.container_id, self.ifname)
    }

    /// The switch port name: `cni/<container id>/<ifname>`, or with a hash for ids too long
    /// for the daemon's 128-byte names.
    pub fn port_name(&self) -> String {
        let plain = format!("cni/{}/{}", self.container_id, self.ifname);
        if plain.len() <= 128 {
            plain
        } else {
            format!("cni/{}/{}", self.id(), self.ifname)
        }
    }

    /// A locally administered unicast MAC derived from the attachment.
    pub fn derived_mac(&self) -> [u8; 6] {
        let h =
            fnv1a(format!("mac/{}/{}", self.container_id, self.ifname).as_bytes()).to_be_bytes();
        [0x02, h[0], h[1], h[2], h[3], h[4]]
    }
}
