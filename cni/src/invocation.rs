//! The runtime's side of a call: `CNI_*` environment variables, checked before anything is
//! touched. Names that end up in paths (container id, ifname) are validated here, so no
//! value from the runtime can walk out of Heddle's directories.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::CniError;
use crate::key::AttachmentKey;

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach.
    Add,
    /// Detach (idempotent, also without a netns).
    Del,
    /// Verify an attachment.
    Check,
    /// Can the plugin take ADDs?
    Status,
    /// Remove attachments the runtime no longer knows.
    Gc,
    /// Report supported versions.
    Version,
}

impl Command {
    /// Parses the `CNI_COMMAND` value.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// `CNI_ARGS` keys Heddle understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub pod_name: Option<String>,
    /// `K8S_POD_UID`.
    pub pod_uid: Option<String>,
    /// `MAC` (podman `--mac-address`).
    pub mac: Option<String>,
    /// `IP` (podman `--ip`).
    pub ip: Option<String>,
}

const KNOWN_ARGS: &[&str] = &[
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_UID",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_NETWORK",
    "IgnoreUnknown",
    "MAC",
    "IP",
];

impl CniArgs {
    /// Parses `K=V;K=V`. Unknown keys are refused unless `IgnoreUnknown` is `1`/`true`.
    pub fn parse(text: &str) -> Result<CniArgs, CniError> {
        let mut map = BTreeMap::new();
        for pair in text.split(';').filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                CniError::env(
                    "CNI_ARGS must be KEY=VALUE pairs separated by ';'",
                    format!("{pair:?} has no '='"),
                )
            })?;
            map.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        let ignore = map
            .get("IgnoreUnknown")
            .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        if !ignore {
            if let Some(k) = map.keys().find(|k| !KNOWN_ARGS.contains(&k.as_str())) {
                return Err(CniError::env(
                    format!("unknown CNI_ARGS key {k:?}: set IgnoreUnknown=1 to pass it"),
                    format!("known keys: {}", KNOWN_ARGS.join(", ")),
                ));
            }
        }
        // Pod identities go to the kubelet's PodResources API, never into a path; they are
        // held to the container id's rule all the same (no '/', NUL, control characters or
        // '..', at most 256 bytes), so no value from the runtime can name a path.
        for k in ["K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_UID"] {
            if let Some(v) = map.get(k).filter(|v| !v.is_empty()) {
                if !valid_container_id(v) {
                    return Err(CniError::env(
                        format!("CNI_ARGS {k} must start with a letter or digit and hold only letters, digits, '_', '.' and '-' (at most 256 bytes): pass the pod's Kubernetes name"),
                        format!("got {v:?}"),
                    ));
                }
            }
        }
        Ok(CniArgs {
            pod_namespace: map.remove("K8S_POD_NAMESPACE"),
            pod_name: map.remove("K8S_POD_NAME"),
            pod_uid: map.remove("K8S_POD_UID"),
            mac: map.remove("MAC"),
            ip: map.remove("IP"),
        })
    }
}

/// Everything the runtime put in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (validated, for ADD/DEL/CHECK).
    pub container_id: String,
    /// `CNI_NETNS`; empty is allowed for DEL.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (validated, for ADD/DEL/CHECK).
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: CniArgs,
    /// `CNI_PATH` directories, searched for IPAM plugins.
    pub path: Vec<PathBuf>,
    /// Where sysfs is (`HEDDLE_SYSFS_ROOT`, default `/sys`; tests point it at a fixture).
    pub sysfs_root: PathBuf,
    /// `PCIDEVICE_*` variables (device plugin hand-over), name and value.
    pub pci_devices: Vec<(String, String)>,
}

/// Where sysfs is mounted on a node.
pub const DEFAULT_SYSFS_ROOT: &str = "/sys";

/// A container id as the spec allows it: starts alphanumeric, then `[A-Za-z0-9_.-]`, at
/// most 256 bytes. This also rules out `/` and `..` components.
pub fn valid_container_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// An interface name the kernel accepts and that is safe in a file name: 1-15 bytes, not
/// `.`/`..`, no `/`, `:`, whitespace or control characters.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

