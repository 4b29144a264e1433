//! The validating admission webhook: a Network, ClusterNetwork or ProviderNetwork that the
//! validation rules refuse is rejected before the API server stores it, with the same
//! sentences (naming the field) the controller would write to status.
//!
//! `decide` is the pure rule: the object (and, for networks, its provider network) in, an
//! answer out. `router` wraps it in `POST /validate` taking and returning an
//! `admission.k8s.io/v1` `AdmissionReview`; `serve` puts that on HTTPS (rustls), as the API
//! server requires.

use std::net::SocketAddr;
use std::path::Path;

use axum::routing::post;
use axum::{Json, Router};
use kube::api::{Api, DynamicObject};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::crd::{NetworkSpec, NetworkStatus, ProviderNetwork, ProviderNetworkSpec};
use crate::validation::{validate_network, validate_provider};

/// The kinds this webhook judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `ProviderNetwork` (cluster-scoped).
    ProviderNetwork,
    /// `Network` (namespaced).
    Network,
    /// `ClusterNetwork` (cluster-scoped).
    ClusterNetwork,
}

impl Kind {
    /// From the request's `kind.kind`.
    pub fn from_kind(kind: &str) -> Option<Kind> {
        match kind {
            "ProviderNetwork" => Some(Kind::ProviderNetwork),
            "Network" => Some(Kind::Network),
            "ClusterNetwork" => Some(Kind::ClusterNetwork),
            _ => None,
        }
    }
}

fn spec_of<T: serde::de::DeserializeOwned>(object: &DynamicObject) -> Result<T, String> {
    let spec = object.data.get("spec").cloned().unwrap_or_default();
    serde_json::from_value(spec).map_err(|e| format!("spec: {e}"))
}

/// The network's key as the provider's claims name it: `namespace/name` or `name`.
pub fn network_key(kind: Kind, object: &DynamicObject) -> String {
    let name = object.metadata.name.clone().unwrap_or_default();
    match (kind, &object.metadata.namespace) {
        (Kind::Network, Some(ns)) => format!("{ns}/{name}"),
        _ => name,
    }
}

/// Pure decision for one object. `provider` is the network's provider network as stored
/// now (`None` when it does not exist); `old` the object before an update.
pub fn decide(
    kind: Kind,
    object: &DynamicObject,
    old: Option<&DynamicObject>,
    provider: Option<&ProviderNetwork>,
) -> Result<(), String> {
    match kind {
        Kind::ProviderNetwork => {
            let spec: ProviderNetworkSpec = spec_of(object)?;
            validate_provider(&spec).map_err(|e| e.to_string())
        }
        Kind::Network | Kind::ClusterNetwork => {
            let spec: NetworkSpec = spec_of(object)?;
            let Some(provider) = provider else {
                return Err(format!(
                    "spec.provider: there is no ProviderNetwork named {:?}: create it first, or name an existing one",
                    spec.provider
                ));
            };
            let key = network_key(kind, object);
            let uid = object.metadata.uid.clone().unwrap_or_default();
            let mut claims = provider.status.clone().unwrap_or_default().assignments;
            let mine = claims
                .iter()
                .find(|a| a.network == key && (uid.is_empty() || a.uid == uid))
                .map(|a| a.vlan);
            claims.retain(|a| a.network != key);
            let old_vlan = old
                .and_then(|o| o.data.get("status").cloned())
                .and_then(|s| serde_json::from_value::<NetworkStatus>(s).ok())
                .and_then(|s| s.vlan);
            let mut errors = Vec::new();
            if let Err(e) = validate_network(
                &key,
                &spec,
                &spec.provider,
                &provider.spec,
                mine.or(old_vlan),
                &claims,
            ) {
                errors.push(e.to_string());
            }
            // Uniqueness per provider network: the controller's pool enforces it too, but a
            // duplicate must not be stored in the first place.
            if let Some(other) = spec.vlan.and_then(|v| claims.iter().find(|a| a.vlan == v)) {
                errors.push(format!(
                    "spec.vlan: VLAN {} is already used by network {} on provider network {}: pick another, or omit spec.vlan to have one assigned",
                    other.vlan, other.network, spec.provider
                ));
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            }
        }
    }
}

/// Answers one review: allowed, or denied with the validation's sentence.
pub async fn review(
    client: Option<kube::Client>,
    request: AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(&request);
    if request.operation == Operation::Delete {
        return response;
    }
    let Some(kind) = Kind::from_kind(&request.kind.kind) else {
        return response;
    };
    let Some(object) = request.object.as_ref() else {
        return response.deny("the request carries no object");
    };
    let provider = match kind {
        Kind::ProviderNetwork => None,
        Kind::Network | Kind::ClusterNetwork => {
            let name = match spec_of::<NetworkSpec>(object) {
                Ok(s) => s.provider,
                Err(e) => return response.deny(e),
            };
            match &client {
                Some(c) => match Api::<ProviderNetwork>::all(c.clone()).get_opt(&name).await {
                    Ok(p) => p,
                    Err(e) => {
                        return response.deny(format!(
                            "cannot read ProviderNetwork {name}: {e}; try again"
                        ))
                    }
                },
                None => None,
            }
        }
    };
    match decide(kind, object, request.old_object.as_ref(), provider.as_ref()) {
        Ok(()) => response,
        Err(msg) => response.deny(msg),
    }
}

