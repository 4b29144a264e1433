//! An in-memory Kubernetes API server for tests and benchmarks: a `tower` service behind a
//! real [`kube::Client`], holding JSON objects the way etcd does for the API server.
//!
//! What it enforces, because the allocators' correctness rests on it:
//! * `resourceVersion` preconditions: a `PUT` (or a `DELETE` with
//!   `preconditions.resourceVersion`) whose version is not the stored one gets
//!   `409 Conflict`; a `POST` of a name that exists gets `409 AlreadyExists`.
//! * etcd's object limit: a write whose stored JSON is over [`OBJECT_LIMIT`] (1.5 MiB) is
//!   refused with `413` and etcd's message, `etcdserver: request is too large`, and stores
//!   nothing.
//!
//! What it serves: `GET` (one object, or a list, namespaced or across namespaces, with
//! `labelSelector` terms `k=v`, `k!=v`, `k`, `!k`, and metadata-only lists), `POST`, `PUT`
//! (the object or its `/status`), `DELETE`, and `PATCH` (applied as a JSON merge patch; a
//! server-side apply creates the object). It is not a full API server: no watches, no field
//! ownership, no defaulting or validation of schemas, no garbage collection of owned objects.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

/// etcd's default request limit (`--max-request-bytes`), which caps the size of one object.
pub const OBJECT_LIMIT: usize = 1536 * 1024;

/// Counters of what the server did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests served.
    pub requests: u64,
    /// Writes stored (create, replace, patch, delete).
    pub writes: u64,
    /// Writes refused with 409 (stale `resourceVersion` or existing name).
    pub conflicts: u64,
    /// Writes refused for size.
    pub too_large: u64,
    /// The largest object ever stored, in bytes of JSON.
    pub largest_object: usize,
}

type Key = (String, Option<String>, String);

#[derive(Default)]
struct State {
    /// (resource path, e.g. `heddle.dev/v1alpha1/networks`; namespace; name) -> object.
    objects: BTreeMap<Key, Value>,
    /// (resource, label key) -> objects carrying that label, so a selector list does not
    /// scan every object.
    by_label: std::collections::HashMap<(String, String), std::collections::BTreeSet<Key>>,
    version: u64,
    stats: Stats,
}

/// The fake server; clone it to share the store between clients.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    interleave: bool,
    latency: Option<std::time::Duration>,
}

struct Route {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match *segs.first()? {
        "api" if segs.len() >= 2 => route(segs[1].to_string(), &segs[2..]),
        "apis" if segs.len() >= 3 => route(format!("{}/{}", segs[1], segs[2]), &segs[3..]),
        _ => None,
    }
}

fn route(group_version: String, rest: &[&str]) -> Option<Route> {
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
        _ => (None, rest),
    };
    let (plural, tail) = rest.split_first()?;
    Some(Route {
        resource: format!("{group_version}/{plural}"),
        namespace,
        name: tail.first().map(|s| s.to_string()),
        status: tail.get(1) == Some(&"status"),
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

/// Whether `labels` match a label selector (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated).
fn selects(selector: &str, labels: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let get = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
        if let Some((k, v)) = term.split_once("!=") {
            get(k) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k).is_none()
        } else {
            get(term).is_some()
        }
    })
}

fn status(code: u16, reason: &str, message: String) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

impl FakeApi {
    /// An empty server.
    pub fn new() -> Self {
        Self::default()
    }

    /// A server that yields to the runtime before each request, so concurrent clients
    /// interleave between their read and their write.
    pub fn interleaving() -> Self {
        Self {
            interleave: true,
            ..Self::default()
        }
    }

    /// A server that answers each request after `latency` (a round trip to a real API
    /// server and etcd), for benchmarks; concurrent requests overlap.
    pub fn with_latency(latency: std::time::Duration) -> Self {
        Self {
            latency: Some(latency),
            ..Self::default()
        }
    }

