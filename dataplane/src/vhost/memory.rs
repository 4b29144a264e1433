//! STUB (replaced by the real module from wip-virtq).
#![allow(missing_docs, clippy::missing_safety_doc, unused)]
use std::ptr::NonNull;
#[derive(Debug, Clone, Copy)]
pub struct RegionSpec {
    pub guest_phys_addr: u64,
    pub size: u64,
    pub user_addr: u64,
    pub mmap_offset: u64,
}
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("x")]
    X,
}
pub struct GuestMemory {
    r: Vec<RegionSpec>,
}
impl GuestMemory {
    pub fn map(regions: Vec<(RegionSpec, std::fs::File)>) -> Result<GuestMemory, MemoryError> {
        unimplemented!()
    }
    pub fn translate_gpa(&self, gpa: u64, len: u64) -> Option<NonNull<u8>> {
        unimplemented!()
    }
    pub fn translate_uva(&self, uva: u64, len: u64) -> Option<NonNull<u8>> {
        unimplemented!()
    }
    pub fn regions(&self) -> impl Iterator<Item = &RegionSpec> {
        self.r.iter()
    }
}