/// `POST /validate`.
pub fn router(client: Option<kube::Client>) -> Router {
    Router::new().route(
        "/validate",
        post(move |Json(body): Json<AdmissionReview<DynamicObject>>| {
            let client = client.clone();
            async move {
                let request: Result<AdmissionRequest<DynamicObject>, _> = body.try_into();
                let response = match request {
                    Ok(req) => review(client, req).await,
                    Err(e) => {
                        AdmissionResponse::invalid(format!("not an AdmissionReview request: {e}"))
                    }
                };
                Json(response.into_review())
            }
        }),
    )
}

/// Serves the webhook on HTTPS with the PEM certificate chain and key (from the Secret the
/// chart mounts).
pub async fn serve(
    client: Option<kube::Client>,
    listen: SocketAddr,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<()> {
    // One crypto provider for the process; a second install (tests, reloads) is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot load the webhook certificate {} / key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    tracing::info!(%listen, "validating webhook listening");
    axum_server::bind_rustls(listen, tls)
        .serve(router(client).into_make_service())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn provider(assignments: serde_json::Value) -> ProviderNetwork {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "heddle.dev/v1alpha1", "kind": "ProviderNetwork",
            "metadata": {"name": "physnet"},
            "spec": {"interface": "uplink0", "vlanPool": [{"start": 100, "end": 199}]},
            "status": {"assignments": assignments}
        }))
        .unwrap()
    }

    fn network(name: &str, spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "heddle.dev/v1alpha1", "kind": "Network",
            "metadata": {"name": name, "namespace": "ns1", "uid": "u-1"},
            "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn a_vlan_outside_the_pool_or_an_overlapping_subnet_is_refused_naming_the_field() {
        let p = provider(
            serde_json::json!([{"network": "ns1/other", "uid": "u-2", "vlan": 150, "subnets": ["10.1.0.0/24"]}]),
        );
        let ok = network(
            "n3",
            serde_json::json!({"kind": "vhost-user", "provider": "physnet", "vlan": 120, "ipv4": {"cidr": "10.2.0.0/24"}}),
        );
        assert_eq!(decide(Kind::Network, &ok, None, Some(&p)), Ok(()));
        let out_of_pool = network(
            "n3",
            serde_json::json!({"kind": "vhost-user", "provider": "physnet", "vlan": 300}),
        );
        let e = decide(Kind::Network, &out_of_pool, None, Some(&p)).unwrap_err();
        assert!(e.contains("spec.vlan"), "{e}");
        let taken = network(
            "n3",
            serde_json::json!({"kind": "vhost-user", "provider": "physnet", "vlan": 150, "allocation": "none"}),
        );
        assert!(decide(Kind::Network, &taken, None, Some(&p))
            .unwrap_err()
            .contains("spec.vlan"));
        let overlap = network(
            "n3",
            serde_json::json!({"kind": "vhost-user", "provider": "physnet", "ipv4": {"cidr": "10.1.0.128/25"}}),
        );
        let e = decide(Kind::Network, &overlap, None, Some(&p)).unwrap_err();
        assert!(e.contains("spec.ipv4") && e.contains("overlaps"), "{e}");
        let e = decide(Kind::Network, &ok, None, None).unwrap_err();
        assert!(e.starts_with("spec.provider"), "{e}");
    }

    #[test]
    fn changing_an_assigned_vlan_is_refused() {
        let p = provider(serde_json::json!([{"network": "ns1/n3", "uid": "u-1", "vlan": 120}]));
        let changed = network(
            "n3",
            serde_json::json!({"kind": "vhost-user", "provider": "physnet", "vlan": 121, "allocation": "none"}),
        );
        let e = decide(Kind::Network, &changed, None, Some(&p)).unwrap_err();
        assert!(e.contains("spec.vlan"), "{e}");
        let same = network(
            "n3",
            serde_json::json!({"kind": "vhost-user", "provider": "physnet", "vlan": 120, "allocation": "none"}),
        );
        assert_eq!(decide(Kind::Network, &same, None, Some(&p)), Ok(()));
    }

    #[tokio::test]
    async fn the_http_endpoint_answers_an_admission_review() {
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "req-1",
                "kind": {"group": "heddle.dev", "version": "v1alpha1", "kind": "ProviderNetwork"},
                "resource": {"group": "heddle.dev", "version": "v1alpha1", "resource": "providernetworks"},
                "name": "bad", "operation": "CREATE",
                "userInfo": {},
                "object": {"apiVersion": "heddle.dev/v1alpha1", "kind": "ProviderNetwork",
                           "metadata": {"name": "bad"},
                           "spec": {"interface": "eth1", "vfPool": "pool", "vlanPool": [{"start": 5000, "end": 5001}]}}
            }
        });
        let resp = router(None)
            .oneshot(
                Request::post("/validate")
                    .header("content-type", "application/json")
                    .body(Body::from(review.to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["uid"], "req-1");
        assert_eq!(v["response"]["allowed"], false);
        let msg = v["response"]["status"]["message"].as_str().unwrap();
        assert!(
            msg.contains("spec.interface") && msg.contains("spec.vlanPool[0]"),
            "{msg}"
        );
    }
}
