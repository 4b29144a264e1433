//! The device-plugin handoff for `vhost-user` and `memif`: which device directory an
//! attachment's socket goes into.
//!
//! heddle-manager's device plugin advertises devices (`vhost-user-3`, [`crate::devices`]); when
//! the kubelet allocates one to a pod, the plugin creates its host directory and the kubelet
//! bind-mounts it into the pod's containers. heddle-cni learns which device an attachment takes
//! from, in order:
//! 1. `runtimeConfig.deviceID`, then the config's `deviceID` (Multus fills both from the pod's
//!    devices when the NetworkAttachmentDefinition carries `k8s.v1.cni.cncf.io/resourceName`);
//! 2. with neither, when the config names a `resourceName`: the kubelet's PodResources API
//!    (`List`), asked which devices of that resource the pod (`K8S_POD_NAMESPACE`,
//!    `K8S_POD_NAME` from `CNI_ARGS`) holds; the first one of this kind that no other
//!    attachment's record names is taken ([`choose`]).
//!
//! Without either, the socket goes into the pod's own socket directory as before.
//!
//! A device named by another live attachment is refused: one socket path cannot serve two
//! ports. Another pod's record naming it is stale (the kubelet gave the device to this pod),
//! but its socket may still be bound by the switch, so the ADD waits for that attachment's
//! DEL (code 11) rather than steal the path.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use heddle_kubelet_api::podresources::{
    pod_resources_lister_client::PodResourcesListerClient, ListPodResourcesRequest,
    ListPodResourcesResponse,
};

use crate::config::NetConf;
use crate::devices::{self, DeviceKind};
use crate::error::{code, CniError};
use crate::invocation::Invocation;
use crate::key::AttachmentKey;
use crate::record::Record;

/// How long the PodResources call (connect and `List`) may take.
pub const POD_RESOURCES_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks which devices a pod holds (the kubelet's PodResources API; a double in tests).
pub trait PodDevices {
    /// Every device id of `resource` held by pod `namespace/name`, in the kubelet's order.
    fn pod_devices(
        &self,
        socket: &Path,
        namespace: &str,
        name: &str,
        resource: &str,
    ) -> Result<Vec<String>, CniError>;
}

/// The kubelet's PodResources v1 API over its Unix socket.
pub struct Kubelet;

impl PodDevices for Kubelet {
    fn pod_devices(
        &self,
        socket: &Path,
        namespace: &str,
        name: &str,
        resource: &str,
    ) -> Result<Vec<String>, CniError> {
        let unreachable = |e: String| {
            CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "cannot ask the kubelet's PodResources API at {} which {resource} devices pod {namespace}/{name} holds: set podResourcesSocket to the kubelet's pod-resources/kubelet.sock, or have Multus pass a deviceID (k8s.v1.cni.cncf.io/resourceName on the NetworkAttachmentDefinition)",
                    socket.display()
                ),
                e,
            )
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| unreachable(format!("starting a tokio runtime: {e}")))?;
        let reply = runtime.block_on(async {
            let call = async {
                let channel = heddle_kubelet_api::unix_channel(socket)
                    .await
                    .map_err(|e| format!("connecting: {e}"))?;
                PodResourcesListerClient::new(channel)
                    .list(ListPodResourcesRequest {})
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| format!("List: {s}"))
            };
            tokio::time::timeout(POD_RESOURCES_TIMEOUT, call)
                .await
                .map_err(|_| format!("no answer within {POD_RESOURCES_TIMEOUT:?}"))?
        });
        reply
            .map(|r| devices_in(&r, namespace, name, resource))
            .map_err(unreachable)
    }
}

/// The device ids of `resource` that pod `namespace/name` holds in a `List` answer, every
/// container's in order, each once.
pub fn devices_in(
    list: &ListPodResourcesResponse,
    namespace: &str,
    name: &str,
    resource: &str,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for pod in list
        .pod_resources
        .iter()
        .filter(|p| p.namespace == namespace && p.name == name)
    {
        for c in &pod.containers {
            for d in c.devices.iter().filter(|d| d.resource_name == resource) {
                for id in &d.device_ids {
                    if !out.contains(id) {
                        out.push(id.clone());
                    }
                }
            }
        }
    }
    out
}

/// The device the runtime named for a socket attachment, checked to be a device id of its
/// kind (code 7 otherwise): `runtimeConfig.deviceID`, then the config's `deviceID`.
pub fn requested(conf: &NetConf) -> Result<Option<&str>, CniError> {
    let Some(kind) = conf.kind.device_kind() else {
        return Ok(None);
    };
    let Some(id) = conf
        .runtime
        .device_id
        .as_deref()
        .or(conf.device_id.as_deref())
    else {
        return Ok(None);
    };
    if DeviceKind::of_device(id) != Some(kind) {
        return Err(CniError::config(
            format!(
                "deviceID {id:?} is not a {k} device (ids are {k}-<n>, e.g. {k}-0): the NetworkAttachmentDefinition's k8s.v1.cni.cncf.io/resourceName must name a {k} resource of heddle-manager's device plugin, such as heddle.dev/{k}",
                k = kind.as_str()
            ),
            format!("got {id:?} for a {} network", kind.as_str()),
        ));
    }
    Ok(Some(id))
}

