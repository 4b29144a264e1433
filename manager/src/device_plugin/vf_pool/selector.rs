//! The pieces of a pool's config that are parsed before use: the resource name, PCI
//! vendor/device ids and `pfNames` entries with VF ranges. Every error is a sentence that
//! names the fix; the caller prefixes the pool.

use std::ops::RangeInclusive;

/// Checks that `name` is a Kubernetes extended resource name: `<domain>/<name>`, the domain a
/// lowercase DNS subdomain outside `kubernetes.io`, the name 1-63 letters, digits, `-`, `_`
/// or `.` that starts and ends with a letter or digit (e.g. `heddle.dev/sriov_n3`).
pub fn check_resource_name(name: &str) -> Result<(), String> {
    let Some((domain, short)) = name.split_once('/') else {
        return Err(format!(
            "resourceName {name:?} needs a domain: write it as <domain>/<name>, e.g. heddle.dev/sriov_n3"
        ));
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.is_empty() || domain.len() > 253 || !domain.split('.').all(label_ok) {
        return Err(format!(
            "resourceName {name:?}: the domain {domain:?} must be a lowercase DNS name such as heddle.dev"
        ));
    }
    if domain == "kubernetes.io" || domain.ends_with(".kubernetes.io") {
        return Err(format!(
            "resourceName {name:?}: the kubernetes.io domain is reserved for Kubernetes: use your own, e.g. heddle.dev"
        ));
    }
    let b = short.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c));
    if !ok {
        return Err(format!(
            "resourceName {name:?}: the name after '/' must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit (e.g. sriov_n3)"
        ));
    }
    Ok(())
}

/// A PCI vendor or device id as `lspci -n` prints it (`8086`, `154c`; `0x8086` is also
/// taken), normalised to four lowercase hex digits. `field` and `i` name the entry.
pub fn hex_id(field: &str, i: usize, s: &str) -> Result<String, String> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(digits.to_ascii_lowercase())
    } else {
        Err(format!(
            "{field}[{i}] {s:?} is not a PCI id: write four hex digits as `lspci -n` shows them, e.g. \"8086\""
        ))
    }
}

/// A netdev name the kernel would accept: 1-15 bytes, no `/`, `:` or whitespace.
fn netdev_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
}

/// One `pfNames` entry: a PF netdev and, after `#`, which of its VFs (by index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PfNameSelector {
    /// The PF's netdev name (`ens1f0`).
    pub pf: String,
    /// The VF indexes taken (`#0-7` -> `[0..=7]`, `#0,3,5-6` -> `[0..=0, 3..=3, 5..=6]`);
    /// `None` takes every VF of the PF.
    pub vfs: Option<Vec<RangeInclusive<u32>>>,
}