    /// A client talking to this server (default namespace `default`).
    pub fn client(&self) -> Client {
        let api = self.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.serve(req).await) }
        });
        Client::new(svc, "default")
    }

    /// What the server did so far.
    pub fn stats(&self) -> Stats {
        self.state.lock().expect("fake API state").stats
    }

    /// Every stored object of `resource` (e.g. `heddle.dev/v1alpha1/networkaddressblocks`).
    pub fn objects(&self, resource: &str) -> Vec<Value> {
        let st = self.state.lock().expect("fake API state");
        st.objects
            .iter()
            .filter(|((r, _, _), _)| r == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Call `f` on every stored object of `resource`, without copying the store.
    pub fn visit(&self, resource: &str, mut f: impl FnMut(&Value)) {
        let st = self.state.lock().expect("fake API state");
        st.objects
            .iter()
            .filter(|((r, _, _), _)| r == resource)
            .for_each(|(_, v)| f(v));
    }

    /// How many objects of `resource` are stored.
    pub fn count(&self, resource: &str) -> usize {
        let st = self.state.lock().expect("fake API state");
        st.objects.keys().filter(|(r, _, _)| r == resource).count()
    }

    /// Store `obj` directly (test setup), under `resource`; returns it with its metadata.
    pub fn insert(&self, resource: &str, mut obj: Value) -> Value {
        let mut st = self.state.lock().expect("fake API state");
        st.version += 1;
        let rv = st.version.to_string();
        obj["metadata"]["resourceVersion"] = json!(rv);
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{rv}"));
        }
        let key = (
            resource.to_string(),
            obj["metadata"]["namespace"].as_str().map(String::from),
            obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        st.put_object(key, obj.clone());
        obj
    }

    async fn serve(&self, req: Request<Body>) -> Response<Body> {
        if self.interleave {
            tokio::task::yield_now().await;
        }
        if let Some(l) = self.latency {
            tokio::time::sleep(l).await;
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let metadata_only = req
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("as=PartialObjectMetadataList"));
        let bytes = match req.into_body().collect_bytes().await {
            Ok(b) => b,
            Err(e) => return reply(status(400, "BadRequest", e.to_string())),
        };
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => return reply(status(400, "BadRequest", e.to_string())),
            }
        };
        let Some(route) = parse_path(&path) else {
            return reply(status(404, "NotFound", format!("no route {path}")));
        };
        let mut st = self.state.lock().expect("fake API state");
        st.stats.requests += 1;
        reply(st.handle(&method, route, &query, metadata_only, body))
    }
}

fn reply((code, body): (u16, Value)) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(&body).expect("JSON")))
        .expect("a valid response")
}

fn label_keys(obj: &Value) -> Vec<String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

impl State {
    fn put_object(&mut self, key: Key, obj: Value) {
        self.drop_object(&key);
        for l in label_keys(&obj) {
            self.by_label
                .entry((key.0.clone(), l))
                .or_default()
                .insert(key.clone());
        }
        self.objects.insert(key, obj);
    }

    fn drop_object(&mut self, key: &Key) {
        if let Some(old) = self.objects.remove(key) {
            for l in label_keys(&old) {
                if let Some(set) = self.by_label.get_mut(&(key.0.clone(), l)) {
                    set.remove(key);
                }
            }
        }
    }

