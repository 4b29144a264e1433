//! Arbitrary bytes as the device plugin's YAML config; see
//! `heddle_manager::fuzz::fuzz_device_plugin_config` for the properties it checks.
//!
//! `cargo fuzz run device_plugin_config` from `manager/` (docs/contributing.md, "Fuzzing").

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    heddle_manager::fuzz::fuzz_device_plugin_config(data);
});
