//! The chart's CRDs are exactly what `heddle-manager crdgen` prints.

use std::process::Command;

const CHART_CRDS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/helm/heddle/crds/heddle.dev.yaml"
);

#[test]
fn chart_crds_equal_crdgen_output() {
    let chart = std::fs::read_to_string(CHART_CRDS).expect("chart CRD file exists");
    let generated = heddle_manager::crd::crds_yaml();
    assert!(
        chart == generated,
        "{CHART_CRDS} is stale: run `cargo run -p heddle-manager -- crdgen > deploy/helm/heddle/crds/heddle.dev.yaml`"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_heddle-manager"))
        .arg("crdgen")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        generated,
        "the binary prints the library's CRDs"
    );
}

#[test]
fn crds_name_every_kind_with_the_right_scope() {
    let yaml = heddle_manager::crd::crds_yaml();
    let docs: Vec<serde_yaml::Value> = yaml
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect();
    let got: Vec<(String, String)> = docs
        .iter()
        .map(|d| {
            (
                d["metadata"]["name"].as_str().unwrap().to_string(),
                d["spec"]["scope"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("providernetworks.heddle.dev", "Cluster"),
        ("networks.heddle.dev", "Namespaced"),
        ("clusternetworks.heddle.dev", "Cluster"),
        ("networkallocations.heddle.dev", "Namespaced"),
        ("networkaddressblocks.heddle.dev", "Namespaced"),
    ];
    assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));
    for d in &docs {
        let v = &d["spec"]["versions"][0];
        assert_eq!(v["name"], "v1alpha1");
        let has_status = v["subresources"]["status"].is_mapping();
        assert_eq!(
            has_status,
            d["metadata"]["name"] != "networkallocations.heddle.dev"
                && d["metadata"]["name"] != "networkaddressblocks.heddle.dev"
        );
    }
    // The VLAN is bounded in the schema and may not change once set.
    assert!(yaml.contains("maximum: 4094.0"));
    assert!(yaml.contains("spec.vlan cannot change once set"));
}

/// Resolves a printer column's `jsonPath` (`.a.b.c`) in `obj`.
fn at<'a>(obj: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    path.trim_start_matches('.')
        .split('.')
        .fold(obj, |v, k| &v[k])
}

#[test]
fn kubectl_get_columns_show_fields_the_manager_writes() {
    use heddle_manager::crd::*;
    let status = NetworkStatus {
        vlan: Some(100),
        observed_generation: Some(1),
        conditions: vec![],
        ipv4: Some(AddressCounts {
            total: 254,
            allocated: 4,
            free: 250,
        }),
        ipv6: Some(AddressCounts {
            total: 1 << 24,
            allocated: 4,
            free: (1 << 24) - 4,
        }),
        address_blocks: Some(AddressBlockCounts {
            blocks: 3,
            claimed: 2,
            leases: 4,
        }),
    };
    let spec: NetworkSpec = serde_json::from_value(serde_json::json!({
        "kind": "vhost-user", "provider": "uplink0",
        "ipv4": {"cidr": "10.3.0.0/24"}, "ipv6": {"cidr": "fd00:3::/64"}
    }))
    .unwrap();
    let mut n = Network::new("n3", spec.clone());
    n.status = Some(status.clone());
    let mut cn = ClusterNetwork::new("c3", ClusterNetworkSpec { network: spec });
    cn.status = Some(status);
    let block = NetworkAddressBlock::new(
        "network.n3.10-3-0-0-28",
        NetworkAddressBlockSpec {
            network: "ns1/n3".into(),
            cidr: "10.3.0.0/28".into(),
            node: Some("node-a".into()),
            leases: [("p/eth1".to_string(), vec!["10.3.0.1".to_string()])].into(),
            borrowed: Default::default(),
            used: 1,
        },
    );
    let objects = [
        ("networks.heddle.dev", serde_json::to_value(&n).unwrap()),
        (
            "clusternetworks.heddle.dev",
            serde_json::to_value(&cn).unwrap(),
        ),
        (
            "networkaddressblocks.heddle.dev",
            serde_json::to_value(&block).unwrap(),
        ),
    ];
    let yaml = heddle_manager::crd::crds_yaml();
    for d in yaml.split("---\n").filter(|d| !d.trim().is_empty()) {
        let d: serde_json::Value = serde_yaml::from_str(d).unwrap();
        let Some((_, obj)) = objects
            .iter()
            .find(|(name, _)| d["metadata"]["name"] == *name)
        else {
            continue;
        };
        let columns: Vec<(String, String)> = d["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["jsonPath"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for (name, path) in &columns {
            assert!(
                !at(obj, path).is_null(),
                "{}: column {name} ({path}) shows nothing",
                d["metadata"]["name"]
            );
        }
        if d["metadata"]["name"] != "networkaddressblocks.heddle.dev" {
            let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
            for want in ["Blocks", "Claimed", "Leases", "Free IPv4", "Free IPv6"] {
                assert!(
                    names.contains(&want),
                    "{}: no {want} column",
                    d["metadata"]["name"]
                );
            }
        }
    }
}
