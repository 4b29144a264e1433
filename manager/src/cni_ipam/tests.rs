//! The plugin's decisions and both modes: the embedded store in a temporary directory, the
//! block allocator against the in-memory API server (`fake_api`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{json, Value};

use crate::fake_api::FakeApi;

use super::*;

const NETWORKS: &str = r#"
providers:
  physnet: {interface: uplink0, vlanPool: [{start: 100, end: 199}]}
networks:
  red: {kind: vhost-user, provider: physnet, ipv4: {cidr: 10.10.0.0/24, gateway: 10.10.0.1}, ipv6: {cidr: "fd00:10::/120"}}
  tiny: {kind: vhost-user, provider: physnet, ipv4: {cidr: 10.30.0.0/30, gateway: 10.30.0.1}}
"#;

fn inv(command: &str, container: &str, args: &str) -> Invocation {
    let env = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container),
        ("CNI_IFNAME", "net1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_ARGS", args),
    ];
    Invocation::from_env(|k| {
        env.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| (*v).to_owned())
    })
    .unwrap()
}

fn embedded(dir: &Path, network: &str, extra: Value) -> Vec<u8> {
    let networks = dir.join("networks.yaml");
    if !networks.exists() {
        std::fs::write(&networks, NETWORKS).unwrap();
    }
    let mut c = json!({
        "cniVersion": "1.1.0", "name": "red", "type": "heddle-cni",
        "ipam": {"type": "heddle-ipam", "network": network,
                 "store": dir.join("store"), "config": networks},
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    serde_json::to_vec(&c).unwrap()
}

fn add(stdin: &[u8], container: &str) -> Result<Value, CniError> {
    run(&inv("ADD", container, ""), stdin).map(Option::unwrap)
}

#[test]
fn mode_is_chosen_by_the_keys_and_mixed_keys_are_refused() {
    let parse = |ipam: Value| {
        Request::parse(&serde_json::to_vec(&json!({"cniVersion": "1.0.0", "ipam": ipam})).unwrap())
    };
    let r = parse(json!({"type": "heddle-ipam", "network": "red", "store": "/s"})).unwrap();
    assert_eq!(
        r.ipam.mode,
        Mode::Embedded {
            store: "/s".into(),
            config: DEFAULT_NETWORKS.into()
        }
    );
    let r =
        parse(json!({"type": "heddle-ipam", "network": "red", "namespace": "tenant-a"})).unwrap();
    assert_eq!(
        r.ipam.mode,
        Mode::Cluster {
            namespace: Some("tenant-a".into()),
            kubeconfig: None,
            system_namespace: DEFAULT_SYSTEM_NAMESPACE.into(),
            node: None,
        }
    );
    let r = parse(json!({"type": "heddle-ipam", "network": "red", "mode": "cluster"})).unwrap();
    assert!(matches!(
        r.ipam.mode,
        Mode::Cluster {
            namespace: None,
            ..
        }
    ));
    for bad in [
        json!({"type": "heddle-ipam", "network": "red"}),
        json!({"type": "heddle-ipam", "network": "red", "store": "/s", "namespace": "a"}),
        json!({"type": "heddle-ipam", "network": "red", "mode": "cluster", "store": "/s"}),
        json!({"type": "heddle-ipam", "store": "/s"}),
        json!({"type": "host-local", "network": "red", "store": "/s"}),
    ] {
        assert_eq!(
            parse(bad.clone()).unwrap_err().code,
            code::INVALID_CONFIG,
            "{bad}"
        );
    }
    let e = Request::parse(br#"{"cniVersion": "0.2.0", "ipam": {}}"#).unwrap_err();
    assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
    assert_eq!(
        Request::parse(b"{").unwrap_err().code,
        code::DECODING_FAILURE
    );
}

#[test]
fn version_lists_what_heddle_cni_speaks() {
    let v = run(&inv("VERSION", "c", ""), br#"{"cniVersion":"0.4.0"}"#)
        .unwrap()
        .unwrap();
    assert_eq!(v["cniVersion"], "0.4.0");
    assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
}

#[test]
fn add_is_idempotent_per_attachment_and_del_frees() {
    let dir = tempfile::tempdir().unwrap();
    let conf = embedded(
        dir.path(),
        "red",
        json!({"ipam": {"type": "heddle-ipam", "network": "red",
            "store": dir.path().join("store"), "config": dir.path().join("networks.yaml"),
            "routes": [{"dst": "10.99.0.0/16"}], "dns": {"nameservers": ["10.10.0.53"]}}}),
    );
    let a = add(&conf, "ctr-a").unwrap();
    assert_eq!(a["cniVersion"], "1.1.0");
    assert_eq!(
        a["ips"],
        json!([{"address": "10.10.0.2/24", "gateway": "10.10.0.1"}, {"address": "fd00:10::1/120"}])
    );
    assert_eq!(a["routes"], json!([{"dst": "10.99.0.0/16"}]));
    assert_eq!(a["dns"]["nameservers"][0], "10.10.0.53");
    assert_eq!(add(&conf, "ctr-a").unwrap(), a, "repeated ADD, same answer");
    let b = add(&conf, "ctr-b").unwrap();
    assert_eq!(b["ips"][0]["address"], "10.10.0.3/24");
    run(&inv("CHECK", "ctr-a", ""), &conf).unwrap();

    assert_eq!(run(&inv("DEL", "ctr-a", ""), &conf).unwrap(), None);
    run(&inv("DEL", "ctr-a", ""), &conf).expect("repeated DEL succeeds");
    let e = run(&inv("CHECK", "ctr-a", ""), &conf).unwrap_err();
    assert_eq!(e.code, code::UNKNOWN_CONTAINER);
    let cfg = crate::embedded::EmbeddedConfig::read(&dir.path().join("networks.yaml")).unwrap();
    let store = crate::embedded::EmbeddedStore::open(dir.path().join("store"), cfg).unwrap();
    assert_eq!(
        store.leases("red").unwrap().keys().collect::<Vec<_>>(),
        ["ctr-b/net1"]
    );
}

#[test]
fn static_requests_come_from_runtime_config_and_cni_args() {
    let dir = tempfile::tempdir().unwrap();
    let conf = embedded(
        dir.path(),
        "red",
        json!({"cniVersion": "0.4.0", "runtimeConfig": {"ips": ["10.10.0.50/24"]}}),
    );
    let r = add(&conf, "ctr-s").unwrap();
    assert_eq!(
        r["ips"],
        json!([{"address": "10.10.0.50/24", "gateway": "10.10.0.1", "version": "4"}]),
        "0.4.0 results carry the IP version"
    );
    let plain = embedded(dir.path(), "red", json!({}));
    let r = run(
        &inv("ADD", "ctr-t", "IgnoreUnknown=1;IP=10.10.0.60"),
        &plain,
    )
    .unwrap()
    .unwrap();
    assert_eq!(r["ips"][0]["address"], "10.10.0.60/24");
    let e = run(&inv("ADD", "ctr-u", "IP=10.10.0.60"), &plain).unwrap_err();
    assert_eq!(e.code, code::IPAM);
    assert!(e.msg.contains("10.10.0.60 is already in use"), "{}", e.msg);
    let e = run(&inv("ADD", "ctr-v", "IP=10.10.9.1"), &plain).unwrap_err();
    assert!(e.msg.starts_with("network red:"), "{}", e.msg);
}

#[test]
fn unknown_network_and_exhausted_pool_name_the_network_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let green = embedded(dir.path(), "green", json!({}));
    run(&inv("DEL", "c1", ""), &green).expect("DEL of a network no longer configured succeeds");
    let e = add(&green, "c1").unwrap_err();
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert!(
        e.msg.starts_with("network \"green\" is not in ")
            && e.msg
                .ends_with("add it under `networks` or fix ipam.network"),
        "{}",
        e.msg
    );
    assert_eq!(e.details, "networks there: red, tiny");

    let tiny = embedded(dir.path(), "tiny", json!({}));
    assert_eq!(
        add(&tiny, "c1").unwrap()["ips"][0]["address"],
        "10.30.0.2/30"
    );
    let e = add(&tiny, "c2").unwrap_err();
    assert_eq!(e.code, code::IPAM);
    assert_eq!(
        e.msg,
        "network tiny: subnet 10.30.0.0/30 has no free address left; widen its ranges or release addresses"
    );
    assert!(e.details.contains("widen"), "{}", e.details);
    let e = run(&inv("STATUS", "", ""), &tiny).unwrap_err();
    assert_eq!(e.code, code::NOT_AVAILABLE);
    run(
        &inv("STATUS", "", ""),
        &embedded(dir.path(), "red", json!({})),
    )
    .unwrap();
}

#[test]
fn gc_releases_leases_not_in_valid_attachments() {
    let dir = tempfile::tempdir().unwrap();
    let conf = embedded(dir.path(), "red", json!({}));
    for c in ["c1", "c2", "c3"] {
        add(&conf, c).unwrap();
    }
    let gc = embedded(
        dir.path(),
        "red",
        json!({"cni.dev/valid-attachments": [{"containerID": "c2", "ifname": "net1"}]}),
    );
    assert_eq!(run(&inv("GC", "", ""), &gc).unwrap(), None);
    run(&inv("CHECK", "c2", ""), &conf).unwrap();
    for c in ["c1", "c3"] {
        assert_eq!(
            run(&inv("CHECK", c, ""), &conf).unwrap_err().code,
            code::UNKNOWN_CONTAINER
        );
    }
}

#[test]
fn concurrent_adds_on_one_node_get_distinct_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let conf = embedded(dir.path(), "red", json!({}));
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let conf = conf.clone();
            std::thread::spawn(move || add(&conf, &format!("ctr-{i}")).unwrap())
        })
        .collect();
    let addrs: BTreeSet<String> = threads
        .into_iter()
        .map(|t| {
            t.join().unwrap()["ips"][0]["address"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(addrs.len(), 20);
}

// ---- cluster mode (against the in-memory API server) ----

const NETWORK_RESOURCE: &str = "heddle.dev/v1alpha1/networks";
const BLOCKS: &str = "heddle.dev/v1alpha1/networkaddressblocks";

fn cluster_conf(extra: Value) -> Request {
    let mut c = json!({"cniVersion": "1.0.0", "ipam": {"type": "heddle-ipam", "network": "red",
        "namespace": "tenant-a", "kubeconfig": "/etc/cni/net.d/heddle.kubeconfig", "node": "node-a"}});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    Request::parse(&serde_json::to_vec(&c).unwrap()).unwrap()
}

/// Network `tenant-a/red` on `fake`; `ready`: the manager has set up its address blocks.
fn network_object(fake: &FakeApi, cidr: &str, ready: bool) {
    let mut n = json!({"apiVersion": "heddle.dev/v1alpha1", "kind": "Network",
        "metadata": {"name": "red", "namespace": "tenant-a", "uid": "u1"},
        "spec": {"kind": "vhost-user", "provider": "physnet", "ipv4": {"cidr": cidr, "gateway": "10.10.0.1"}}});
    if ready {
        n["status"] =
            json!({"conditions": [], "addressBlocks": {"blocks": 0, "claimed": 0, "leases": 0}});
    }
    fake.insert(NETWORK_RESOURCE, n);
}

async fn call(
    fake: &FakeApi,
    command: &str,
    container: &str,
    req: Request,
) -> Result<Option<Value>, CniError> {
    cluster::run_with(fake.client(), &req, &inv(command, container, "")).await
}

/// Every lease in the fake server's blocks: owner -> addresses.
fn leases(fake: &FakeApi) -> BTreeMap<String, Vec<String>> {
    let mut all = BTreeMap::new();
    for b in fake.objects(BLOCKS) {
        for (o, a) in b["spec"]["leases"].as_object().unwrap() {
            let a: Vec<String> = serde_json::from_value(a.clone()).unwrap();
            all.entry(o.clone()).or_insert_with(Vec::new).extend(a);
        }
    }
    all
}

#[tokio::test]
async fn cluster_add_writes_the_lease_in_a_block_of_this_node_and_repeated_add_writes_nothing() {
    let fake = FakeApi::new();
    network_object(&fake, "10.10.0.0/24", true);
    let r = call(&fake, "ADD", "ctr-a", cluster_conf(json!({})))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(r["ips"][0]["gateway"], "10.10.0.1");
    let addr = r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .trim_end_matches("/24")
        .to_string();
    assert_eq!(
        leases(&fake),
        BTreeMap::from([("ctr-a/net1".to_string(), vec![addr])])
    );
    let blocks = fake.objects(BLOCKS);
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0]["spec"]["node"], "node-a");
    assert_eq!(
        blocks[0]["metadata"]["ownerReferences"][0]["uid"], "u1",
        "owned by the network"
    );
    let writes = fake.stats().writes;
    let again = call(&fake, "ADD", "ctr-a", cluster_conf(json!({})))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, r);
    assert_eq!(fake.stats().writes, writes);
    // CHECK passes for the holder, fails for an unknown attachment.
    call(&fake, "CHECK", "ctr-a", cluster_conf(json!({})))
        .await
        .unwrap();
    let e = call(&fake, "CHECK", "ctr-x", cluster_conf(json!({})))
        .await
        .unwrap_err();
    assert_eq!(e.code, code::UNKNOWN_CONTAINER);
}

