//! Unit tests against sysfs-shaped temporary trees, plus one real-host test.

use std::cell::RefCell;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::prepare::{prepare_with, Kernel};
use crate::*;

const G1: u64 = 1024 * 1024;

/// A fake host root.
struct Tree {
    dir: TempDir,
}

impl Tree {
    fn new(default_kb: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = Tree { dir };
        t.write(
            "proc/meminfo",
            &format!("MemTotal:       16000000 kB\nHugePages_Total:       0\nHugepagesize:       {default_kb} kB\n"),
        );
        t.write(
            "proc/mounts",
            "sysfs /sys sysfs rw,nosuid 0 0\nproc /proc proc rw 0 0\n",
        );
        fs::create_dir_all(t.root().join("sys/kernel/mm/hugepages")).expect("mkdir");
        t
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn paths(&self) -> SysPaths {
        SysPaths::under(self.root())
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.root().join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, text).expect("write");
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.root().join(rel)).expect("read")
    }

    fn add_mount(&self, line: &str) {
        let mut m = self.read("proc/mounts");
        m.push_str(line);
        m.push('\n');
        self.write("proc/mounts", &m);
    }

    /// A pool with the given counters; `resv` is written only for system-wide pools.
    fn pool(&self, node: Option<u32>, kb: u64, nr: u64, free: u64, resv: u64) {
        let base = match node {
            Some(n) => format!("sys/devices/system/node/node{n}/hugepages/hugepages-{kb}kB"),
            None => format!("sys/kernel/mm/hugepages/hugepages-{kb}kB"),
        };
        self.write(&format!("{base}/nr_hugepages"), &format!("{nr}\n"));
        self.write(&format!("{base}/free_hugepages"), &format!("{free}\n"));
        self.write(&format!("{base}/surplus_hugepages"), "0\n");
        if node.is_none() {
            self.write(&format!("{base}/resv_hugepages"), &format!("{resv}\n"));
        }
    }
}

fn node_nr(node: u32, kb: u64) -> String {
    format!("sys/devices/system/node/node{node}/hugepages/hugepages-{kb}kB/nr_hugepages")
}

/// Fixture 1: two NUMA nodes with 2 MiB and 1 GiB pages, no hugetlbfs mount.
/// node0: 256 × 2 MiB (all free), 1 × 1 GiB (free); node1: nothing reserved.
fn two_nodes() -> Tree {
    let t = Tree::new(2048);
    t.pool(None, 2048, 256, 256, 0);
    t.pool(None, G1, 1, 1, 0);
    t.pool(Some(0), 2048, 256, 256, 0);
    t.pool(Some(0), G1, 1, 1, 0);
    t.pool(Some(1), 2048, 0, 0, 0);
    t.pool(Some(1), G1, 0, 0, 0);
    t.write("sys/devices/system/node/online", "0-1\n");
    t
}

/// The two-node tree, discovered, with hugetlbfs for 2 MiB pages at /dev/hugepages.
fn two_nodes_mounted() -> (Tree, Inventory) {
    let t = two_nodes();
    let inv = with_mount(
        discover(&t.paths()).expect("discover"),
        "/dev/hugepages",
        2048,
    );
    (t, inv)
}

/// Fixture 2: one system-wide 2 MiB pool (no node directories): 512 pages,
/// 300 free, 44 reserved → 256 available; mounted at /dev/hugepages without
/// a pagesize option.
fn single_pool() -> Tree {
    let t = Tree::new(2048);
    t.pool(None, 2048, 512, 300, 44);
    t.add_mount("none /dev/hugepages hugetlbfs rw,relatime 0 0");
    t
}