/// Devices named by the records of attachments other than `key`, with their holder.
pub fn held(records: &[Record], key: &AttachmentKey) -> BTreeMap<String, AttachmentKey> {
    records
        .iter()
        .filter(|r| r.key() != *key)
        .filter_map(|r| Some((r.device_id.clone()?, r.key())))
        .collect()
}

/// The first of the pod's devices that is of `kind` and not held by another attachment.
pub fn choose(
    kind: DeviceKind,
    pod_devices: &[String],
    held: &BTreeMap<String, AttachmentKey>,
) -> Option<String> {
    pod_devices
        .iter()
        .find(|id| DeviceKind::of_device(id) == Some(kind) && !held.contains_key(*id))
        .cloned()
}

/// The error for device `id` held by `holder` when `key` wants it: code 7 when both are
/// attachments of one pod sandbox (two networks were given one device), 11 when the holder is
/// another sandbox's attachment whose DEL has not run yet.
pub fn held_error(id: &str, holder: &AttachmentKey, key: &AttachmentKey) -> CniError {
    let who = format!("{}/{}", holder.container_id, holder.ifname);
    if holder.container_id == key.container_id {
        CniError::config(
            format!(
                "device {id} is already used by this pod's interface {}: give each network its own device (one k8s.v1.cni.cncf.io/resourceName request per interface)",
                holder.ifname
            ),
            format!("held by {who}"),
        )
    } else {
        CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "device {id} still holds the socket of attachment {who}, whose DEL has not run: try again after it (or GC) removes that attachment"
            ),
            format!("held by {who}"),
        )
    }
}

/// Which device `key`'s socket goes into: the one the runtime named, else (with a
/// `resourceName`) the first free one of the pod's devices from the kubelet, else none.
/// Call under the node lock with every record of the node.
pub fn resolve(
    conf: &NetConf,
    inv: &Invocation,
    key: &AttachmentKey,
    records: &[Record],
    pods: &dyn PodDevices,
) -> Result<Option<String>, CniError> {
    let Some(kind) = conf.kind.device_kind() else {
        return Ok(None);
    };
    let held = held(records, key);
    if let Some(id) = requested(conf)? {
        if let Some(holder) = held.get(id) {
            return Err(held_error(id, holder, key));
        }
        return Ok(Some(id.to_owned()));
    }
    let Some(resource) = &conf.resource_name else {
        return Ok(None);
    };
    let (Some(namespace), Some(name)) = (&inv.args.pod_namespace, &inv.args.pod_name) else {
        return Err(CniError::env(
            format!(
                "resourceName {resource} without a deviceID needs K8S_POD_NAMESPACE and K8S_POD_NAME in CNI_ARGS, to ask the kubelet which devices the pod holds (Multus and the kubelet set them)"
            ),
            "CNI_ARGS lacks one of them",
        ));
    };
    let devices = pods.pod_devices(&conf.pod_resources_socket, namespace, name, resource)?;
    if let Some(id) = choose(kind, &devices, &held) {
        return Ok(Some(id));
    }
    let mine: Vec<&String> = devices
        .iter()
        .filter(|id| DeviceKind::of_device(id) == Some(kind))
        .collect();
    if mine.is_empty() {
        return Err(CniError::config(
            format!(
                "pod {namespace}/{name} holds no {} device of resource {resource}: request one in its containers' resources (limits: {resource}: 1), or fix resourceName",
                kind.as_str()
            ),
            format!("the kubelet lists {devices:?} for it"),
        ));
    }
    // Every device of the pod is held: by this sandbox's other interfaces (the pod asked
    // for too few), or by a stale attachment of an old sandbox (wait for its DEL).
    let holders: Vec<String> = mine
        .iter()
        .map(|id| format!("{id}: {}/{}", held[*id].container_id, held[*id].ifname))
        .collect();
    let stale = mine
        .iter()
        .find(|id| held[**id].container_id != key.container_id);
    match stale {
        Some(id) => Err(held_error(id, &held[*id], key)),
        None => Err(CniError::config(
            format!(
                "pod {namespace}/{name} has {} {resource} device(s) and its other interfaces use them all: request one more in its resources",
                mine.len()
            ),
            holders.join(", "),
        )),
    }
}

