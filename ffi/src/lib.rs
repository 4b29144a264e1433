//! Raw bindings to the system's DPDK 22.11, generated at build time from pkg-config's
//! `libdpdk`, allowlisted to what Heddle calls, plus `heddle_*` out-of-line forwarders for
//! DPDK's `static inline` fast-path functions (`src/shim/shim.c`).
//!
//! Everything here is `unsafe` and unchecked; `heddle-dataplane::dpdk` is the safe layer.
#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn
)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
