//! The pod spec and NetworkAttachmentDefinitions of `docs/device-plugin.md` ("What a pod
//! sees"), checked: every NAD's config is one heddle-cni accepts, names the resource of its
//! `k8s.v1.cni.cncf.io/resourceName` annotation and declares the `deviceID` capability; the
//! pod's networks are those NADs, and it requests (and limits) one device per interface.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::controller::RESOURCE_NAME_ANNOTATION;

const DOC: &str = include_str!("../../../docs/device-plugin.md");

/// The documents of the doc's YAML block that holds the pod.
fn example() -> Vec<Value> {
    let block = DOC
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("kind: Pod"))
        .expect("docs/device-plugin.md has a yaml block with a Pod");
    serde_yaml::Deserializer::from_str(block)
        .map(|d| Value::deserialize(d).expect("each document is YAML"))
        .collect()
}

#[test]
fn the_documented_pod_and_nads_are_consistent_and_accepted_by_heddle_cni() {
    let docs = example();
    let pods: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Pod").collect();
    assert_eq!(pods.len(), 1);
    let pod = pods[0];
    let nads: BTreeMap<&str, &Value> = docs
        .iter()
        .filter(|d| d["kind"] == "NetworkAttachmentDefinition")
        .map(|d| (d["metadata"]["name"].as_str().unwrap(), d))
        .collect();
    let networks: Vec<&str> = pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"]
        .as_str()
        .unwrap()
        .split(',')
        .map(str::trim)
        .collect();
    assert_eq!(
        networks
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        nads.keys().copied().collect(),
        "the pod's networks are the documented NADs"
    );

    // Interfaces per resource, from the NADs the pod names.
    let mut wanted: BTreeMap<String, u64> = BTreeMap::new();
    let mut kinds = Vec::new();
    for name in &networks {
        let nad = nads[name];
        let resource = nad["metadata"]["annotations"][RESOURCE_NAME_ANNOTATION]
            .as_str()
            .unwrap_or_else(|| panic!("NAD {name} has no resourceName annotation"));
        let text = nad["spec"]["config"].as_str().unwrap();
        let conf = heddle_cni::config::NetConf::parse(text.as_bytes(), true)
            .unwrap_or_else(|e| panic!("heddle-cni refuses NAD {name}'s config: {e}"));
        assert_eq!(conf.name, *name, "NAD {name}: config name");
        assert_eq!(conf.resource_name.as_deref(), Some(resource), "NAD {name}");
        let raw: Value = serde_json::from_str(text).unwrap();
        assert_eq!(raw["capabilities"]["deviceID"], true, "NAD {name}");
        assert_eq!(raw["capabilities"]["CNIDeviceInfoFile"], true, "NAD {name}");
        kinds.push(conf.kind.name().to_owned());
        *wanted.entry(resource.to_owned()).or_default() += 1;
    }
    assert_eq!(
        kinds,
        ["vhost-user", "vhost-user", "sriov"],
        "two vhost-user and a VF"
    );

    let res = &pod["spec"]["containers"][0]["resources"];
    for (resource, n) in &wanted {
        for side in ["requests", "limits"] {
            assert_eq!(
                res[side][resource].as_u64(),
                Some(*n),
                "{side} of {resource}: one device per interface"
            );
        }
    }
}