impl PfNameSelector {
    /// Parses `ens1f0`, `ens1f0#0-7` or `ens1f0#0,3,5-6`.
    pub fn parse(entry: &str) -> Result<PfNameSelector, String> {
        let (pf, ranges) = match entry.split_once('#') {
            Some((pf, r)) => (pf, Some(r)),
            None => (entry, None),
        };
        if !netdev_name_ok(pf) {
            return Err(format!(
                "pfNames entry {entry:?}: {pf:?} is not a netdev name (1-15 characters, no '/', ':' or spaces); write the PF's name as `ip link` shows it, e.g. \"ens1f0\" or \"ens1f0#0-7\""
            ));
        }
        let vfs = match ranges {
            None => None,
            Some(r) if r.trim().is_empty() => {
                return Err(format!(
                    "pfNames entry {entry:?}: list VF indexes after '#', e.g. \"{pf}#0-7\" or \"{pf}#0,3,5-6\", or drop the '#' to take every VF"
                ))
            }
            Some(r) => Some(
                r.split(',')
                    .map(|part| parse_range(entry, part.trim()))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(PfNameSelector {
            pf: pf.to_owned(),
            vfs,
        })
    }

    /// Does this entry take VF `index` of PF netdev `pf`?
    pub fn matches(&self, pf: &str, index: u32) -> bool {
        self.pf == pf
            && self
                .vfs
                .as_ref()
                .map_or(true, |ranges| ranges.iter().any(|r| r.contains(&index)))
    }
}

fn parse_range(entry: &str, part: &str) -> Result<RangeInclusive<u32>, String> {
    let index = |s: &str| {
        s.parse::<u32>().map_err(|_| {
            format!(
                "pfNames entry {entry:?}: {s:?} is not a VF index; write decimal indexes and ranges such as 0-7 or 0,3,5-6"
            )
        })
    };
    let (lo, hi) = match part.split_once('-') {
        Some((lo, hi)) => (index(lo.trim())?, index(hi.trim())?),
        None => {
            let n = index(part)?;
            (n, n)
        }
    };
    if lo > hi {
        return Err(format!(
            "pfNames entry {entry:?}: the range {lo}-{hi} runs backwards; write it low-high, {hi}-{lo}"
        ));
    }
    Ok(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_follow_the_extended_resource_rules() {
        for good in [
            "heddle.dev/sriov_n3",
            "intel.com/sriov-a",
            "example.org/A.b_c",
        ] {
            assert_eq!(check_resource_name(good), Ok(()), "{good}");
        }
        let msg = |n: &str| check_resource_name(n).unwrap_err();
        assert!(msg("sriov_n3").contains("needs a domain"));
        assert!(msg("Heddle.dev/x").contains("lowercase DNS name"));
        assert!(msg("heddle..dev/x").contains("lowercase DNS name"));
        assert!(msg("kubernetes.io/x").contains("reserved for Kubernetes"));
        assert!(msg("node.kubernetes.io/x").contains("reserved for Kubernetes"));
        assert!(msg("heddle.dev/").contains("1-63 letters"));
        assert!(msg("heddle.dev/a/b").contains("1-63 letters"));
        assert!(msg("heddle.dev/_x").contains("1-63 letters"));
        assert!(msg(&format!("heddle.dev/{}", "a".repeat(64))).contains("1-63 letters"));
    }

    #[test]
    fn pci_ids_are_four_hex_digits_normalised_to_lowercase() {
        assert_eq!(hex_id("vendors", 0, "8086").unwrap(), "8086");
        assert_eq!(hex_id("devices", 0, "0x154C").unwrap(), "154c");
        let e = hex_id("vendors", 2, "808").unwrap_err();
        assert!(e.starts_with("vendors[2] \"808\" is not a PCI id"), "{e}");
        assert!(hex_id("devices", 0, "15g4").is_err());
    }

    #[test]
    fn pf_names_with_and_without_vf_ranges() {
        let all = PfNameSelector::parse("ens1f0").unwrap();
        assert!(all.matches("ens1f0", 0) && all.matches("ens1f0", 63));
        assert!(!all.matches("ens1f1", 0));

        let range = PfNameSelector::parse("ens1f0#0-7").unwrap();
        assert_eq!(range.vfs, Some(vec![0..=7]));
        assert!(range.matches("ens1f0", 7) && !range.matches("ens1f0", 8));

        let list = PfNameSelector::parse("ens1f0#0,3,5-6").unwrap();
        assert_eq!(list.vfs, Some(vec![0..=0, 3..=3, 5..=6]));
        let taken: Vec<u32> = (0..8).filter(|&i| list.matches("ens1f0", i)).collect();
        assert_eq!(taken, [0, 3, 5, 6]);
    }

    #[test]
    fn bad_pf_names_are_refused_with_the_fix() {
        let e = |s: &str| PfNameSelector::parse(s).unwrap_err();
        assert!(e("ens1f0#").contains("list VF indexes after '#'"));
        assert!(e("ens1f0#7-3").contains("runs backwards; write it low-high, 3-7"));
        assert!(e("ens1f0#0-x").contains("\"x\" is not a VF index"));
        assert!(e("ens1f0#1,,2").contains("\"\" is not a VF index"));
        assert!(e("#0-3").contains("is not a netdev name"));
        assert!(e("a-name-longer-than-15").contains("is not a netdev name"));
        assert!(e("ens1/f0").contains("is not a netdev name"));
    }
}
