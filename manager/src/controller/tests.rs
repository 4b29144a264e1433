//! The reconcilers and the cluster allocator against recorded API scenarios: every request
//! they must make, in order, answered by a `tower_test` mock. No cluster needed.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tower_test::mock;

use super::*;
use crate::crd::{NetworkKind, ProviderNetworkSpec, Subnet, VlanRange};

type Handle = mock::Handle<Request<Body>, Response<Body>>;

fn mock_client() -> (Client, Handle) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, "default"), handle)
}

/// Expect the next request to be `method path`, answer `status` with `reply`; return the
/// request's query string and JSON body.
async fn expect(
    handle: &mut Handle,
    method: Method,
    path: &str,
    status: u16,
    reply: Value,
) -> (String, Value) {
    let (req, send) = handle
        .next_request()
        .await
        .unwrap_or_else(|| panic!("expected {method} {path}, got nothing"));
    assert_eq!(
        (req.method(), req.uri().path()),
        (&method, path),
        "request out of order"
    );
    let query = req.uri().query().unwrap_or_default().to_string();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    let reply = if reply == Value::Null {
        body.clone()
    } else {
        reply
    };
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    (query, body)
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": reason})
}

fn provider(rv: &str, assignments: Vec<VlanAssignment>) -> Value {
    let mut p = ProviderNetwork::new(
        "uplink0",
        ProviderNetworkSpec {
            interface: Some("ens1f0".into()),
            vf_pool: None,
            node_selector: BTreeMap::new(),
            vlan_pool: vec![VlanRange {
                start: 100,
                end: 199,
            }],
            mtu: Some(9000),
        },
    );
    p.metadata.resource_version = Some(rv.into());
    p.metadata.uid = Some("uid-provider".into());
    p.status = Some(crate::crd::ProviderNetworkStatus {
        assignments,
        conditions: vec![],
    });
    serde_json::to_value(p).unwrap()
}

fn claim(network: &str, uid: &str, vlan: u16, subnet: &str) -> VlanAssignment {
    VlanAssignment {
        network: network.into(),
        uid: uid.into(),
        vlan,
        subnets: vec![subnet.into()],
    }
}

fn spec(vlan: Option<u16>, cidr: &str) -> NetworkSpec {
    NetworkSpec {
        kind: NetworkKind::VhostUser,
        provider: "uplink0".into(),
        vlan,
        ipv4: Some(Subnet {
            cidr: cidr.into(),
            ranges: vec![],
            gateway: None,
            exclude: vec![],
        }),
        ipv6: None,
        allocation: AllocationMode::Dynamic,
        vhost_user: None,
        memif: None,
        resource_name: None,
    }
}

fn network(spec: NetworkSpec, status_vlan: Option<u16>) -> Network {
    let mut n = Network::new("n3", spec);
    n.metadata.namespace = Some("ns1".into());
    n.metadata.uid = Some("uid-n3".into());
    n.metadata.generation = Some(2);
    n.status = status_vlan.map(|v| NetworkStatus {
        vlan: Some(v),
        ..Default::default()
    });
    n
}

const PROVIDER: &str = "/apis/heddle.dev/v1alpha1/providernetworks/uplink0";
const PROVIDER_STATUS: &str = "/apis/heddle.dev/v1alpha1/providernetworks/uplink0/status";
const ALLOC: &str = "/apis/heddle.dev/v1alpha1/namespaces/ns1/networkallocations/network.n3";
const BLOCKS: &str = "/apis/heddle.dev/v1alpha1/namespaces/ns1/networkaddressblocks";

fn empty_list() -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []})
}
const NAD: &str = "/apis/k8s.cni.cncf.io/v1/namespaces/ns1/network-attachment-definitions/n3";
const NET_STATUS: &str = "/apis/heddle.dev/v1alpha1/namespaces/ns1/networks/n3/status";

fn ctx(client: Client) -> Arc<Context> {
    Arc::new(Context {
        client,
        system_namespace: "heddle-system".into(),
    })
}