#[tokio::test]
async fn cluster_del_frees_and_succeeds_when_the_network_is_gone() {
    let fake = FakeApi::new();
    network_object(&fake, "10.10.0.0/24", true);
    call(&fake, "ADD", "ctr-a", cluster_conf(json!({})))
        .await
        .unwrap();
    call(&fake, "ADD", "ctr-b", cluster_conf(json!({})))
        .await
        .unwrap();
    assert_eq!(
        call(&fake, "DEL", "ctr-a", cluster_conf(json!({})))
            .await
            .unwrap(),
        None
    );
    assert_eq!(leases(&fake).keys().collect::<Vec<_>>(), ["ctr-b/net1"]);
    assert_eq!(
        call(&fake, "DEL", "ctr-a", cluster_conf(json!({})))
            .await
            .unwrap(),
        None
    );

    let empty = FakeApi::new();
    assert_eq!(
        call(&empty, "DEL", "ctr-a", cluster_conf(json!({})))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn cluster_unknown_network_exhausted_pool_and_unready_network_are_reported() {
    let fake = FakeApi::new();
    let e = call(&fake, "ADD", "ctr-a", cluster_conf(json!({})))
        .await
        .unwrap_err();
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert_eq!(e.msg, "network tenant-a/red does not exist: create the Network (heddle.dev) or fix ipam.network / ipam.namespace");

    network_object(&fake, "10.10.0.0/30", true);
    call(&fake, "ADD", "ctr-b", cluster_conf(json!({})))
        .await
        .unwrap();
    let e = call(&fake, "ADD", "ctr-c", cluster_conf(json!({})))
        .await
        .unwrap_err();
    assert_eq!(e.code, code::IPAM);
    assert_eq!(e.msg, "network tenant-a/red: subnet 10.10.0.0/30 has no free address left; widen its ranges or release addresses");

    let unready = FakeApi::new();
    network_object(&unready, "10.10.0.0/24", false);
    let e = call(&unready, "ADD", "ctr-d", cluster_conf(json!({})))
        .await
        .unwrap_err();
    assert_eq!(e.code, code::TRY_AGAIN_LATER);
    assert!(e.msg.contains("no address blocks yet"), "{}", e.msg);
    assert!(unready.objects(BLOCKS).is_empty(), "nothing written");
}

#[tokio::test]
async fn cluster_static_request_and_gc_touches_nothing() {
    let fake = FakeApi::new();
    network_object(&fake, "10.10.0.0/24", true);
    let req = cluster_conf(json!({"runtimeConfig": {"ips": ["10.10.0.77/24"]}}));
    call(&fake, "ADD", "ctr-s", req).await.unwrap();
    assert_eq!(leases(&fake)["ctr-s/net1"], ["10.10.0.77"]);

    // GC never reaches the API: the blocks hold every node's leases.
    let req = cluster_conf(json!({"cni.dev/valid-attachments": []}));
    let r = cluster::run(&req, &inv("GC", "", "")).unwrap();
    assert_eq!(r, None);
}

/// A kubeconfig whose current context names `node` in its `heddle.dev/node` extension, as the
/// chart's install-cni writes it (`None`: no extension).
fn kubeconfig_naming(path: &std::path::Path, node: Option<&str>) {
    let ext = node.map_or(String::new(), |n| {
        format!(
            "\n    extensions:\n    - name: heddle.dev/node\n      extension: {{nodeName: {n}}}"
        )
    });
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: https://10.96.0.1:443}}\nusers:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: heddle-ipam\n  context:\n    cluster: c\n    user: u{ext}\ncurrent-context: heddle-ipam\n"
        ),
    )
    .unwrap();
}

