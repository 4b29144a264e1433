//! Entry points for fuzzing what the manager's node-side programs read from outside:
//! `heddle-ipam`'s stdin and the device plugin's YAML config. Called by the cargo-fuzz
//! targets `ipam_stdin` and `device_plugin_config` in `manager/fuzz`, and by the test suite,
//! which replays their committed corpora (`manager/tests/fuzz_corpus.rs`).

use heddle_cni::error::code;
use heddle_cni::CniError;

use crate::cni_ipam::Request;
use crate::device_plugin::config::{ConfigError, DevicePluginConfig};

/// A message meant for a person is non-empty and one line. Panics otherwise.
fn assert_sentence(what: &str, msg: &str) {
    assert!(!msg.trim().is_empty(), "{what}: empty message");
    assert!(
        !msg.contains('\n') && !msg.contains('\r'),
        "{what}: the message spans lines: {msg:?}"
    );
}

/// `heddle-ipam`'s stdin through [`Request::parse`]: a refusal carries code 1, 6 or 7 and a
/// one-line sentence; an accepted request names a network, and parsing is deterministic.
pub fn fuzz_ipam_stdin(data: &[u8]) {
    match Request::parse(data) {
        Ok(req) => {
            assert!(!req.ipam.network.is_empty(), "accepted without a network");
            assert!(!req.cni_version.is_empty(), "accepted without a version");
            assert_eq!(Request::parse(data).ok(), Some(req), "parse is not stable");
        }
        Err(CniError { code: c, msg, .. }) => {
            assert!(
                [
                    code::INCOMPATIBLE_VERSION,
                    code::DECODING_FAILURE,
                    code::INVALID_CONFIG
                ]
                .contains(&c),
                "code {c} for {msg:?}"
            );
            assert_sentence("Request::parse", &msg);
        }
    }
}

/// The device plugin's YAML config through [`DevicePluginConfig::parse`]: an accepted config
/// writes back to YAML that parses to the same config; a refused one lists its problems, one
/// sentence each.
pub fn fuzz_device_plugin_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match DevicePluginConfig::parse(text, "fuzz.yaml") {
        Ok(cfg) => {
            assert!(cfg.problems().is_empty());
            let yaml = serde_yaml::to_string(&cfg).expect("a parsed config serialises");
            let again = DevicePluginConfig::parse(&yaml, "again.yaml")
                .unwrap_or_else(|e| panic!("the re-serialised config is refused: {e}\n{yaml}"));
            assert_eq!(again, cfg, "YAML round trip changed the config:\n{yaml}");
        }
        Err(ConfigError::Invalid { problems, .. }) => {
            assert!(!problems.is_empty(), "refused with no problem named");
            for p in &problems {
                assert_sentence("DevicePluginConfig::problems", p);
            }
        }
        Err(e) => assert!(!e.to_string().trim().is_empty()),
    }
}