#[tokio::test]
async fn new_network_gets_a_vlan_an_allocation_object_a_nad_and_status() {
    let (client, mut h) = mock_client();
    let net = network(spec(None, "10.3.0.0/24"), None);
    let reconcile = tokio::spawn(reconcile_network(Arc::new(net.clone()), ctx(client)));

    expect(
        &mut h,
        Method::GET,
        PROVIDER,
        200,
        provider("7", vec![claim("ns1/n1", "u1", 100, "10.1.0.0/24")]),
    )
    .await;
    let (_, put) = expect(&mut h, Method::PUT, PROVIDER_STATUS, 200, Value::Null).await;
    assert_eq!(
        put["metadata"]["resourceVersion"], "7",
        "the claim must carry the precondition"
    );
    assert_eq!(
        put["status"]["assignments"],
        json!([
            {"network": "ns1/n1", "uid": "u1", "vlan": 100, "subnets": ["10.1.0.0/24"]},
            {"network": "ns1/n3", "uid": "uid-n3", "vlan": 101, "subnets": ["10.3.0.0/24"]},
        ])
    );
    // No single allocation object to migrate; the network's blocks are counted.
    expect(&mut h, Method::GET, ALLOC, 404, status(404, "NotFound")).await;
    let (query, _) = expect(&mut h, Method::GET, BLOCKS, 200, empty_list()).await;
    assert!(
        query.contains("labelSelector=heddle.dev%2Fnetwork%3Dnetwork.n3"),
        "{query}"
    );
    let (query, nad) = expect(&mut h, Method::PATCH, NAD, 200, Value::Null).await;
    assert!(
        query.contains("fieldManager=heddle-manager") && query.contains("force=true"),
        "{query}"
    );
    assert_eq!(nad["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(
        nad["metadata"]["annotations"],
        json!({"k8s.v1.cni.cncf.io/resourceName": "heddle.dev/vhost-user"})
    );
    let config: Value = serde_json::from_str(nad["spec"]["config"].as_str().unwrap()).unwrap();
    assert_eq!(
        config,
        // The provider network's mtu (9000) is the pods' and their ports'.
        json!({"cniVersion": "1.1.0", "type": "heddle-cni", "name": "n3", "network": "ns1/n3", "kind": "vhost-user", "vlan": 101,
               "mtu": 9000, "resourceName": "heddle.dev/vhost-user",
               "capabilities": {"deviceID": true, "CNIDeviceInfoFile": true}})
    );
    let reply = serde_json::to_value(&net).unwrap();
    let (_, st) = expect(&mut h, Method::PATCH, NET_STATUS, 200, reply).await;
    assert_eq!(st["status"]["vlan"], 101);
    assert_eq!(st["status"]["observedGeneration"], 2);
    assert_eq!(st["status"]["conditions"][0]["status"], "True");
    assert_eq!(
        st["status"]["ipv4"],
        json!({"total": 254, "allocated": 0, "free": 254})
    );
    assert_eq!(
        st["status"]["addressBlocks"],
        json!({"blocks": 0, "claimed": 0, "leases": 0})
    );

    let action = reconcile.await.unwrap().unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert!(
        h.next_request().await.is_none(),
        "no request after the status"
    );
}

#[tokio::test]
async fn a_conflicting_claim_is_retried_from_a_fresh_read() {
    let (client, mut h) = mock_client();
    let net = network(spec(None, "10.3.0.0/24"), None);
    let reconcile = tokio::spawn(reconcile_network(Arc::new(net.clone()), ctx(client)));

    expect(
        &mut h,
        Method::GET,
        PROVIDER,
        200,
        provider("7", vec![claim("ns1/n1", "u1", 100, "10.1.0.0/24")]),
    )
    .await;
    let (_, put) = expect(
        &mut h,
        Method::PUT,
        PROVIDER_STATUS,
        409,
        status(409, "Conflict"),
    )
    .await;
    assert_eq!(put["status"]["assignments"][1]["vlan"], 101);
    // Meanwhile another network took 101.
    expect(
        &mut h,
        Method::GET,
        PROVIDER,
        200,
        provider(
            "8",
            vec![
                claim("ns1/n1", "u1", 100, "10.1.0.0/24"),
                claim("ns2/x", "ux", 101, "10.2.0.0/24"),
            ],
        ),
    )
    .await;
    let (_, put) = expect(&mut h, Method::PUT, PROVIDER_STATUS, 200, Value::Null).await;
    assert_eq!(put["metadata"]["resourceVersion"], "8");
    assert_eq!(
        put["status"]["assignments"][1],
        json!({"network": "ns1/n3", "uid": "uid-n3", "vlan": 102, "subnets": ["10.3.0.0/24"]})
    );
    let alloc = json!({"apiVersion": "heddle.dev/v1alpha1", "kind": "NetworkAllocation",
        "metadata": {"name": "network.n3", "namespace": "ns1", "resourceVersion": "3"},
        "spec": {"network": "ns1/n3", "leases": {"c1/eth1": ["10.3.0.7"]}}});
    // The single allocation object is migrated: its lease goes into its block (created
    // without affinity, owned by the network), then the object is deleted with a precondition.
    expect(&mut h, Method::GET, ALLOC, 200, alloc).await;
    const BLOCK: &str =
        "/apis/heddle.dev/v1alpha1/namespaces/ns1/networkaddressblocks/network.n3.10-3-0-0-28";
    expect(&mut h, Method::GET, BLOCK, 404, status(404, "NotFound")).await;
    let (_, block) = expect(&mut h, Method::POST, BLOCKS, 201, Value::Null).await;
    assert_eq!(
        block["spec"],
        json!({"network": "ns1/n3", "cidr": "10.3.0.0/28", "leases": {"c1/eth1": ["10.3.0.7"]}, "used": 1})
    );
    assert_eq!(block["metadata"]["ownerReferences"][0]["uid"], "uid-n3");
    assert_eq!(
        block["metadata"]["labels"],
        json!({"heddle.dev/network": "network.n3"})
    );
    let (_, del) = expect(
        &mut h,
        Method::DELETE,
        ALLOC,
        200,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
    )
    .await;
    assert_eq!(del["preconditions"]["resourceVersion"], "3");
    let mut stored = block.clone();
    stored["metadata"]["resourceVersion"] = json!("4");
    expect(
        &mut h,
        Method::GET,
        BLOCKS,
        200,
        json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": [stored]}),
    )
    .await;
    expect(&mut h, Method::PATCH, NAD, 200, Value::Null).await;
    let (_, st) = expect(
        &mut h,
        Method::PATCH,
        NET_STATUS,
        200,
        serde_json::to_value(&net).unwrap(),
    )
    .await;
    assert_eq!(st["status"]["vlan"], 102);
    assert_eq!(
        st["status"]["ipv4"],
        json!({"total": 254, "allocated": 1, "free": 253})
    );
    assert_eq!(
        st["status"]["addressBlocks"],
        json!({"blocks": 1, "claimed": 0, "leases": 1})
    );
    reconcile.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_existing_claim_is_kept_without_writing_the_provider() {
    let (client, mut h) = mock_client();
    let mut s = spec(None, "10.3.0.0/24");
    s.allocation = AllocationMode::None;
    let net = network(s, Some(150));
    let reconcile = tokio::spawn(reconcile_network(Arc::new(net.clone()), ctx(client)));
    expect(
        &mut h,
        Method::GET,
        PROVIDER,
        200,
        provider("7", vec![claim("ns1/n3", "uid-n3", 150, "10.3.0.0/24")]),
    )
    .await;
    // No PUT (the claim is unchanged), no allocation object (allocation: none).
    let (_, nad) = expect(&mut h, Method::PATCH, NAD, 200, Value::Null).await;
    assert!(nad["spec"]["config"]
        .as_str()
        .unwrap()
        .contains("\"vlan\":150"));
    let (_, st) = expect(
        &mut h,
        Method::PATCH,
        NET_STATUS,
        200,
        serde_json::to_value(&net).unwrap(),
    )
    .await;
    assert_eq!(st["status"]["vlan"], 150);
    reconcile.await.unwrap().unwrap();
}

#[tokio::test]
async fn overlapping_subnet_is_reported_and_nothing_is_claimed() {
    let (client, mut h) = mock_client();
    let net = network(spec(None, "10.1.0.128/25"), None);
    let reconcile = tokio::spawn(reconcile_network(Arc::new(net.clone()), ctx(client)));
    expect(
        &mut h,
        Method::GET,
        PROVIDER,
        200,
        provider("7", vec![claim("ns1/n1", "u1", 100, "10.1.0.0/24")]),
    )
    .await;
    let (_, st) = expect(
        &mut h,
        Method::PATCH,
        NET_STATUS,
        200,
        serde_json::to_value(&net).unwrap(),
    )
    .await;
    let cond = &st["status"]["conditions"][0];
    assert_eq!(
        (cond["status"].as_str(), cond["reason"].as_str()),
        (Some("False"), Some("Invalid"))
    );
    assert_eq!(
        cond["message"],
        "spec.ipv4.cidr: 10.1.0.128/25 overlaps 10.1.0.0/24 of network ns1/n1 on provider network uplink0; use a disjoint subnet"
    );
    assert_eq!(reconcile.await.unwrap().unwrap(), Action::await_change());
    assert!(h.next_request().await.is_none());
}

#[tokio::test]
async fn changing_an_assigned_vlan_is_refused() {
    let (client, mut h) = mock_client();
    let net = network(spec(Some(120), "10.3.0.0/24"), Some(150));
    let reconcile = tokio::spawn(reconcile_network(Arc::new(net.clone()), ctx(client)));
    expect(
        &mut h,
        Method::GET,
        PROVIDER,
        200,
        provider("7", vec![claim("ns1/n3", "uid-n3", 150, "10.3.0.0/24")]),
    )
    .await;
    let (_, st) = expect(
        &mut h,
        Method::PATCH,
        NET_STATUS,
        200,
        serde_json::to_value(&net).unwrap(),
    )
    .await;
    assert_eq!(st["status"]["vlan"], 150, "the VLAN in use stays in status");
    assert!(st["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap()
        .starts_with("spec.vlan: the network already uses VLAN 150 and cannot move to 120"));
    reconcile.await.unwrap().unwrap();
}

#[tokio::test]
async fn missing_provider_is_reported() {
    let (client, mut h) = mock_client();
    let net = network(spec(None, "10.3.0.0/24"), None);
    let reconcile = tokio::spawn(reconcile_network(Arc::new(net.clone()), ctx(client)));
    expect(&mut h, Method::GET, PROVIDER, 404, status(404, "NotFound")).await;
    let (_, st) = expect(
        &mut h,
        Method::PATCH,
        NET_STATUS,
        200,
        serde_json::to_value(&net).unwrap(),
    )
    .await;
    assert_eq!(st["status"]["conditions"][0]["reason"], "ProviderNotFound");
    assert_eq!(
        reconcile.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(60))
    );
}

#[tokio::test]
async fn cluster_network_nad_goes_to_the_system_namespace() {
    let (client, mut h) = mock_client();
    let mut cn = ClusterNetwork::new(
        "core",
        crate::crd::ClusterNetworkSpec {
            network: spec(Some(130), "10.9.0.0/24"),
        },
    );
    cn.metadata.uid = Some("uid-core".into());
    let reconcile = tokio::spawn(reconcile_cluster_network(Arc::new(cn.clone()), ctx(client)));
    expect(&mut h, Method::GET, PROVIDER, 200, provider("7", vec![])).await;
    let (_, put) = expect(&mut h, Method::PUT, PROVIDER_STATUS, 200, Value::Null).await;
    assert_eq!(put["status"]["assignments"][0]["network"], "core");
    assert_eq!(put["status"]["assignments"][0]["vlan"], 130);
    expect(
        &mut h,
        Method::GET,
        "/apis/heddle.dev/v1alpha1/namespaces/heddle-system/networkallocations/clusternetwork.core",
        404,
        status(404, "NotFound"),
    )
    .await;
    expect(
        &mut h,
        Method::GET,
        "/apis/heddle.dev/v1alpha1/namespaces/heddle-system/networkaddressblocks",
        200,
        empty_list(),
    )
    .await;
    let (_, nad) = expect(
        &mut h,
        Method::PATCH,
        "/apis/k8s.cni.cncf.io/v1/namespaces/heddle-system/network-attachment-definitions/core",
        200,
        Value::Null,
    )
    .await;
    assert_eq!(
        nad["metadata"]["ownerReferences"][0]["kind"],
        "ClusterNetwork"
    );
    let (_, st) = expect(
        &mut h,
        Method::PATCH,
        "/apis/heddle.dev/v1alpha1/clusternetworks/core/status",
        200,
        serde_json::to_value(&cn).unwrap(),
    )
    .await;
    assert_eq!(st["kind"], "ClusterNetwork");
    assert_eq!(st["status"]["vlan"], 130);
    reconcile.await.unwrap().unwrap();
}

#[tokio::test]
async fn provider_drops_claims_of_deleted_and_recreated_networks() {
    let (client, mut h) = mock_client();
    let p: ProviderNetwork = serde_json::from_value(provider("7", vec![])).unwrap();
    let reconcile = tokio::spawn(reconcile_provider(Arc::new(p), ctx(client)));
    expect(
        &mut h,
        Method::GET,
        PROVIDER,
        200,
        provider(
            "7",
            vec![
                claim("ns1/n3", "uid-n3", 101, "10.3.0.0/24"),
                claim("ns1/gone", "uid-gone", 102, "10.4.0.0/24"),
                claim("ns1/again", "uid-old", 103, "10.5.0.0/24"),
                claim("core", "uid-core", 104, "10.9.0.0/24"),
            ],
        ),
    )
    .await;
    let mut again = network(spec(None, "10.5.0.0/24"), None);
    again.metadata.name = Some("again".into());
    again.metadata.uid = Some("uid-new".into());
    let list = json!({"apiVersion": "heddle.dev/v1alpha1", "kind": "NetworkList", "metadata": {"resourceVersion": "9"},
        "items": [serde_json::to_value(network(spec(None, "10.3.0.0/24"), None)).unwrap(), serde_json::to_value(again).unwrap()]});
    expect(
        &mut h,
        Method::GET,
        "/apis/heddle.dev/v1alpha1/networks",
        200,
        list,
    )
    .await;
    let mut core = ClusterNetwork::new(
        "core",
        crate::crd::ClusterNetworkSpec {
            network: spec(None, "10.9.0.0/24"),
        },
    );
    core.metadata.uid = Some("uid-core".into());
    let clist = json!({"apiVersion": "heddle.dev/v1alpha1", "kind": "ClusterNetworkList", "metadata": {"resourceVersion": "9"},
        "items": [serde_json::to_value(core).unwrap()]});
    expect(
        &mut h,
        Method::GET,
        "/apis/heddle.dev/v1alpha1/clusternetworks",
        200,
        clist,
    )
    .await;
    let (_, put) = expect(&mut h, Method::PUT, PROVIDER_STATUS, 200, Value::Null).await;
    assert_eq!(put["metadata"]["resourceVersion"], "7");
    let kept: Vec<&str> = put["status"]["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["network"].as_str().unwrap())
        .collect();
    assert_eq!(kept, vec!["ns1/n3", "core"]);
    reconcile.await.unwrap().unwrap();
}

fn alloc_object(rv: &str, leases: Value) -> Value {
    json!({"apiVersion": "heddle.dev/v1alpha1", "kind": "NetworkAllocation",
        "metadata": {"name": "network.n3", "namespace": "ns1", "resourceVersion": rv},
        "spec": {"network": "ns1/n3", "leases": leases}})
}

#[tokio::test]
async fn cluster_allocation_retries_on_conflict_and_never_duplicates() {
    let (client, mut h) = mock_client();
    let api: Api<NetworkAllocation> = Api::namespaced(client, "ns1");
    let s = spec(None, "10.3.0.0/29");
    let task =
        tokio::spawn(
            async move { ipam::allocate(&api, "network.n3", &s, "pod-a/eth1", &[]).await },
        );
    expect(
        &mut h,
        Method::GET,
        ALLOC,
        200,
        alloc_object("1", json!({})),
    )
    .await;
    let (_, put) = expect(&mut h, Method::PUT, ALLOC, 409, status(409, "Conflict")).await;
    assert_eq!(put["metadata"]["resourceVersion"], "1");
    assert_eq!(put["spec"]["leases"], json!({"pod-a/eth1": ["10.3.0.1"]}));
    // Another node allocated 10.3.0.1 in between.
    expect(
        &mut h,
        Method::GET,
        ALLOC,
        200,
        alloc_object("2", json!({"pod-b/eth1": ["10.3.0.1"]})),
    )
    .await;
    let (_, put) = expect(&mut h, Method::PUT, ALLOC, 200, Value::Null).await;
    assert_eq!(put["metadata"]["resourceVersion"], "2");
    assert_eq!(
        put["spec"]["leases"],
        json!({"pod-a/eth1": ["10.3.0.2"], "pod-b/eth1": ["10.3.0.1"]})
    );
    let got = task.await.unwrap().unwrap();
    assert_eq!(got, vec!["10.3.0.2".parse::<std::net::IpAddr>().unwrap()]);
}

#[tokio::test]
async fn cluster_release_and_repeated_allocation_write_only_when_needed() {
    let (client, mut h) = mock_client();
    let api: Api<NetworkAllocation> = Api::namespaced(client, "ns1");
    let s = spec(None, "10.3.0.0/29");
    let (api2, s2) = (api.clone(), s.clone());
    let task = tokio::spawn(async move {
        let again = ipam::allocate(&api2, "network.n3", &s2, "pod-b/eth1", &[])
            .await
            .unwrap();
        let freed = ipam::release(&api2, "network.n3", &s2, "pod-b/eth1")
            .await
            .unwrap();
        let none = ipam::release(&api2, "network.n3", &s2, "pod-b/eth1")
            .await
            .unwrap();
        let dead = ipam::collect_leaks(&api2, "network.n3", &s2, |o| o != "pod-c/eth1")
            .await
            .unwrap();
        (again, freed, none, dead)
    });
    let held = json!({"pod-b/eth1": ["10.3.0.1"]});
    expect(
        &mut h,
        Method::GET,
        ALLOC,
        200,
        alloc_object("2", held.clone()),
    )
    .await; // allocate: already held
    expect(&mut h, Method::GET, ALLOC, 200, alloc_object("2", held)).await; // release
    let (_, put) = expect(&mut h, Method::PUT, ALLOC, 200, Value::Null).await;
    assert_eq!(put["spec"]["leases"], json!({}));
    expect(
        &mut h,
        Method::GET,
        ALLOC,
        200,
        alloc_object("3", json!({})),
    )
    .await; // release again: no write
    expect(
        &mut h,
        Method::GET,
        ALLOC,
        200,
        alloc_object(
            "3",
            json!({"pod-c/eth1": ["10.3.0.4"], "pod-d/eth1": ["10.3.0.5"]}),
        ),
    )
    .await;
    let (_, put) = expect(&mut h, Method::PUT, ALLOC, 200, Value::Null).await;
    assert_eq!(put["spec"]["leases"], json!({"pod-d/eth1": ["10.3.0.5"]}));
    let (again, freed, none, dead) = task.await.unwrap();
    assert_eq!(again, freed);
    assert!(none.is_empty());
    assert_eq!(dead, vec!["pod-c/eth1"]);
    drop(api);
}

const POD_LIVE: &str = "0b7a7a4e-1c1d-4b7e-9e7e-1a2b3c4d5e01";
const POD_GONE: &str = "0b7a7a4e-1c1d-4b7e-9e7e-1a2b3c4d5e02";
const POD_NEW: &str = "0b7a7a4e-1c1d-4b7e-9e7e-1a2b3c4d5e03";
/// A `heddle-ipam` lease: owned by a CNI attachment (container id), not a pod UID.
const CNI_OWNER: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/net1";

#[tokio::test]
async fn leases_of_deleted_pods_are_collected_and_new_ones_kept() {
    let (client, mut h) = mock_client();
    let task = tokio::spawn(async move { gc::collect_pod_leaks(&client).await });
    expect(
        &mut h,
        Method::GET,
        "/apis/heddle.dev/v1alpha1/networkaddressblocks",
        200,
        empty_list(),
    )
    .await;
    let live = format!("{POD_LIVE}/eth1");
    let gone = format!("{POD_GONE}/eth1");
    let new = format!("{POD_NEW}/eth1");
    let list = json!({"apiVersion": "heddle.dev/v1alpha1", "kind": "NetworkAllocationList", "metadata": {},
    "items": [
        alloc_object("5", json!({&live: ["10.3.0.1"], &gone: ["10.3.0.2"], CNI_OWNER: ["10.3.0.9"]})),
    ]});
    expect(
        &mut h,
        Method::GET,
        "/apis/heddle.dev/v1alpha1/networkallocations",
        200,
        list,
    )
    .await;
    let pods = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {},
        "items": [{"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": "p", "namespace": "ns1", "uid": POD_LIVE}}]});
    expect(&mut h, Method::GET, "/api/v1/pods", 200, pods).await;
    let nodes = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {}, "items": []});
    expect(&mut h, Method::GET, "/api/v1/nodes", 200, nodes).await;
    let (_, put) = expect(&mut h, Method::PUT, ALLOC, 409, status(409, "Conflict")).await;
    assert_eq!(
        put["spec"]["leases"],
        json!({&live: ["10.3.0.1"], CNI_OWNER: ["10.3.0.9"]}),
        "the CNI attachment's lease is left to its DEL"
    );
    // A pod created after the pod listing allocated in between: its lease must survive.
    expect(
        &mut h,
        Method::GET,
        ALLOC,
        200,
        alloc_object(
            "6",
            json!({
        &live: ["10.3.0.1"], &gone: ["10.3.0.2"], &new: ["10.3.0.3"], CNI_OWNER: ["10.3.0.9"]}),
        ),
    )
    .await;
    let (_, put) = expect(&mut h, Method::PUT, ALLOC, 200, Value::Null).await;
    assert_eq!(put["metadata"]["resourceVersion"], "6");
    assert_eq!(
        put["spec"]["leases"],
        json!({&live: ["10.3.0.1"], &new: ["10.3.0.3"], CNI_OWNER: ["10.3.0.9"]})
    );
    assert_eq!(task.await.unwrap().unwrap(), 1);
}