#[test]
fn cluster_node_name_comes_from_config_env_or_the_kubeconfig_never_the_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("heddle.kubeconfig");
    let k = Some(kubeconfig.as_path());
    kubeconfig_naming(&kubeconfig, None);
    assert_eq!(
        cluster::node_name(Some("node-a"), Some("node-b"), k).unwrap(),
        "node-a"
    );
    assert_eq!(
        cluster::node_name(None, Some("node-b"), k).unwrap(),
        "node-b"
    );
    assert_eq!(
        cluster::node_name(Some(""), Some(""), k).unwrap_err().code,
        code::INVALID_CONFIG
    );
    // Nothing configured: the error names every way to give it, the kubeconfig included.
    let e = cluster::node_name(None, None, k).unwrap_err();
    assert_eq!(e.code, code::INVALID_CONFIG);
    for part in [
        "ipam.node",
        "NODE_NAME",
        &kubeconfig.display().to_string(),
        cluster::NODE_EXTENSION,
        "spec.nodeName",
    ] {
        assert!(e.msg.contains(part), "{part} missing from: {}", e.msg);
    }
    let e = cluster::node_name(None, None, None).unwrap_err();
    assert!(e.msg.contains("ipam.kubeconfig"), "{}", e.msg);
    // What install-cni.sh writes.
    kubeconfig_naming(&kubeconfig, Some("worker-7.example"));
    assert_eq!(
        cluster::node_name(None, None, k).unwrap(),
        "worker-7.example"
    );
    assert_eq!(
        cluster::node_name(None, Some("node-b"), k).unwrap(),
        "node-b"
    );
    // Not a node name: refused with the source named.
    kubeconfig_naming(&kubeconfig, Some("Worker_7"));
    let e = cluster::node_name(None, None, k).unwrap_err();
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert!(
        e.msg.contains(&kubeconfig.display().to_string()) && e.msg.contains("\"Worker_7\""),
        "{}",
        e.msg
    );
}

