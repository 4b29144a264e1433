//! The control API: HTTP/JSON on a root-only Unix socket (and, optionally, `/metrics` on
//! TCP for Prometheus).

use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use heddle_api::{ErrorReply, Health, PortOrigin, PortSpec, RemoveReply, TrunkVlans};

use super::metrics;
use super::switch::{PortError, SwitchCtl};

/// Shared handle on the switch for the handlers.
pub type Ctl = Arc<Mutex<SwitchCtl>>;

fn lock(ctl: &Ctl) -> MutexGuard<'_, SwitchCtl> {
    // A panic in a handler must not wedge the control plane: the table is consistent
    // between calls, so a poisoned lock is taken over.
    ctl.lock().unwrap_or_else(|e| e.into_inner())
}

fn error(status: StatusCode, msg: String) -> Response {
    (status, Json(ErrorReply { error: msg })).into_response()
}

impl IntoResponse for PortError {
    fn into_response(self) -> Response {
        let status = match self {
            PortError::Vhost(ref e) if e.is_conflict() => StatusCode::CONFLICT,
            PortError::Memif(ref e) if e.is_conflict() => StatusCode::CONFLICT,
            PortError::Invalid(_)
            | PortError::Device(_)
            | PortError::Vhost(_)
            | PortError::Memif(_) => StatusCode::BAD_REQUEST,
            PortError::Conflict(_) => StatusCode::CONFLICT,
            PortError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            PortError::NotFound(_) => StatusCode::NOT_FOUND,
            PortError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, self.to_string())
    }
}

/// All routes.
pub fn router(ctl: Ctl) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ports", get(list_ports).post(add_port))
        .route("/v1/ports/{name}", get(get_port).delete(remove_port))
        .route(
            "/v1/ports/{name}/vlans",
            axum::routing::put(set_trunk_vlans),
        )
        .route("/v1/stats", get(stats))
        .route("/v1/fdb", get(fdb))
        .route("/v1/hugepages", get(hugepages))
        .route("/metrics", get(prometheus))
        .with_state(ctl)
}

/// Only `/metrics`, for the TCP listener.
pub fn metrics_router(ctl: Ctl) -> Router {
    Router::new()
        .route("/metrics", get(prometheus))
        .with_state(ctl)
}

async fn health(State(ctl): State<Ctl>) -> Json<Health> {
    let c = lock(&ctl);
    Json(Health {
        ready: true,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        workers: c.worker_count() as u32,
        ports: c.port_count() as u32,
        max_ports: c.max_ports() as u32,
    })
}

async fn list_ports(State(ctl): State<Ctl>) -> Response {
    Json(lock(&ctl).ports()).into_response()
}

async fn get_port(State(ctl): State<Ctl>, Path(name): Path<String>) -> Response {
    match lock(&ctl).port(&name) {
        Some(p) => Json(p).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no port named {name:?}: heddlectl ports lists them"),
        ),
    }
}

async fn add_port(State(ctl): State<Ctl>, body: axum::body::Bytes) -> Response {
    let spec: PortSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed port spec: {e}")),
    };
    let mut c = lock(&ctl);
    let existed = c.port(&spec.name).is_some();
    match c.add_port(spec, PortOrigin::Api) {
        Ok(st) => {
            let code = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (code, Json(st)).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn set_trunk_vlans(
    State(ctl): State<Ctl>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let vlans: TrunkVlans = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed VLAN list: {e}")),
    };
    match lock(&ctl).set_trunk_vlans(&name, vlans) {
        Ok(st) => Json(st).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn remove_port(State(ctl): State<Ctl>, Path(name): Path<String>) -> Response {
    match lock(&ctl).remove_port(&name) {
        Ok(removed) => Json(RemoveReply { removed }).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn stats(State(ctl): State<Ctl>) -> Response {
    Json(lock(&ctl).stats()).into_response()
}

async fn fdb(State(ctl): State<Ctl>) -> Response {
    Json(lock(&ctl).fdb()).into_response()
}

async fn hugepages() -> Response {
    match heddle_hugepages::discover(&heddle_hugepages::SysPaths::host()) {
        Ok(inv) => Json(inv).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn prometheus(State(ctl): State<Ctl>) -> Response {
    let stats = lock(&ctl).stats();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(&stats),
    )
        .into_response()
}