#[test]
fn only_pod_uids_are_judged_by_the_leak_collector() {
    assert!(gc::looks_like_pod_uid(POD_LIVE));
    assert!(!gc::looks_like_pod_uid(
        CNI_OWNER.split('/').next().unwrap()
    ));
    assert!(!gc::looks_like_pod_uid("pod-a"));
}

/// A fake API server for one NetworkAllocation object with real `resourceVersion`
/// preconditions: a PUT whose resourceVersion is not the current one gets 409.
async fn serve_allocation(mut h: Handle, state: Arc<std::sync::Mutex<(u64, Value, usize)>>) {
    while let Some((req, send)) = h.next_request().await {
        let method = req.method().clone();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        // Let other nodes run between read and write, to force interleavings.
        tokio::task::yield_now().await;
        let mut st = state.lock().unwrap();
        let (code, reply) = match method {
            Method::GET => (200, st.1.clone()),
            Method::PUT => {
                let mut obj: Value = serde_json::from_slice(&bytes).unwrap();
                if obj["metadata"]["resourceVersion"].as_str() != Some(st.0.to_string().as_str()) {
                    st.2 += 1;
                    (409, status(409, "Conflict"))
                } else {
                    st.0 += 1;
                    obj["metadata"]["resourceVersion"] = json!(st.0.to_string());
                    st.1 = obj.clone();
                    (200, obj)
                }
            }
            m => panic!("unexpected {m}"),
        };
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_nodes_allocating_at_once_never_get_the_same_address() {
    let state = Arc::new(std::sync::Mutex::new((
        1u64,
        alloc_object("1", json!({})),
        0usize,
    )));
    let s = spec(None, "10.3.0.0/24");
    let mut nodes = Vec::new();
    for node in 0..12 {
        let (client, h) = mock_client();
        tokio::spawn(serve_allocation(h, state.clone()));
        let s = s.clone();
        nodes.push(tokio::spawn(async move {
            let api: Api<NetworkAllocation> = Api::namespaced(client, "ns1");
            let mut got = Vec::new();
            for pod in 0..8 {
                let owner = format!("node{node}-pod{pod}/eth1");
                // Contention errors are retried by the caller (the CNI's ADD is retried).
                loop {
                    match ipam::allocate(&api, "network.n3", &s, &owner, &[]).await {
                        Ok(a) => break got.push((owner, a)),
                        Err(ControllerError::Contention(_)) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            got
        }));
    }
    let mut all = std::collections::BTreeMap::new();
    for n in nodes {
        for (owner, addrs) in n.await.unwrap() {
            for a in addrs {
                assert!(all.insert(a, owner.clone()).is_none(), "{a} given twice");
            }
        }
    }
    assert_eq!(all.len(), 96);
    let st = state.lock().unwrap();
    let stored: BTreeMap<String, Vec<String>> =
        serde_json::from_value(st.1["spec"]["leases"].clone()).unwrap();
    assert_eq!(stored.len(), 96, "every acknowledged allocation is stored");
    assert!(
        st.2 > 0,
        "the nodes never conflicted: the test proved nothing"
    );
    for (owner, addrs) in stored {
        assert_eq!(all[&addrs[0].parse::<std::net::IpAddr>().unwrap()], owner);
    }
}

/// Reconciles network `n3` (already claimed on VLAN 150, no addresses) of `kind`, with
/// `resource_name`, on a provider with interface `ens1f0` or VF pool `vf_pool`; returns the
/// NetworkAttachmentDefinition it applies.
async fn nad_of(kind: NetworkKind, resource_name: Option<&str>, vf_pool: Option<&str>) -> Value {
    let (client, mut h) = mock_client();
    let mut s = spec(None, "10.3.0.0/24");
    s.allocation = AllocationMode::None;
    s.kind = kind;
    s.resource_name = resource_name.map(Into::into);
    let net = network(s, Some(150));
    let reconcile = tokio::spawn(reconcile_network(Arc::new(net.clone()), ctx(client)));
    let mut p = provider("7", vec![claim("ns1/n3", "uid-n3", 150, "10.3.0.0/24")]);
    if let Some(pool) = vf_pool {
        p["spec"]["interface"] = Value::Null;
        p["spec"]["vfPool"] = json!(pool);
    }
    expect(&mut h, Method::GET, PROVIDER, 200, p).await;
    let (_, nad) = expect(&mut h, Method::PATCH, NAD, 200, Value::Null).await;
    let (_, st) = expect(
        &mut h,
        Method::PATCH,
        NET_STATUS,
        200,
        serde_json::to_value(&net).unwrap(),
    )
    .await;
    assert_eq!(st["status"]["conditions"][0]["status"], "True", "{st}");
    reconcile.await.unwrap().unwrap();
    nad
}

fn nad_config(nad: &Value) -> Value {
    serde_json::from_str(nad["spec"]["config"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn nads_carry_the_resource_name_of_each_kind() {
    // memif: its default resource, in the annotation and the config.
    let nad = nad_of(NetworkKind::Memif, None, None).await;
    assert_eq!(
        nad["metadata"]["annotations"][RESOURCE_NAME_ANNOTATION],
        "heddle.dev/memif"
    );
    assert_eq!(nad_config(&nad)["resourceName"], "heddle.dev/memif");
    // vhost-user with spec.resourceName: that one.
    let nad = nad_of(
        NetworkKind::VhostUser,
        Some("example.com/vhost_numa1"),
        None,
    )
    .await;
    assert_eq!(
        nad["metadata"]["annotations"][RESOURCE_NAME_ANNOTATION],
        "example.com/vhost_numa1"
    );
    assert_eq!(nad_config(&nad)["resourceName"], "example.com/vhost_numa1");
    // sriov on a VF pool provider: the pool's resource.
    let nad = nad_of(NetworkKind::Sriov, None, Some("heddle.dev/sriov_n3")).await;
    assert_eq!(
        nad["metadata"]["annotations"][RESOURCE_NAME_ANNOTATION],
        "heddle.dev/sriov_n3"
    );
    assert_eq!(nad_config(&nad)["resourceName"], "heddle.dev/sriov_n3");
    assert_eq!(nad_config(&nad)["capabilities"]["deviceID"], true);
    // sriov on a NIC provider, kernel: no resource, no annotation, no capabilities.
    for nad in [
        nad_of(NetworkKind::Sriov, None, None).await,
        nad_of(NetworkKind::Kernel, None, None).await,
    ] {
        assert!(nad["metadata"].get("annotations").is_none(), "{nad}");
        let c = nad_config(&nad);
        assert!(
            c.get("resourceName").is_none() && c.get("capabilities").is_none(),
            "{c}"
        );
    }
}

#[test]
fn heddle_cni_accepts_every_generated_config() {
    for kind in [
        NetworkKind::VhostUser,
        NetworkKind::Memif,
        NetworkKind::Sriov,
        NetworkKind::Kernel,
    ] {
        let mut s = spec(None, "10.3.0.0/24");
        s.kind = kind;
        let resource = s.device_resource(Some("heddle.dev/sriov_n3"));
        for (name, key) in [("n3", "ns1/n3"), ("core", "core")] {
            let config = cni_config(name, key, &s, 150, resource.as_deref(), None);
            let c = heddle_cni::config::NetConf::parse(config.to_string().as_bytes(), true)
                .unwrap_or_else(|e| panic!("{config}: {e}"));
            assert_eq!((c.network.as_str(), c.kind.name()), (key, kind.as_str()));
            assert_eq!(c.resource_name, resource);
            assert_eq!(c.mtu, None);
            // A provider network's MTU reaches the pods' config, which heddle-cni takes.
            let config = cni_config(name, key, &s, 150, resource.as_deref(), Some(9000));
            let c = heddle_cni::config::NetConf::parse(config.to_string().as_bytes(), true)
                .unwrap_or_else(|e| panic!("{config}: {e}"));
            assert_eq!(c.mtu, Some(9000));
        }
    }
}
