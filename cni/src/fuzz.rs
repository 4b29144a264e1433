//! The fuzzing entry point for what `heddle-cni` reads from the runtime: the `CNI_*`
//! environment and the network configuration on stdin. Called by the cargo-fuzz target
//! `call` in `cni/fuzz`, and by the test suite, which replays its committed corpus
//! (`cni/tests/fuzz_corpus.rs`).
//!
//! An input is `KEY=VALUE` lines (the environment), a NUL byte, then stdin. Without a NUL
//! the whole input is stdin and the environment is a valid ADD.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use crate::attach;
use crate::config::NetConf;
use crate::error::code;
use crate::invocation::{valid_container_id, valid_ifname, CniArgs, Command, Invocation};
use crate::CniError;

const DEFAULT_ENV: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "0123456789ab"),
    ("CNI_IFNAME", "net1"),
    ("CNI_NETNS", "/run/netns/fuzz"),
    ("CNI_PATH", "/opt/cni/bin"),
];

/// A refused call carries one of `codes` and a one-line sentence. Panics otherwise.
fn assert_refusal(what: &str, e: &CniError, codes: &[u32]) {
    assert!(codes.contains(&e.code), "{what}: code {} for {e}", e.code);
    assert!(!e.msg.trim().is_empty(), "{what}: empty message");
    assert!(
        !e.msg.contains('\n'),
        "{what}: the message spans lines: {:?}",
        e.msg
    );
}

/// True when `child` is `parent` joined with exactly one plain component (no `..`, no
/// root, no `.`): the path cannot leave `parent`.
fn one_level_below(parent: &Path, child: &Path) -> bool {
    child.parent() == Some(parent)
        && matches!(child.components().next_back(), Some(Component::Normal(_)))
        && child.components().count() == parent.components().count() + 1
}

/// Runs the environment and stdin of `data` through [`Invocation::from_env`],
/// [`NetConf::parse`] and [`attach::plan`], checking: refusals carry the right CNI code and a
/// one-line sentence; accepted container ids and interface names cannot leave a directory
/// they are joined to; a config accepted for ADD is accepted for GC/STATUS; the planned
/// socket stays one directory below `socketDir`, the record one below `stateDir`, the socket
/// path holds no ',' (it goes into devargs), and the switch port name fits heddle-switch's
/// 128 bytes.
pub fn fuzz_call(data: &[u8]) {
    let (env_part, stdin) = match data.iter().position(|b| *b == 0) {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    };
    let env: BTreeMap<String, String> = match env_part {
        Some(raw) => String::from_utf8_lossy(raw)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        None => DEFAULT_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let inv = Invocation::from_env(|k| env.get(k).cloned());
    match &inv {
        Ok(inv) => {
            if matches!(inv.command, Command::Add | Command::Del | Command::Check) {
                assert!(valid_container_id(&inv.container_id));
                assert!(valid_ifname(&inv.ifname));
                let base = Path::new("/run/heddle");
                for name in [&inv.container_id, &inv.ifname] {
                    assert!(
                        one_level_below(base, &base.join(name)),
                        "{name:?} walks out of the directory it is joined to"
                    );
                }
            }
            let args = CniArgs::parse(env.get("CNI_ARGS").map_or("", String::as_str))
                .expect("from_env accepted these CNI_ARGS");
            assert_eq!(args, inv.args);
        }
        Err(e) => assert_refusal("Invocation::from_env", e, &[code::INVALID_ENV]),
    }
    let conf_codes = [
        code::INCOMPATIBLE_VERSION,
        code::UNSUPPORTED_FIELD,
        code::DECODING_FAILURE,
        code::INVALID_CONFIG,
    ];
    let for_add = NetConf::parse(stdin, true);
    let for_gc = NetConf::parse(stdin, false);
    if let Err(e) = &for_add {
        assert_refusal("NetConf::parse", e, &conf_codes);
    }
    if let Err(e) = &for_gc {
        assert_refusal("NetConf::parse (GC)", e, &conf_codes);
    }
    if for_add.is_ok() {
        if let Err(e) = &for_gc {
            panic!("a config accepted for ADD is refused for GC: {e}");
        }
    }
    let (Ok(inv), Ok(conf)) = (inv, for_add) else {
        return;
    };
    if !matches!(inv.command, Command::Add | Command::Del | Command::Check) {
        return;
    }
    assert!(conf.socket_dir.is_absolute() && conf.state_dir.is_absolute());
    match attach::plan(&conf, &inv, None) {
        Ok(plan) => {
            if let Some(s) = &plan.socket {
                assert!(
                    one_level_below(&conf.socket_dir, &s.dir),
                    "socket dir {} is not one level below {}",
                    s.dir.display(),
                    conf.socket_dir.display()
                );
                assert!(one_level_below(&s.dir, &s.path));
                assert!(
                    !s.path.to_string_lossy().contains(','),
                    "socket path {:?} would split the switch's devargs",
                    s.path
                );
            }
            if let Some(port) = &plan.port {
                assert!(
                    !port.name.is_empty() && port.name.len() <= 128,
                    "port name {:?} breaks heddle-switch's 1-128 byte limit",
                    port.name
                );
            }
            let record = plan.key.record_file();
            assert!(one_level_below(
                &conf.state_dir,
                &conf.state_dir.join(&record)
            ));
        }
        Err(e) => assert_refusal(
            "attach::plan",
            &e,
            &[code::INVALID_ENV, code::INVALID_CONFIG],
        ),
    }
}