/// Checks that device `id`'s directory exists on the host (the device plugin's `Allocate`
/// creates it; code 7 otherwise).
pub fn check_dir(conf: &NetConf, id: &str, dir: &Path) -> Result<(), CniError> {
    if dir.is_dir() {
        return Ok(());
    }
    Err(CniError::config(
        format!(
            "device {id} has no directory {}: heddle-manager's device plugin creates it when the kubelet allocates the device, so check that deviceRoot ({}) is the device plugin's deviceRoot and that the pod requested this device",
            dir.display(),
            conf.device_root.display()
        ),
        format!("{} does not exist", devices::host_dir(&conf.device_root, id).display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attach::tests::conf;
    use heddle_kubelet_api::podresources::{ContainerDevices, ContainerResources, PodResources};

    fn key(c: &str, i: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: c.into(),
            ifname: i.into(),
        }
    }

    fn record(c: &str, i: &str, device: Option<&str>) -> Record {
        Record {
            container_id: c.into(),
            ifname: i.into(),
            device_id: device.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn requested_device_must_be_an_id_of_the_network_kind() {
        let c = conf(r#","kind":"vhost-user","runtimeConfig":{"deviceID":"vhost-user-3"}"#);
        assert_eq!(requested(&c).unwrap(), Some("vhost-user-3"));
        // Multus writes the config's deviceID; runtimeConfig wins when both are there.
        let c = conf(r#","kind":"memif","deviceID":"memif-1""#);
        assert_eq!(requested(&c).unwrap(), Some("memif-1"));
        let c =
            conf(r#","kind":"memif","deviceID":"memif-1","runtimeConfig":{"deviceID":"memif-2"}"#);
        assert_eq!(requested(&c).unwrap(), Some("memif-2"));
        assert_eq!(requested(&conf(r#","kind":"vhost-user""#)).unwrap(), None);
        for (kind, bad) in [
            ("vhost-user", "memif-0"),
            ("vhost-user", "0000:03:02.0"),
            ("vhost-user", "../vhost-user-1"),
            ("vhost-user", "vhost-user-1/.."),
            ("vhost-user", "/run/heddle/devices/vhost-user-1"),
            ("vhost-user", "vhost-user-1\\u0000"),
            ("vhost-user", "vhost-user-"),
            ("memif", "vhost-user-0"),
            ("memif", ""),
        ] {
            let c = conf(&format!(
                r#","kind":"{kind}","runtimeConfig":{{"deviceID":"{bad}"}}"#
            ));
            let e = requested(&c).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{kind} {bad}");
            assert!(e.msg.contains("resourceName must name a"), "{}", e.msg);
        }
        // A kernel network ignores a deviceID (Multus may inject one for any NAD).
        let c = conf(r#","kind":"kernel","deviceID":"memif-0""#);
        assert_eq!(requested(&c).unwrap(), None);
    }

    #[test]
    fn devices_in_lists_the_pods_devices_of_the_resource_in_order() {
        let dev = |r: &str, ids: &[&str]| ContainerDevices {
            resource_name: r.into(),
            device_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let pod = |ns: &str, name: &str, containers: Vec<Vec<ContainerDevices>>| PodResources {
            name: name.into(),
            namespace: ns.into(),
            containers: containers
                .into_iter()
                .map(|devices| ContainerResources {
                    name: "c".into(),
                    devices,
                    ..Default::default()
                })
                .collect(),
        };
        let list = ListPodResourcesResponse {
            pod_resources: vec![
                pod(
                    "other",
                    "pod",
                    vec![vec![dev("heddle.dev/vhost-user", &["vhost-user-9"])]],
                ),
                pod(
                    "test",
                    "pod",
                    vec![
                        vec![
                            dev("heddle.dev/vhost-user", &["vhost-user-4", "vhost-user-1"]),
                            dev("heddle.dev/memif", &["memif-0"]),
                        ],
                        vec![dev(
                            "heddle.dev/vhost-user",
                            &["vhost-user-7", "vhost-user-1"],
                        )],
                    ],
                ),
            ],
        };
        assert_eq!(
            devices_in(&list, "test", "pod", "heddle.dev/vhost-user"),
            ["vhost-user-4", "vhost-user-1", "vhost-user-7"]
        );
        assert_eq!(
            devices_in(&list, "test", "pod", "heddle.dev/memif"),
            ["memif-0"]
        );
        assert!(devices_in(&list, "test", "nopod", "heddle.dev/memif").is_empty());
    }

    #[test]
    fn choose_takes_the_first_device_of_the_kind_no_other_attachment_holds() {
        let records = [
            record("sandbox1", "net1", Some("vhost-user-4")),
            record("sandbox1", "net2", None),
            record("sandbox1", "net3", Some("vhost-user-1")),
        ];
        let pod: Vec<String> = ["memif-0", "vhost-user-4", "vhost-user-1", "vhost-user-7"]
            .map(String::from)
            .into();
        let h = held(&records, &key("sandbox1", "net4"));
        assert_eq!(
            choose(DeviceKind::VhostUser, &pod, &h).as_deref(),
            Some("vhost-user-7")
        );
        assert_eq!(
            choose(DeviceKind::Memif, &pod, &h).as_deref(),
            Some("memif-0")
        );
        // An attachment's own record (a repeated or interrupted ADD) does not hold its device.
        let h = held(&records, &key("sandbox1", "net1"));
        assert_eq!(
            choose(DeviceKind::VhostUser, &pod, &h).as_deref(),
            Some("vhost-user-4")
        );
        let h = held(&records, &key("sandbox1", "net4"));
        assert_eq!(choose(DeviceKind::VhostUser, &pod[..3], &h), None);
    }

    struct Listed(Vec<String>);

    impl PodDevices for Listed {
        fn pod_devices(
            &self,
            socket: &Path,
            namespace: &str,
            name: &str,
            resource: &str,
        ) -> Result<Vec<String>, CniError> {
            assert_eq!(socket, Path::new("/k/pr.sock"));
            assert_eq!(
                (namespace, name, resource),
                ("test", "pod", "heddle.dev/vhost-user")
            );
            Ok(self.0.clone())
        }
    }

    fn inv(container: &str, ifname: &str, args: &str) -> Invocation {
        let vars = [
            ("CNI_COMMAND", "ADD".to_owned()),
            ("CNI_CONTAINERID", container.to_owned()),
            ("CNI_IFNAME", ifname.to_owned()),
            ("CNI_NETNS", "/run/netns/x".to_owned()),
            ("CNI_ARGS", args.to_owned()),
        ];
        Invocation::from_env(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
            .unwrap()
    }

    #[test]
    fn resolve_prefers_the_runtime_then_the_kubelet_and_refuses_held_devices() {
        let args = "K8S_POD_NAMESPACE=test;K8S_POD_NAME=pod";
        let by_resource = conf(
            r#","kind":"vhost-user","resourceName":"heddle.dev/vhost-user","podResourcesSocket":"/k/pr.sock""#,
        );
        let kubelet = Listed(vec!["vhost-user-2".into(), "vhost-user-5".into()]);
        let mine = [record("s1", "net1", Some("vhost-user-2"))];
        let k = key("s1", "net2");
        assert_eq!(
            resolve(&by_resource, &inv("s1", "net2", args), &k, &mine, &kubelet).unwrap(),
            Some("vhost-user-5".into())
        );
        // All taken by this sandbox's interfaces: ask for more (7).
        let both = [
            record("s1", "net1", Some("vhost-user-2")),
            record("s1", "net3", Some("vhost-user-5")),
        ];
        let e = resolve(&by_resource, &inv("s1", "net2", args), &k, &both, &kubelet).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("request one more"), "{}", e.msg);
        // One held by an old sandbox whose DEL has not run: try again later (11).
        let stale = [
            record("s1", "net1", Some("vhost-user-2")),
            record("old", "net1", Some("vhost-user-5")),
        ];
        let e = resolve(&by_resource, &inv("s1", "net2", args), &k, &stale, &kubelet).unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN_LATER, "{e}");
        // The pod holds none of this resource.
        let e = resolve(
            &by_resource,
            &inv("s1", "net2", args),
            &k,
            &[],
            &Listed(vec![]),
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("holds no vhost-user device"), "{}", e.msg);
        // No pod name to ask about (code 4).
        let e = resolve(&by_resource, &inv("s1", "net2", ""), &k, &[], &kubelet).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        // A deviceID wins over the kubelet (which is not asked: Listed would fail the asserts
        // for another socket) and is refused when another attachment holds it.
        let named = conf(
            r#","kind":"vhost-user","resourceName":"heddle.dev/vhost-user","podResourcesSocket":"/other","deviceID":"vhost-user-8""#,
        );
        assert_eq!(
            resolve(&named, &inv("s1", "net2", args), &k, &mine, &kubelet).unwrap(),
            Some("vhost-user-8".into())
        );
        let e = resolve(
            &named,
            &inv("s1", "net2", args),
            &k,
            &[record("s1", "net1", Some("vhost-user-8"))],
            &kubelet,
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(
            e.msg.contains("already used by this pod's interface net1"),
            "{}",
            e.msg
        );
        // Neither: the pod's own socket directory, as before.
        let plain = conf(r#","kind":"vhost-user""#);
        assert_eq!(
            resolve(&plain, &inv("s1", "net2", args), &k, &mine, &kubelet).unwrap(),
            None
        );
    }
}