    fn handle(
        &mut self,
        method: &Method,
        r: Route,
        query: &str,
        metadata_only: bool,
        body: Value,
    ) -> (u16, Value) {
        let Route {
            resource,
            namespace,
            name,
            status: sub_status,
        } = r;
        let Some(name) = name else {
            return match *method {
                Method::GET => self.list(&resource, namespace.as_deref(), query, metadata_only),
                Method::POST => self.create(resource, namespace, body),
                _ => status(405, "MethodNotAllowed", format!("{method} on a collection")),
            };
        };
        let key = (resource, namespace, name);
        let not_found = |k: &Key| {
            status(
                404,
                "NotFound",
                format!(
                    "{} \"{}\" not found",
                    k.0.rsplit('/').next().unwrap_or(""),
                    k.2
                ),
            )
        };
        match *method {
            Method::GET => match self.objects.get(&key) {
                Some(o) => (200, o.clone()),
                None => not_found(&key),
            },
            Method::PUT => {
                let Some(current) = self.objects.get(&key).cloned() else {
                    return not_found(&key);
                };
                if let Some(conflict) = self.precondition(&current, &body["metadata"]) {
                    return conflict;
                }
                let mut obj = body;
                if sub_status {
                    let mut full = current.clone();
                    full["status"] = obj["status"].take();
                    obj = full;
                } else if let Some(s) = current.get("status") {
                    obj["status"] = s.clone();
                }
                obj["metadata"]["uid"] = current["metadata"]["uid"].clone();
                self.store(key, obj, 200)
            }
            Method::PATCH => {
                let mut obj = match self.objects.get(&key) {
                    Some(o) => o.clone(),
                    None if query.contains("fieldManager") => {
                        json!({"metadata": {"name": key.2, "namespace": key.1}})
                    }
                    None => return not_found(&key),
                };
                let mut patch = body;
                if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                merge(&mut obj, &patch);
                self.store(key, obj, 200)
            }
            Method::DELETE => {
                let Some(current) = self.objects.get(&key).cloned() else {
                    return not_found(&key);
                };
                if let Some(conflict) = self.precondition(&current, &body["preconditions"]) {
                    return conflict;
                }
                self.drop_object(&key);
                self.stats.writes += 1;
                (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                           "details": {"name": key.2}}),
                )
            }
            _ => status(405, "MethodNotAllowed", format!("{method}")),
        }
    }

    /// A 409 when `meta.resourceVersion` (or `meta.uid`) is given and is not `current`'s.
    fn precondition(&mut self, current: &Value, meta: &Value) -> Option<(u16, Value)> {
        let stale = |field: &str| {
            meta[field]
                .as_str()
                .is_some_and(|v| Some(v) != current["metadata"][field].as_str())
        };
        if stale("resourceVersion") || stale("uid") {
            self.stats.conflicts += 1;
            return Some(status(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {:?}: the object has been modified; please apply your changes to the latest version and try again",
                    current["metadata"]["name"]
                ),
            ));
        }
        None
    }

    fn store(&mut self, key: Key, mut obj: Value, code: u16) -> (u16, Value) {
        self.version += 1;
        obj["metadata"]["resourceVersion"] = json!(self.version.to_string());
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{}", self.version));
        }
        if let Some(ns) = &key.1 {
            obj["metadata"]["namespace"] = json!(ns);
        }
        let size = serde_json::to_vec(&obj).expect("JSON").len();
        if size > OBJECT_LIMIT {
            self.version -= 1;
            self.stats.too_large += 1;
            return status(
                413,
                "RequestEntityTooLarge",
                "etcdserver: request is too large".into(),
            );
        }
        self.stats.largest_object = self.stats.largest_object.max(size);
        self.stats.writes += 1;
        self.put_object(key, obj.clone());
        (code, obj)
    }

    fn create(&mut self, resource: String, namespace: Option<String>, body: Value) -> (u16, Value) {
        let Some(name) = body["metadata"]["name"].as_str().map(String::from) else {
            return status(422, "Invalid", "metadata.name: Required value".into());
        };
        let key = (resource, namespace, name);
        if self.objects.contains_key(&key) {
            self.stats.conflicts += 1;
            return status(
                409,
                "AlreadyExists",
                format!(
                    "{} \"{}\" already exists",
                    key.0.rsplit('/').next().unwrap_or(""),
                    key.2
                ),
            );
        }
        let mut obj = body;
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("resourceVersion");
            m.remove("uid");
        }
        self.store(key, obj, 201)
    }

    fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
        query: &str,
        metadata_only: bool,
    ) -> (u16, Value) {
        let selector = query_param(query, "labelSelector").unwrap_or_default();
        // The smallest set of objects carrying a label the selector requires, if any.
        let indexed = selector
            .split(',')
            .filter(|t| !t.is_empty() && !t.starts_with('!') && !t.contains("!="))
            .map(|t| t.split('=').next().unwrap_or(t).trim().to_string())
            .map(|k| self.by_label.get(&(resource.to_string(), k)))
            .min_by_key(|set| set.map_or(0, |s| s.len()));
        let candidates: Box<dyn Iterator<Item = (&Key, &Value)>> = match indexed {
            Some(Some(set)) => Box::new(set.iter().filter_map(|k| self.objects.get_key_value(k))),
            Some(None) => Box::new(std::iter::empty()),
            None => Box::new(self.objects.iter()),
        };
        let items: Vec<Value> = candidates
            .filter(|((r, ns, _), o)| {
                r == resource
                    && (namespace.is_none() || ns.as_deref() == namespace)
                    && selects(&selector, &o["metadata"]["labels"])
            })
            .map(|(_, o)| {
                if metadata_only {
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": o["metadata"]})
                } else {
                    o.clone()
                }
            })
            .collect();
        let kind = if metadata_only {
            "PartialObjectMetadataList".to_string()
        } else {
            "List".to_string()
        };
        (
            200,
            json!({"apiVersion": if metadata_only { "meta.k8s.io/v1" } else { "v1" }, "kind": kind,
                   "metadata": {"resourceVersion": self.version.to_string()}, "items": items}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
    use kube::Api;

    use crate::crd::{NetworkAllocation, NetworkAllocationSpec};

    fn alloc(name: &str) -> NetworkAllocation {
        NetworkAllocation::new(
            name,
            NetworkAllocationSpec {
                network: "ns1/n3".into(),
                leases: BTreeMap::new(),
            },
        )
    }

    fn code(e: kube::Error) -> u16 {
        match e {
            kube::Error::Api(s) => s.code,
            e => panic!("not an API error: {e}"),
        }
    }

    #[tokio::test]
    async fn stale_writes_existing_names_and_oversized_objects_are_refused() {
        let fake = FakeApi::new();
        let api: Api<NetworkAllocation> = Api::namespaced(fake.client(), "ns1");
        let created = api
            .create(&PostParams::default(), &alloc("a"))
            .await
            .unwrap();
        assert_eq!(
            code(
                api.create(&PostParams::default(), &alloc("a"))
                    .await
                    .unwrap_err()
            ),
            409
        );
        let mut next = created.clone();
        next.spec.leases.insert("o".into(), vec!["10.0.0.1".into()]);
        let stored = api
            .replace("a", &PostParams::default(), &next)
            .await
            .unwrap();
        assert_ne!(
            stored.metadata.resource_version,
            created.metadata.resource_version
        );
        // `next` still carries the version it was read at: stale now.
        assert_eq!(
            code(
                api.replace("a", &PostParams::default(), &next)
                    .await
                    .unwrap_err()
            ),
            409
        );
        let stale_delete = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: created.metadata.resource_version.clone(),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        assert_eq!(code(api.delete("a", &stale_delete).await.unwrap_err()), 409);
        let mut big = stored.clone();
        for i in 0..40_000 {
            big.spec
                .leases
                .insert(format!("owner-{i:036}/eth1"), vec!["10.0.0.1".into()]);
        }
        let e = api
            .replace("a", &PostParams::default(), &big)
            .await
            .unwrap_err();
        match e {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 413);
                assert_eq!(s.message, "etcdserver: request is too large");
            }
            e => panic!("{e}"),
        }
        assert_eq!(
            api.get("a").await.unwrap(),
            stored,
            "a refused write changes nothing"
        );
        let st = fake.stats();
        assert_eq!((st.conflicts, st.too_large, st.writes), (3, 1, 2));
        assert!(st.largest_object < OBJECT_LIMIT);
        let sel = api
            .list(&ListParams::default().labels("x=y"))
            .await
            .unwrap();
        assert!(sel.items.is_empty());
        assert_eq!(
            api.list(&ListParams::default()).await.unwrap().items.len(),
            1
        );
    }

    #[test]
    fn label_selectors() {
        let l = json!({"a": "1", "b": "2"});
        assert!(selects("a=1,b", &l));
        assert!(selects("a==1,!c,b!=3", &l));
        assert!(!selects("a=2", &l));
        assert!(!selects("c", &l));
        assert!(!selects("!a", &l));
        assert_eq!(percent_decode("a%3D1%2Cb"), "a=1,b");
    }
}