impl Invocation {
    /// Reads and checks the environment through `get` (`std::env::var` in the binary).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
        let raw = get("CNI_COMMAND").unwrap_or_default();
        let command = Command::parse(&raw).ok_or_else(|| {
            CniError::env(
                "CNI_COMMAND must be one of ADD, DEL, CHECK, STATUS, GC, VERSION",
                format!("got {raw:?}"),
            )
        })?;
        let per_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        let netns = get("CNI_NETNS")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        if per_attachment {
            if !valid_container_id(&container_id) {
                return Err(CniError::env(
                    "CNI_CONTAINERID must start with a letter or digit and hold only letters, digits, '_', '.' and '-'",
                    format!("got {container_id:?}"),
                ));
            }
            if !valid_ifname(&ifname) {
                return Err(CniError::env(
                    "CNI_IFNAME must be 1-15 bytes without '/', ':' or whitespace, and not '.' or '..'",
                    format!("got {ifname:?}"),
                ));
            }
            if matches!(command, Command::Add | Command::Check) {
                match &netns {
                    None => {
                        return Err(CniError::env(
                            "CNI_NETNS is required for ADD and CHECK",
                            "it is empty",
                        ))
                    }
                    Some(p) if !p.is_absolute() => {
                        return Err(CniError::env(
                            "CNI_NETNS must be an absolute path",
                            format!("got {}", p.display()),
                        ))
                    }
                    _ => {}
                }
            }
        }
        let args = CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?;
        let path = get("CNI_PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        let sysfs_root = get("HEDDLE_SYSFS_ROOT")
            .filter(|s| !s.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_SYSFS_ROOT), PathBuf::from);
        if !sysfs_root.is_absolute() {
            return Err(CniError::env(
                "HEDDLE_SYSFS_ROOT must be an absolute path (it is meant for tests; leave it unset on a node)",
                format!("got {}", sysfs_root.display()),
            ));
        }
        Ok(Invocation {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
            sysfs_root,
            pci_devices: vec![],
        })
    }

    /// Adds the `PCIDEVICE_*` variables among `vars` (the process environment in the binary).
    pub fn with_pci_devices(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.pci_devices = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("PCIDEVICE_"))
            .collect();
        self
    }

    /// The attachment this call is about: `(CNI_CONTAINERID, CNI_IFNAME)`.
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    /// Names that could walk out of a directory, or that no path can hold, are refused
    /// before anything is touched (code 4: the CNI spec's code for a bad `CNI_*` variable),
    /// each with a message naming the variable.
    #[test]
    fn path_escapes_and_over_long_names_are_refused() {
        let base = |k: &str, v: &str| {
            let mut m = BTreeMap::from([
                ("CNI_COMMAND", "ADD".to_owned()),
                ("CNI_CONTAINERID", "c1".to_owned()),
                ("CNI_IFNAME", "net1".to_owned()),
                ("CNI_NETNS", "/run/netns/x".to_owned()),
            ]);
            m.insert(
                match k {
                    "CNI_CONTAINERID" => "CNI_CONTAINERID",
                    "CNI_IFNAME" => "CNI_IFNAME",
                    _ => "CNI_ARGS",
                },
                v.to_owned(),
            );
            Invocation::from_env(|key| m.get(key).cloned())
        };
        let long = "a".repeat(257);
        let cases = [
            ("CNI_CONTAINERID", "..", "CNI_CONTAINERID"),
            ("CNI_CONTAINERID", "../etc", "CNI_CONTAINERID"),
            ("CNI_CONTAINERID", "a/b", "CNI_CONTAINERID"),
            ("CNI_CONTAINERID", "/abs", "CNI_CONTAINERID"),
            ("CNI_CONTAINERID", "a\0b", "CNI_CONTAINERID"),
            ("CNI_CONTAINERID", &long, "CNI_CONTAINERID"),
            ("CNI_IFNAME", "..", "CNI_IFNAME"),
            ("CNI_IFNAME", "a/b", "CNI_IFNAME"),
            ("CNI_IFNAME", "e\0", "CNI_IFNAME"),
            ("CNI_IFNAME", "eth0123456789abc", "CNI_IFNAME"),
            ("CNI_ARGS", "K8S_POD_NAME=../x", "K8S_POD_NAME"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=a/b", "K8S_POD_NAMESPACE"),
            ("CNI_ARGS", "K8S_POD_UID=..", "K8S_POD_UID"),
            ("CNI_ARGS", "K8S_POD_NAME=a\0b", "K8S_POD_NAME"),
            ("CNI_ARGS", &format!("K8S_POD_NAME={long}"), "K8S_POD_NAME"),
        ];
        for (k, v, named) in cases {
            let e = base(k, v).unwrap_err();
            assert_eq!(e.code, 4, "{k}={v:?}: {e}");
            assert!(e.msg.contains(named), "{k}={v:?}: {}", e.msg);
        }
        let ok = base(
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=upf-0.a_b;K8S_POD_UID=0f9e-11",
        )
        .unwrap();
        assert_eq!(ok.args.pod_name.as_deref(), Some("upf-0.a_b"));
    }

    #[test]
    fn add_needs_id_ifname_and_netns() {
        let ok = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_IFNAME", "net1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p;FOO=bar"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ];
        let inv = Invocation::from_env(env(&ok)).unwrap();
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.args.pod_name.as_deref(), Some("p"));
        assert_eq!(inv.path.len(), 2);

        for (k, v) in [
            ("CNI_COMMAND", "ATTACH"),
            ("CNI_CONTAINERID", "../etc"),
            ("CNI_CONTAINERID", ""),
            ("CNI_IFNAME", "../../x"),
            ("CNI_IFNAME", "averyveryverylongname"),
            ("CNI_IFNAME", ".."),
            ("CNI_NETNS", ""),
            ("CNI_NETNS", "relative/ns"),
            ("CNI_ARGS", "FOO=bar"),
            ("CNI_ARGS", "novalue"),
        ] {
            let mut bad = ok.to_vec();
            bad.retain(|(n, _)| *n != k);
            bad.push((k, v));
            let err = Invocation::from_env(env(&bad)).unwrap_err();
            assert_eq!(err.code, 4, "{k}={v:?}: {err}");
        }
    }

    #[test]
    fn del_works_without_netns_and_status_needs_nothing() {
        let del = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ];
        assert_eq!(Invocation::from_env(env(&del)).unwrap().netns, None);
        let status = [("CNI_COMMAND", "STATUS")];
        assert_eq!(
            Invocation::from_env(env(&status)).unwrap().command,
            Command::Status
        );
    }
}
