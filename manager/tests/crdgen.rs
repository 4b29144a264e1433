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
