//! Finds the system's DPDK through pkg-config, compiles the static-inline shim and
//! generates allowlisted bindings. No CPU flags are invented here: the only `-march` is
//! whatever `libdpdk.pc` itself carries, so the shim matches the library it calls.

use std::env;
use std::path::PathBuf;

fn main() {
    let dpdk = pkg_config::Config::new()
        .atleast_version("22.11")
        .probe("libdpdk")
        .unwrap_or_else(|e| {
            panic!(
                "DPDK 22.11 not found through pkg-config ({e}); install it with \
                 deploy/scripts/install-deps.sh (apt-get install libdpdk-dev dpdk-dev pkg-config)"
            )
        });

    // Flags from libdpdk.pc that the C compiler and clang need: include paths, the forced
    // `-include rte_config.h`, and the library's own `-march`.
    let cflags = pkg_config::get_variable("libdpdk", "cflags").ok();
    let cflags: Vec<String> = match cflags {
        Some(v) if !v.is_empty() => v.split_whitespace().map(str::to_owned).collect(),
        _ => {
            let out = std::process::Command::new("pkg-config")
                .args(["--cflags", "libdpdk"])
                .output()
                .expect("run pkg-config --cflags libdpdk");
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        }
    };

    let mut build = cc::Build::new();
    build
        .file("src/shim/shim.c")
        .include("src/shim")
        .opt_level(3);
    for inc in &dpdk.include_paths {
        build.include(inc);
    }
    for flag in &cflags {
        if !flag.starts_with("-I") {
            build.flag(flag);
        }
    }
    build.warnings(false).compile("heddle_dpdk_shim");

    let mut clang_args: Vec<String> = dpdk
        .include_paths
        .iter()
        .map(|p| format!("-I{}", p.display()))
        .collect();
    clang_args.push("-Isrc/shim".into());
    clang_args.extend(cflags.iter().filter(|f| !f.starts_with("-I")).cloned());

    let bindings = bindgen::Builder::default()
        .header("src/shim/wrapper.h")
        .clang_args(&clang_args)
        .allowlist_function("heddle_.*")
        .allowlist_function("rte_eal_(init|cleanup|remote_launch|wait_lcore|mp_wait_lcore|process_type|has_hugepages|hotplug_remove)")
        .allowlist_function("rte_(strerror|socket_id|get_tsc_hz|lcore_count|lcore_to_socket_id|get_main_lcore)")
        .allowlist_function("rte_dev_(probe|remove)")
        .allowlist_function("rte_eth_(dev_.*|rx_queue_setup|tx_queue_setup|stats_get|stats_reset|link_get_nowait|macaddr_get|promiscuous_enable|allmulticast_enable|find_next_owned_by|xstats_.*)")
        .allowlist_function("rte_pktmbuf_(pool_create|free_bulk|copy)")
        .allowlist_function("rte_mempool_(free|lookup|in_use_count)")
        .allowlist_type("rte_eth_.*")
        .allowlist_var("RTE_MAX_ETHPORTS|RTE_MAX_LCORE|RTE_MBUF_DEFAULT_BUF_SIZE|RTE_PKTMBUF_HEADROOM|RTE_ETH_NAME_MAX_LEN|RTE_ETH_LINK_.*|SOCKET_ID_ANY|RTE_ETHER_ADDR_LEN")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("generate DPDK bindings");

    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");
    println!("cargo:rerun-if-changed=src/shim");
}
