//! Entry points for fuzzing what the daemon reads from outside: the control API's request
//! bodies and the YAML config. Called by the cargo-fuzz targets `api_body` and `config` in
//! `dataplane/fuzz`, and by the test suite, which replays their committed corpora
//! (`dataplane/tests/fuzz_corpus.rs`).
//!
//! Each function panics (a fuzz finding) when a property fails: what parses re-serialises and
//! parses to the same value and the same verdict, and a refused input yields one sentence.

use heddle_api::{PortMode, PortSpec, TrunkVlans};

use super::config::{validate_port, DaemonConfig};
use super::switch::switch_mode;

/// An error meant for a person is non-empty and one line (values in it are quoted with
/// `{:?}`, so input cannot break it across lines). Panics otherwise.
fn assert_sentence(what: &str, msg: &str) {
    assert!(!msg.trim().is_empty(), "{what}: empty error");
    assert!(
        !msg.contains('\n') && !msg.contains('\r'),
        "{what}: the error spans lines: {msg:?}"
    );
}

/// The checks every accepted spec must pass: `validate_port`'s verdict holds after a JSON
/// round trip, and an accepted spec maps to a bridge mode.
fn check_spec(spec: &PortSpec) {
    let json = serde_json::to_vec(spec).expect("a parsed port spec serialises");
    let again: PortSpec = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "the re-serialised spec {} does not parse: {e}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(&again, spec, "JSON round trip changed the spec");
    let verdict = validate_port(spec);
    assert_eq!(
        validate_port(&again),
        verdict,
        "verdict changed in a round trip"
    );
    match verdict {
        Ok(()) => {
            if let Err(e) = switch_mode(spec) {
                panic!("a valid spec has no bridge mode: {e}");
            }
        }
        Err(msg) => assert_sentence("validate_port", &msg),
    }
}

/// A request body as `POST /v1/ports` and `PUT /v1/ports/{name}/vlans` decode it, then the
/// checks `SwitchCtl::add_port` and `set_trunk_vlans` run before touching DPDK.
pub fn fuzz_api_body(data: &[u8]) {
    if let Ok(spec) = serde_json::from_slice::<PortSpec>(data) {
        check_spec(&spec);
    }
    if let Ok(vlans) = serde_json::from_slice::<TrunkVlans>(data) {
        let json = serde_json::to_vec(&vlans).expect("a parsed VLAN list serialises");
        let again: TrunkVlans = serde_json::from_slice(&json).expect("re-serialised VLANs parse");
        assert_eq!(again, vlans, "JSON round trip changed the VLAN list");
        // What set_trunk_vlans does to a trunk port that exists.
        let spec = PortSpec {
            name: "uplink".into(),
            devargs: "0000:3b:00.0".into(),
            mode: PortMode::Trunk {
                vlans: vlans.vlans,
                native_vlan: vlans.native_vlan,
            },
            mac: None,
            queues: None,
            mtu: None,
        };
        check_spec(&spec);
    }
}

/// The switch's YAML config as `DaemonConfig::parse` reads it: an accepted config writes
/// back to YAML that parses to the same config; a refused one yields a sentence.
pub fn fuzz_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match DaemonConfig::parse(text, "fuzz.yaml") {
        Ok(cfg) => {
            let yaml = serde_yaml::to_string(&cfg).expect("a parsed config serialises");
            let again = DaemonConfig::parse(&yaml, "again.yaml")
                .unwrap_or_else(|e| panic!("the re-serialised config is refused: {e}\n{yaml}"));
            assert_eq!(again, cfg, "YAML round trip changed the config:\n{yaml}");
            for p in &cfg.ports {
                check_spec(p);
            }
        }
        Err(e) => {
            // The parser's message may quote the input over several lines; the sentence
            // the config check writes is one line.
            if let super::config::ConfigError::Invalid(msg) = &e {
                assert_sentence("DaemonConfig::validate", msg);
            }
            assert!(!e.to_string().trim().is_empty());
        }
    }
}
