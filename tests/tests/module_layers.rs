//! No module import cycles: in each crate listed here, modules only use modules below them
//! (see `heddle_tests::modules` for what counts as a use). A failure names the modules that
//! reach each other.

use std::path::Path;

fn assert_no_cycles(crate_dir: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(crate_dir)
        .join("src");
    let deps = heddle_tests::modules::dependencies(&src).expect("reading the crate's source");
    assert!(deps.len() > 5, "{}: found only {deps:?}", src.display());
    let cycles = heddle_tests::modules::cycles(&src).expect("reading the crate's source");
    assert!(
        cycles.is_empty(),
        "{crate_dir}: these modules use each other (directly or through others): {cycles:?}"
    );
}

#[test]
fn cni_modules_have_no_import_cycle() {
    assert_no_cycles("cni");
}

#[test]
fn core_modules_have_no_import_cycle() {
    assert_no_cycles("dataplane/core");
}

#[test]
fn dataplane_modules_have_no_import_cycle() {
    assert_no_cycles("dataplane");
}

#[test]
fn manager_modules_have_no_import_cycle() {
    assert_no_cycles("manager");
}

#[test]
fn hugepages_modules_have_no_import_cycle() {
    assert_no_cycles("hugepages");
}

/// The checker finds a cycle when there is one: two modules that use each other.
#[test]
fn a_cycle_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("s")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod s;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::s::{b::{self, T}};\n").unwrap();
    std::fs::write(src.join("s/mod.rs"), "pub mod b;\n").unwrap();
    std::fs::write(
        src.join("s/b.rs"),
        "// crate::a is only a comment here\npub fn f() { super::super::a::g() }\n#[cfg(test)]\nmod tests { use crate::a; }\n",
    )
    .unwrap();
    let deps = heddle_tests::modules::dependencies(src).unwrap();
    assert_eq!(deps["a"].iter().collect::<Vec<_>>(), ["s::b"]);
    assert_eq!(deps["s::b"].iter().collect::<Vec<_>>(), ["a"]);
    assert_eq!(
        heddle_tests::modules::cycles(src).unwrap(),
        vec![vec!["a".to_owned(), "s::b".to_owned()]]
    );
    std::fs::write(src.join("s/b.rs"), "pub fn f() {}\n").unwrap();
    assert!(heddle_tests::modules::cycles(src).unwrap().is_empty());
}
