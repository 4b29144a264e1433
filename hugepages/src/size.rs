//! Page-size parsing and formatting.

use crate::Error;

/// Parses a hugepage size such as `2M`, `2MB`, `2048kB`, `1G` or `1GB` into kB.
///
/// Units are case-insensitive; `k`/`kb`/`kib`, `m`/`mb`/`mib` and `g`/`gb`/`gib`
/// are accepted, with optional whitespace between number and unit (so the
/// `2048 kB` form of `/proc/meminfo` parses too). A bare number, a zero size or a
/// size that overflows `u64` kB is rejected with [`Error::InvalidSize`].
pub fn parse_size(s: &str) -> Result<u64, Error> {
    let invalid = || Error::InvalidSize {
        input: s.to_string(),
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(invalid());
    }
    let n: u64 = num.parse().map_err(|_| invalid())?;
    let mult: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "k" | "kb" | "kib" => 1,
        "m" | "mb" | "mib" => 1024,
        "g" | "gb" | "gib" => 1024 * 1024,
        _ => return Err(invalid()),
    };
    n.checked_mul(mult).filter(|&kb| kb > 0).ok_or_else(invalid)
}

// `trailing_zeros` rather than `is_multiple_of` keeps the crate building on
// the workspace's rust-version (1.80); 1 GiB = 2^20 kB, 1 MiB = 2^10 kB.

/// Short label as used by `memory.page_size` and `pagesize=`: `2M`, `1G`, `64K`.
pub(crate) fn label(kb: u64) -> String {
    if kb.trailing_zeros() >= 20 {
        format!("{}G", kb / (1024 * 1024))
    } else if kb.trailing_zeros() >= 10 {
        format!("{}M", kb / 1024)
    } else {
        format!("{kb}K")
    }
}

/// Label for sentences: `2 MiB`, `1 GiB`, `64 KiB`.
pub(crate) fn human(kb: u64) -> String {
    if kb.trailing_zeros() >= 20 {
        format!("{} GiB", kb / (1024 * 1024))
    } else if kb.trailing_zeros() >= 10 {
        format!("{} MiB", kb / 1024)
    } else {
        format!("{kb} KiB")
    }
}

/// `pages` pages of `page_kb` kB each, in whole MiB (rounded down).
pub(crate) fn pages_mib_floor(pages: u64, page_kb: u64) -> u64 {
    pages.saturating_mul(page_kb) / 1024
}

/// `pages` pages of `page_kb` kB each, in whole MiB (rounded up).
pub(crate) fn pages_mib_ceil(pages: u64, page_kb: u64) -> u64 {
    pages.saturating_mul(page_kb).div_ceil(1024)
}

/// Whole pages of `page_kb` kB needed to hold `mib` MiB (rounded up).
pub(crate) fn pages_for_mib(mib: u64, page_kb: u64) -> u64 {
    mib.saturating_mul(1024).div_ceil(page_kb.max(1))
}
