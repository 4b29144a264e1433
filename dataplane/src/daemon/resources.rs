//! What the switch process holds, read from `/proc/self`: the figures a leak would grow
//! (open fds, threads, resident and hugepage memory). Read on the control thread only, when
//! stats are asked for.

use std::path::Path;

use heddle_api::ResourceStats;

/// Entries in a directory (`/proc/self/fd`, `/proc/self/task`), 0 when unreadable.
fn count_entries(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| d.count() as u64)
}

/// `Key:   123 kB` lines of a `/proc` status-style text, summed for `keys`, in bytes.
fn kb_fields(text: &str, keys: &[&str]) -> u64 {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            if !keys.contains(&k.trim()) {
                return None;
            }
            let kb: u64 = v.split_whitespace().next()?.parse().ok()?;
            Some(kb * 1024)
        })
        .sum()
}

/// The process's fds, threads, RSS and hugepage mappings (mbuf figures left at 0).
pub fn read_self() -> ResourceStats {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let smaps = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    ResourceStats {
        // The directory handle read_dir holds is one of the fds it lists.
        open_fds: count_entries(Path::new("/proc/self/fd")).saturating_sub(1),
        threads: count_entries(Path::new("/proc/self/task")),
        rss_bytes: kb_fields(&status, &["VmRSS"]),
        hugepage_bytes: kb_fields(&smaps, &["Shared_Hugetlb", "Private_Hugetlb"]),
        ..ResourceStats::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_named_kb_fields_only() {
        let text = "Rss:                1976 kB\nShared_Hugetlb:     4096 kB\nPrivate_Hugetlb:    2048 kB\nSwap: 7 kB\n";
        assert_eq!(
            kb_fields(text, &["Shared_Hugetlb", "Private_Hugetlb"]),
            6144 * 1024
        );
        assert_eq!(kb_fields(text, &["VmRSS"]), 0);
    }

    #[test]
    fn reads_this_process() {
        // Other tests run in this process at the same time, so only lower bounds hold.
        let files: Vec<std::fs::File> = (0..5)
            .map(|_| std::fs::File::open("/proc/self/status").unwrap())
            .collect();
        let with = read_self();
        assert!(with.open_fds >= 5 + 3, "{with:?}");
        drop(files);
        assert!(with.threads >= 1 && with.rss_bytes > 0, "{with:?}");
    }
}