#[tokio::test]
async fn cluster_add_without_a_node_name_fails_clearly_and_writes_nothing() {
    let fake = FakeApi::new();
    network_object(&fake, "10.10.0.0/24", true);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("heddle.kubeconfig");
    kubeconfig_naming(&kubeconfig, None);
    let c = json!({"cniVersion": "1.0.0", "ipam": {"type": "heddle-ipam", "network": "red",
        "namespace": "tenant-a", "kubeconfig": kubeconfig}});
    let req = Request::parse(&serde_json::to_vec(&c).unwrap()).unwrap();
    let run = |command: &'static str, container: &'static str| {
        let (fake, req) = (fake.clone(), req.clone());
        async move { cluster::run_on(fake.client(), &req, &inv(command, container, ""), None).await }
    };
    let e = run("ADD", "ctr-a").await.unwrap_err();
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert!(
        e.msg.contains("cannot tell which Kubernetes node"),
        "{}",
        e.msg
    );
    assert!(fake.objects(BLOCKS).is_empty(), "nothing written");
    assert_eq!(
        run("STATUS", "").await.unwrap_err().code,
        code::NOT_AVAILABLE
    );
    // The kubeconfig the init container writes names the node the block is claimed for.
    kubeconfig_naming(&kubeconfig, Some("node-f"));
    run("ADD", "ctr-a").await.unwrap();
    assert_eq!(fake.objects(BLOCKS)[0]["spec"]["node"], "node-f");
}