fn cfg(socket_mem_mb: &[u64]) -> MemoryConfig {
    MemoryConfig {
        socket_mem_mb: socket_mem_mb.to_vec(),
        ..MemoryConfig::default()
    }
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn with_mount(mut inv: Inventory, path: &str, kb: u64) -> Inventory {
    inv.mounts.push(HugetlbMount {
        path: PathBuf::from(path),
        page_size_kb: kb,
    });
    inv
}

/// Stands in for the kernel: raising nr_hugepages adds the new pages to
/// free_hugepages, up to `max_grant` extra pages per write; mounting appends
/// to the fake mounts table.
struct FakeKernel {
    root: PathBuf,
    max_grant: u64,
    writes: RefCell<Vec<(PathBuf, u64)>>,
    mounts: RefCell<Vec<PathBuf>>,
}

impl FakeKernel {
    fn new(root: &Path, max_grant: u64) -> Self {
        FakeKernel {
            root: root.to_path_buf(),
            max_grant,
            writes: RefCell::default(),
            mounts: RefCell::default(),
        }
    }
}

fn read_num(p: &Path) -> io::Result<u64> {
    fs::read_to_string(p)?
        .trim()
        .parse()
        .map_err(|_| io::Error::other("not a number"))
}

impl Kernel for FakeKernel {
    fn set_nr_hugepages(&self, path: &Path, pages: u64) -> io::Result<()> {
        self.writes.borrow_mut().push((path.to_path_buf(), pages));
        let old = read_num(path)?;
        let new = pages.min(old.saturating_add(self.max_grant)).max(old);
        let free_path = path.with_file_name("free_hugepages");
        let free = read_num(&free_path)?;
        fs::write(path, format!("{new}\n"))?;
        fs::write(free_path, format!("{}\n", free + (new - old)))
    }

    fn mount_hugetlbfs(&self, dir: &Path, page_size_kb: u64) -> io::Result<()> {
        assert!(dir.is_dir(), "mount point must exist");
        self.mounts.borrow_mut().push(dir.to_path_buf());
        let mounts = self.root.join("proc/mounts");
        let mut text = fs::read_to_string(&mounts)?;
        text.push_str(&format!(
            "nodev {} hugetlbfs rw,relatime,pagesize={}K 0 0\n",
            dir.display(),
            page_size_kb
        ));
        fs::write(mounts, text)
    }
}

// ---------------------------------------------------------------- parse_size

#[test]
fn parse_size_accepts_the_usual_forms() {
    for (s, kb) in [
        ("2M", 2048),
        ("2MB", 2048),
        ("2mb", 2048),
        ("2MiB", 2048),
        ("2048kB", 2048),
        ("2048 kB", 2048),
        ("2048K", 2048),
        ("1G", G1),
        ("1GB", G1),
        ("1gb", G1),
        ("1024M", G1),
        (" 1g ", G1),
    ] {
        assert_eq!(parse_size(s).expect(s), kb, "{s}");
    }
}

#[test]
fn parse_size_rejects_nonsense() {
    for s in [
        "",
        "M",
        "2",
        "3X",
        "0M",
        "-2M",
        "2.5M",
        "99999999999999999999G",
        "1T",
    ] {
        let e = parse_size(s).expect_err(s);
        assert!(matches!(e, Error::InvalidSize { .. }), "{s}: {e:?}");
        assert!(e.to_string().contains("set memory.page_size"), "{e}");
    }
}

// ------------------------------------------------------------------ discover

#[test]
fn discover_two_nodes() {
    let t = two_nodes();
    let inv = discover(&t.paths()).expect("discover");
    assert_eq!(inv.default_page_size_kb, 2048);
    assert_eq!(inv.numa_nodes, vec![0, 1]);
    assert!(inv.mounts.is_empty());
    assert!(inv.numa_aware());
    assert_eq!(inv.page_sizes_kb(), vec![2048, G1]);
    let pool = |node, kb, total, free| PagePool {
        page_size_kb: kb,
        numa_node: Some(node),
        total,
        free,
        reserved: 0,
        surplus: 0,
    };
    assert_eq!(
        inv.pools,
        vec![
            pool(0, 2048, 256, 256),
            pool(0, G1, 1, 1),
            pool(1, 2048, 0, 0),
            pool(1, G1, 0, 0),
        ]
    );
}

#[test]
fn discover_single_pool() {
    let t = single_pool();
    let inv = discover(&t.paths()).expect("discover");
    assert!(inv.numa_nodes.is_empty());
    assert!(!inv.numa_aware());
    assert_eq!(
        inv.pools,
        vec![PagePool {
            page_size_kb: 2048,
            numa_node: None,
            total: 512,
            free: 300,
            reserved: 44,
            surplus: 0,
        }]
    );
    assert_eq!(inv.pools[0].available(), 256);
    assert_eq!(
        inv.mounts,
        vec![HugetlbMount {
            path: PathBuf::from("/dev/hugepages"),
            page_size_kb: 2048,
        }]
    );
}

#[test]
fn discover_reads_mount_options_and_escapes() {
    let t = two_nodes();
    t.add_mount("none /mnt/huge\\040one hugetlbfs rw,pagesize=1024M 0 0");
    t.add_mount("nodev /dev/hugepages1G hugetlbfs rw,relatime,pagesize=1G 0 0");
    t.add_mount("none /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0");
    t.add_mount("tmpfs /dev/shm tmpfs rw 0 0");
    let inv = discover(&t.paths()).expect("discover");
    let got: Vec<(PathBuf, u64)> = inv
        .mounts
        .iter()
        .map(|m| (m.path.clone(), m.page_size_kb))
        .collect();
    assert_eq!(
        got,
        vec![
            (PathBuf::from("/mnt/huge one"), G1),
            (PathBuf::from("/dev/hugepages1G"), G1),
            (PathBuf::from("/dev/hugepages"), 2048),
        ]
    );
}

#[test]
fn discover_without_hugepages_says_so() {
    let t = Tree::new(2048);
    fs::remove_dir_all(t.root().join("sys/kernel/mm/hugepages")).expect("rm");
    let e = discover(&t.paths()).expect_err("no hugepages");
    assert!(matches!(e, Error::NoHugepages { .. }));
    assert!(e.to_string().ends_with("set memory.no_huge: true"), "{e}");
}

#[test]
fn discover_names_the_unreadable_file() {
    let t = two_nodes();
    fs::remove_file(t.root().join(node_nr(1, 2048))).expect("rm");
    let e = discover(&t.paths()).expect_err("missing nr");
    let Error::Io { path, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(*path, t.root().join(node_nr(1, 2048)));

    let t = two_nodes();
    t.write(&node_nr(0, G1), "lots\n");
    let e = discover(&t.paths()).expect_err("garbage");
    assert!(matches!(e, Error::Parse { .. }), "{e:?}");
    assert!(e.to_string().contains("\"lots\""), "{e}");
}

// ---------------------------------------------------------------------- plan

#[test]
fn plan_two_nodes_fits() {
    let (_tree, inv) = two_nodes_mounted();
    let p = plan(&cfg(&[256]), &inv).expect("plan");
    assert!(p.is_ready());
    assert!(p.numa_aware);
    assert_eq!(p.page_size_kb, 2048);
    assert_eq!(p.huge_dir, Some(PathBuf::from("/dev/hugepages")));
    assert_eq!(p.nodes.len(), 2);
    assert_eq!(
        (
            p.nodes[0].pages_needed,
            p.nodes[0].pages_available,
            p.nodes[0].pages_short
        ),
        (128, 256, 0)
    );
    assert_eq!((p.nodes[1].budget_mb, p.nodes[1].pages_needed), (0, 0));
    assert_eq!(
        p.eal.args,
        args(&[
            "--socket-mem",
            "256,0",
            "--huge-dir",
            "/dev/hugepages",
            "--file-prefix",
            "heddle"
        ])
    );
}

#[test]
fn plan_shortfall_names_node_sizes_and_setting() {
    let (_tree, inv) = two_nodes_mounted();
    let e = plan(&cfg(&[1024]), &inv).expect_err("short");
    assert_eq!(
        e.to_string(),
        "needs 1024 MiB of 2 MiB pages on NUMA 0, 512 MiB free: reserve more \
         (echo 512 > /sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages), \
         set memory.reserve: true, or lower memory.socket_mem_mb"
    );
    let e = plan(&cfg(&[0, 64]), &inv).expect_err("short on node 1");
    assert_eq!(
        e.to_string(),
        "needs 64 MiB of 2 MiB pages on NUMA 1, 0 MiB free: reserve more \
         (echo 32 > /sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages), \
         set memory.reserve: true, or lower memory.socket_mem_mb"
    );
}

#[test]
fn plan_one_gig_pages_round_up() {
    let t = two_nodes();
    let inv = with_mount(
        discover(&t.paths()).expect("discover"),
        "/dev/hugepages1G",
        G1,
    );
    let c = MemoryConfig {
        page_size: "1G".into(),
        ..cfg(&[256])
    };
    let p = plan(&c, &inv).expect("plan");
    assert_eq!(p.nodes[0].pages_needed, 1);
    assert_eq!(
        p.eal.args,
        args(&[
            "--socket-mem",
            "1024,0",
            "--huge-dir",
            "/dev/hugepages1G",
            "--file-prefix",
            "heddle"
        ])
    );
    let e = plan(&MemoryConfig { ..c.clone() }.clone_with(&[1025]), &inv).expect_err("2 pages");
    assert_eq!(
        e.to_string(),
        "needs 2048 MiB of 1 GiB pages on NUMA 0, 1024 MiB free: reserve more \
         (echo 2 > /sys/devices/system/node/node0/hugepages/hugepages-1048576kB/nr_hugepages), \
         set memory.reserve: true, or lower memory.socket_mem_mb"
    );
}

impl MemoryConfig {
    fn clone_with(&self, socket_mem_mb: &[u64]) -> MemoryConfig {
        MemoryConfig {
            socket_mem_mb: socket_mem_mb.to_vec(),
            ..self.clone()
        }
    }
}

#[test]
fn plan_rounds_odd_budgets_up_to_whole_pages() {
    let (_tree, inv) = two_nodes_mounted();
    let p = plan(&cfg(&[3]), &inv).expect("plan");
    assert_eq!(p.nodes[0].pages_needed, 2);
    assert_eq!(p.eal.args[..2], args(&["--socket-mem", "4,0"])[..]);
}

#[test]
fn plan_without_mount() {
    let t = two_nodes();
    let inv = discover(&t.paths()).expect("discover");
    let e = plan(&cfg(&[256]), &inv).expect_err("no mount");
    assert_eq!(
        e.to_string(),
        "no hugetlbfs mount for 2 MiB pages: mount one (mount -t hugetlbfs -o pagesize=2M none /dev/hugepages) \
         or set memory.reserve: true"
    );
    let c = MemoryConfig {
        page_size: "1gb".into(),
        ..cfg(&[256])
    };
    let e = plan(&c, &inv).expect_err("no 1G mount");
    assert_eq!(
        e.to_string(),
        "no hugetlbfs mount for 1 GiB pages: mount one (mount -t hugetlbfs -o pagesize=1G none /dev/hugepages1G) \
         or set memory.reserve: true"
    );
}

#[test]
fn plan_with_reserve_lists_the_work() {
    let t = two_nodes();
    let inv = discover(&t.paths()).expect("discover");
    let c = MemoryConfig {
        reserve: true,
        ..cfg(&[1024, 64])
    };
    let p = plan(&c, &inv).expect("plan");
    assert!(!p.is_ready());
    assert!(p.mount_needed);
    assert_eq!(p.huge_dir, Some(PathBuf::from("/dev/hugepages")));
    let short: Vec<(Option<u32>, u64, u64)> = p
        .shortfalls()
        .map(|n| (n.numa_node, n.pages_short, n.nr_target))
        .collect();
    assert_eq!(short, vec![(Some(0), 256, 512), (Some(1), 32, 32)]);
    assert_eq!(
        p.eal.args,
        args(&[
            "--socket-mem",
            "1024,64",
            "--huge-dir",
            "/dev/hugepages",
            "--file-prefix",
            "heddle"
        ])
    );
}

#[test]
fn plan_rejects_unknown_page_size() {
    let t = two_nodes();
    let inv = discover(&t.paths()).expect("discover");
    let c = MemoryConfig {
        page_size: "3M".into(),
        ..cfg(&[256])
    };
    let e = plan(&c, &inv).expect_err("3M");
    assert_eq!(
        e.to_string(),
        "page size 3M is not one of this host's hugepage sizes (2M, 1G): set memory.page_size"
    );
    let c = MemoryConfig {
        page_size: "huge".into(),
        ..cfg(&[256])
    };
    assert!(matches!(plan(&c, &inv), Err(Error::InvalidSize { .. })));
}

#[test]
fn plan_rejects_unknown_numa_node() {
    let (_tree, inv) = two_nodes_mounted();
    let e = plan(&cfg(&[0, 0, 64]), &inv).expect_err("node 2");
    assert_eq!(
        e.to_string(),
        "memory.socket_mem_mb names NUMA node 2 but this host has only nodes 0, 1: \
         remove the entry or set it to 0"
    );
    // Zero entries for missing nodes are harmless.
    plan(&cfg(&[64, 0, 0]), &inv).expect("trailing zeros");

    let one_node = Inventory {
        default_page_size_kb: 2048,
        numa_nodes: vec![0],
        pools: vec![PagePool {
            page_size_kb: 2048,
            numa_node: Some(0),
            total: 512,
            free: 512,
            reserved: 0,
            surplus: 0,
        }],
        mounts: inv.mounts.clone(),
    };
    let e = plan(&cfg(&[256, 256]), &one_node).expect_err("node 1");
    assert_eq!(
        e.to_string(),
        "memory.socket_mem_mb names NUMA node 1 but this host has only node 0: \
         remove the entry or set it to 0"
    );
}

#[test]
fn plan_rejects_empty_budget_and_bad_prefix() {
    let (_tree, inv) = two_nodes_mounted();
    assert!(matches!(plan(&cfg(&[0, 0]), &inv), Err(Error::EmptyBudget)));
    assert!(matches!(plan(&cfg(&[]), &inv), Err(Error::EmptyBudget)));
    let c = MemoryConfig {
        file_prefix: "a/b".into(),
        ..cfg(&[64])
    };
    assert!(matches!(
        plan(&c, &inv),
        Err(Error::InvalidFilePrefix { .. })
    ));
}

#[test]
fn plan_huge_dir_checks() {
    let (t, inv) = two_nodes_mounted();
    let c = MemoryConfig {
        huge_dir: Some("/mnt/huge".into()),
        ..cfg(&[64])
    };
    let e = plan(&c, &inv).expect_err("not mounted");
    assert_eq!(
        e.to_string(),
        "memory.huge_dir /mnt/huge is not a hugetlbfs mount: mount one there \
         (mount -t hugetlbfs -o pagesize=2M none /mnt/huge), set memory.reserve: true, \
         or point memory.huge_dir at an existing mount"
    );
    let c = MemoryConfig {
        huge_dir: Some("/dev/hugepages".into()),
        page_size: "1G".into(),
        ..cfg(&[64])
    };
    let e = plan(&c, &inv).expect_err("wrong size");
    assert_eq!(
        e.to_string(),
        "memory.huge_dir /dev/hugepages holds 2 MiB pages, not the 1 GiB pages memory.page_size asks for: \
         point memory.huge_dir at a pagesize=1G mount or change memory.page_size"
    );
    // The default mount point is taken by a mount of the other size.
    let inv = with_mount(
        discover(&t.paths()).expect("discover"),
        "/dev/hugepages",
        G1,
    );
    let c = MemoryConfig {
        reserve: true,
        ..cfg(&[64])
    };
    assert!(matches!(plan(&c, &inv), Err(Error::MountPointBusy { .. })));
}

#[test]
fn plan_single_pool() {
    let t = single_pool();
    let inv = discover(&t.paths()).expect("discover");
    let p = plan(&cfg(&[256, 256]), &inv).expect("plan");
    assert!(!p.numa_aware);
    assert_eq!(p.nodes.len(), 1);
    assert_eq!(p.nodes[0].numa_node, None);
    assert_eq!(p.nodes[0].pages_needed, 256);
    assert_eq!(
        p.eal.args,
        args(&[
            "-m",
            "512",
            "--huge-dir",
            "/dev/hugepages",
            "--file-prefix",
            "heddle"
        ])
    );
    let e = plan(&cfg(&[1024]), &inv).expect_err("short");
    assert_eq!(
        e.to_string(),
        "needs 1024 MiB of 2 MiB pages, 512 MiB free: reserve more \
         (echo 768 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages), \
         set memory.reserve: true, or lower memory.socket_mem_mb"
    );
}

#[test]
fn plan_no_huge() {
    let empty = Inventory {
        default_page_size_kb: 0,
        numa_nodes: vec![],
        pools: vec![],
        mounts: vec![],
    };
    let c = MemoryConfig {
        no_huge: true,
        ..MemoryConfig::default()
    };
    let p = plan(&c, &empty).expect("plan");
    assert_eq!(
        p.eal.args,
        args(&["--no-huge", "-m", "256", "--file-prefix", "heddle"])
    );
    let t = Tree::new(2048);
    fs::remove_dir_all(t.root().join("sys")).expect("rm");
    let eal = prepare(&c, &t.paths()).expect("prepare without hugepages");
    assert_eq!(eal.args, p.eal.args);
}

#[test]
fn memory_config_defaults() {
    let c = MemoryConfig::default();
    assert_eq!(c.socket_mem_mb, vec![256]);
    assert_eq!(c.page_size, "2M");
    assert_eq!(c.huge_dir, None);
    assert!(!c.reserve && !c.no_huge);
    assert_eq!(c.file_prefix, "heddle");
}

// ------------------------------------------------------------------- prepare

#[test]
fn prepare_without_reserve_only_checks() {
    let t = two_nodes();
    t.add_mount("none /dev/hugepages hugetlbfs rw,pagesize=2M 0 0");
    let eal = prepare(&cfg(&[512]), &t.paths()).expect("fits");
    assert_eq!(
        eal.args,
        args(&[
            "--socket-mem",
            "512,0",
            "--huge-dir",
            "/dev/hugepages",
            "--file-prefix",
            "heddle"
        ])
    );
    let e = prepare(&cfg(&[1024]), &t.paths()).expect_err("short");
    assert!(matches!(e, Error::Shortfall { node: Some(0), .. }), "{e:?}");
    assert_eq!(t.read(&node_nr(0, 2048)), "256\n", "nothing written");
}

#[test]
fn prepare_reserves_per_node_and_rechecks() {
    let t = two_nodes();
    t.add_mount("none /dev/hugepages hugetlbfs rw,pagesize=2M 0 0");
    let k = FakeKernel::new(t.root(), u64::MAX);
    let c = MemoryConfig {
        reserve: true,
        ..cfg(&[1024, 64])
    };
    let eal = prepare_with(&c, &t.paths(), &k).expect("prepare");
    assert_eq!(
        eal.args,
        args(&[
            "--socket-mem",
            "1024,64",
            "--huge-dir",
            "/dev/hugepages",
            "--file-prefix",
            "heddle"
        ])
    );
    assert_eq!(t.read(&node_nr(0, 2048)), "512\n");
    assert_eq!(t.read(&node_nr(1, 2048)), "32\n");
    assert_eq!(k.writes.borrow().len(), 2);
    assert!(k.mounts.borrow().is_empty());
    // Now it fits: a second run writes nothing, and a smaller budget never shrinks.
    prepare_with(&c, &t.paths(), &k).expect("again");
    prepare_with(&c.clone_with(&[2]), &t.paths(), &k).expect("smaller");
    assert_eq!(k.writes.borrow().len(), 2);
    assert_eq!(t.read(&node_nr(0, 2048)), "512\n");
}

#[test]
fn prepare_reserves_system_wide_and_mounts() {
    let t = Tree::new(2048);
    t.pool(None, 2048, 10, 10, 4);
    let k = FakeKernel::new(t.root(), u64::MAX);
    let c = MemoryConfig {
        reserve: true,
        ..cfg(&[64])
    };
    let eal = prepare_with(&c, &t.paths(), &k).expect("prepare");
    let dir = t.root().join("dev/hugepages");
    assert_eq!(*k.mounts.borrow(), vec![dir.clone()]);
    // 32 pages needed, 6 available → 26 more: nr 10 → 36.
    assert_eq!(
        t.read("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"),
        "36\n"
    );
    assert_eq!(
        eal.args,
        args(&[
            "-m",
            "64",
            "--huge-dir",
            &dir.to_string_lossy(),
            "--file-prefix",
            "heddle"
        ])
    );
}

#[test]
fn prepare_reports_a_short_grant() {
    let t = two_nodes();
    t.add_mount("none /dev/hugepages hugetlbfs rw,pagesize=2M 0 0");
    let k = FakeKernel::new(t.root(), 100);
    let c = MemoryConfig {
        reserve: true,
        ..cfg(&[1024])
    };
    let e = prepare_with(&c, &t.paths(), &k).expect_err("short grant");
    assert_eq!(
        e.to_string(),
        "asked the kernel for 512 pages of 2 MiB on NUMA 0 \
         (/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages) but it granted only 356, \
         leaving 712 MiB free of the 1024 MiB needed: free memory or reserve the pages at boot \
         (hugepagesz=2M hugepages=N on the kernel command line), or lower memory.socket_mem_mb"
    );
}

#[test]
fn prepare_with_host_writer_writes_nr_hugepages_in_the_tree() {
    // The real writer against the temp tree: nr_hugepages is written, but no
    // kernel moves free_hugepages, so the re-check reports the shortfall.
    let t = two_nodes();
    t.add_mount("none /dev/hugepages hugetlbfs rw,pagesize=2M 0 0");
    let c = MemoryConfig {
        reserve: true,
        ..cfg(&[1024])
    };
    let e = prepare(&c, &t.paths()).expect_err("fake kernel grants nothing");
    assert!(
        matches!(
            e,
            Error::ReservationShort {
                requested: 512,
                granted: 512,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(t.read(&node_nr(0, 2048)).trim(), "512");
    // Once the pages are free (as a kernel would make them), prepare succeeds
    // without writing again.
    t.write(
        "sys/devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages",
        "512\n",
    );
    let eal = prepare(&c, &t.paths()).expect("fits now");
    assert_eq!(eal.args[..2], args(&["--socket-mem", "1024,0"])[..]);
    assert_eq!(t.read(&node_nr(0, 2048)).trim(), "512");
}

#[test]
fn prepare_reports_write_failure() {
    let t = two_nodes();
    t.add_mount("none /dev/hugepages hugetlbfs rw,pagesize=2M 0 0");
    // Make nr_hugepages a directory so the write fails even as root.
    let nr = t.root().join(node_nr(1, 2048));
    fs::remove_file(&nr).expect("rm");
    fs::create_dir(&nr).expect("mkdir");
    fs::write(nr.with_file_name("free_hugepages"), "0\n").expect("write");
    let c = MemoryConfig {
        reserve: true,
        ..cfg(&[0, 64])
    };
    let e = prepare(&c, &t.paths()).expect_err("cannot write");
    assert!(
        matches!(e, Error::Io { .. } | Error::Reserve { .. }),
        "{e:?}"
    );
}

// ------------------------------------------------------------------ real host

/// Reserves a small 2 MiB budget on the real host (root only). Only ever
/// raises nr_hugepages.
#[test]
fn real_host_reservation() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        eprintln!("real_host_reservation: skipped, not running as root");
        return;
    }
    if !Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").is_dir() {
        eprintln!("real_host_reservation: skipped, no 2 MiB hugepages on this host");
        return;
    }
    let paths = SysPaths::host();
    let before = discover(&paths).expect("discover before");
    let node = before.numa_aware().then_some(0);
    let pool = |inv: &Inventory| {
        inv.pools
            .iter()
            .find(|p| p.page_size_kb == 2048 && p.numa_node == node)
            .cloned()
            .expect("2 MiB pool")
    };
    let old = pool(&before);
    // Ask for 16 pages more than are free, so the kernel really has to reserve some.
    let budget_mb = (old.available() + 16) * 2;
    let c = MemoryConfig {
        socket_mem_mb: vec![budget_mb],
        reserve: true,
        file_prefix: "heddle-test".into(),
        ..MemoryConfig::default()
    };
    let result = prepare(&c, &paths);
    let after = discover(&paths).expect("discover after");
    let new = pool(&after);
    // Give back exactly what this test added (the crate itself never lowers a reservation).
    let nr_path = match node {
        Some(n) => {
            format!("/sys/devices/system/node/node{n}/hugepages/hugepages-2048kB/nr_hugepages")
        }
        None => "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages".to_string(),
    };
    std::fs::write(&nr_path, old.total.to_string()).expect("restore nr_hugepages");
    let eal = match result {
        Ok(eal) => eal,
        Err(e) => panic!("prepare on the real host ({budget_mb} MiB): {e}"),
    };
    eprintln!(
        "real_host_reservation: {} -> {} pages, {:?}",
        old.total, new.total, eal.args
    );
    assert!(
        new.total >= old.total + 16,
        "the kernel reserved nothing: {old:?} -> {new:?}"
    );
    assert!(
        new.available() * 2 >= budget_mb,
        "reserved pages are not free: {new:?}"
    );
    for old in &before.pools {
        let new = after
            .pools
            .iter()
            .find(|p| p.page_size_kb == old.page_size_kb && p.numa_node == old.numa_node)
            .expect("same pools");
        assert!(
            new.total >= old.total,
            "reservation shrank: {old:?} → {new:?}"
        );
    }
    assert!(eal.args.contains(&"--huge-dir".to_string()));
}
