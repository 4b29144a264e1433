//! Leader election on a `coordination.k8s.io/v1` Lease, so two or more manager replicas can
//! run and only one reconciles at a time.
//!
//! The rules are client-go's `leaderelection` ones (kube-rs has no leader election of its
//! own, and the two crates that add one pull in their own kube versions):
//! - a candidate takes the Lease when nobody holds it, or when the record it last saw has not
//!   changed for `leaseDurationSeconds`. "Not changed" is measured on the candidate's own
//!   monotonic clock from the moment it first saw that record, never by comparing the
//!   holder's `renewTime` with the local wall clock, so clock skew between nodes cannot make
//!   two leaders;
//! - every write carries the `resourceVersion` it read: of two candidates racing for an expired
//!   Lease, the API server lets exactly one win (the other gets 409 and stays a follower);
//! - the leader renews every `retry` period; when it has not renewed for `renew_deadline`
//!   (shorter than the lease duration) it stops leading at once: [`run_as_leader`] returns an
//!   error, the process exits and its restart campaigns again. The reconcilers are never
//!   left running without the Lease;
//! - on shutdown the leader releases the Lease (empty holder), so a follower takes over in
//!   one retry period instead of a whole lease duration.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// Timing and identity of one candidate.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease object name.
    pub name: String,
    /// Lease namespace (the manager's own).
    pub namespace: String,
    /// This candidate (the pod name).
    pub identity: String,
    /// How long a Lease lives without renewal before others may take it.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long steps down (must be below the duration).
    pub renew_deadline: Duration,
    /// Period of acquire and renew attempts.
    pub retry: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(name: String, namespace: String, identity: String) -> LeaseConfig {
        LeaseConfig {
            name,
            namespace,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// What a candidate does with the Lease it just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No Lease yet: create it, holding it.
    Create,
    /// Write the Lease holding it (renewal or takeover); `transition` when the holder changes.
    Take {
        /// The holder changes (count a transition, set a new acquire time).
        transition: bool,
    },
    /// Someone else holds a live Lease: wait.
    Follow {
        /// The holder.
        holder: String,
    },
}

/// The part of a Lease record whose change proves its holder alive.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    holder: Option<String>,
    renew: Option<String>,
    transitions: Option<i32>,
}

impl Observed {
    fn of(spec: Option<&LeaseSpec>) -> Observed {
        Observed {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renew: spec.and_then(|s| s.renew_time.as_ref().map(|t| format!("{:?}", t.0))),
            transitions: spec.and_then(|s| s.lease_transitions),
        }
    }
}

/// The candidate's memory of the Lease: the record last seen and when (monotonic) it changed.
#[derive(Debug, Default)]
pub struct Candidate {
    seen: Option<(Observed, Instant)>,
}

impl Candidate {
    /// Decides what to do with `lease` (None: it does not exist) at `now`.
    pub fn step(&mut self, cfg: &LeaseConfig, lease: Option<&Lease>, now: Instant) -> Step {
        let Some(lease) = lease else {
            self.seen = None;
            return Step::Create;
        };
        let spec = lease.spec.as_ref();
        let observed = Observed::of(spec);
        let changed_at = match &self.seen {
            Some((o, at)) if *o == observed => *at,
            _ => now,
        };
        self.seen = Some((observed.clone(), changed_at));
        let duration = spec
            .and_then(|s| s.lease_duration_seconds)
            .filter(|&d| d > 0)
            .map(|d| Duration::from_secs(d as u64))
            .unwrap_or(cfg.lease_duration);
        match observed.holder {
            Some(h) if h == cfg.identity => Step::Take { transition: false },
            Some(h) if now.duration_since(changed_at) < duration => Step::Follow { holder: h },
            _ => Step::Take { transition: true },
        }
    }
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// The Lease as this candidate writes it (keeping the read's metadata and resourceVersion).
fn held(cfg: &LeaseConfig, read: Option<&Lease>, transition: bool) -> Lease {
    let old = read.and_then(|l| l.spec.clone()).unwrap_or_default();
    let now = now_micro();
    Lease {
        metadata: read.map(|l| l.metadata.clone()).unwrap_or(ObjectMeta {
            name: Some(cfg.name.clone()),
            namespace: Some(cfg.namespace.clone()),
            ..Default::default()
        }),
        spec: Some(LeaseSpec {
            holder_identity: Some(cfg.identity.clone()),
            lease_duration_seconds: Some(cfg.lease_duration.as_secs().max(1) as i32),
            acquire_time: if transition || old.acquire_time.is_none() {
                Some(now.clone())
            } else {
                old.acquire_time
            },
            renew_time: Some(now),
            lease_transitions: Some(match (read, transition) {
                (None, _) => 0,
                (Some(_), true) => old.lease_transitions.unwrap_or(0) + 1,
                (Some(_), false) => old.lease_transitions.unwrap_or(0),
            }),
            ..old
        }),
    }
}

/// One acquire-or-renew attempt: true when this candidate holds the Lease afterwards.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    candidate: &mut Candidate,
) -> Result<bool, kube::Error> {
    let read = api.get_opt(&cfg.name).await?;
    let step = candidate.step(cfg, read.as_ref(), Instant::now());
    let written = match step {
        Step::Follow { .. } => return Ok(false),
        Step::Create => {
            api.create(&PostParams::default(), &held(cfg, None, true))
                .await
        }
        Step::Take { transition } => {
            api.replace(
                &cfg.name,
                &PostParams::default(),
                &held(cfg, read.as_ref(), transition),
            )
            .await
        }
    };
    match written {
        Ok(_) => Ok(true),
        // Another candidate wrote first (409 on replace, or create after someone created it).
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up (empty holder) if this candidate holds it; best effort.
async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = Some(now_micro());
    // A 1-second duration lets the next candidate take it at its next attempt.
    spec.lease_duration_seconds = Some(1);
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = %cfg.name, "leadership released"),
        Err(e) => tracing::warn!(lease = %cfg.name, error = %e, "releasing the lease failed"),
    }
}

/// Waits until this candidate holds the Lease, then runs `work` while renewing it. Returns
/// `Ok` when `shutdown` fires (after releasing the Lease) or `work` ends, and an error when
/// the Lease was not renewed within the renew deadline: the caller must then exit (the
/// reconcilers were stopped with the future's drop).
pub async fn run_as_leader<W, S>(
    client: Client,
    cfg: LeaseConfig,
    work: W,
    shutdown: S,
) -> anyhow::Result<()>
where
    W: Future<Output = ()>,
    S: Future<Output = ()>,
{
    anyhow::ensure!(
        cfg.renew_deadline < cfg.lease_duration && cfg.retry < cfg.renew_deadline,
        "leader election needs retry < renew deadline < lease duration (got {:?}, {:?}, {:?})",
        cfg.retry,
        cfg.renew_deadline,
        cfg.lease_duration
    );
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut candidate = Candidate::default();
    tokio::pin!(shutdown);
    tokio::pin!(work);
    let mut follower_of: Option<String> = None;
    // Campaign.
    loop {
        match try_acquire_or_renew(&api, &cfg, &mut candidate).await {
            Ok(true) => break,
            Ok(false) => {
                let holder = candidate
                    .seen
                    .as_ref()
                    .and_then(|(o, _)| o.holder.clone())
                    .unwrap_or_default();
                if follower_of.as_ref() != Some(&holder) {
                    tracing::info!(lease = %cfg.name, %holder, identity = %cfg.identity, "another replica leads; standing by");
                    follower_of = Some(holder);
                }
            }
            Err(e) => {
                tracing::warn!(lease = %cfg.name, error = %e, "leader election: cannot read or write the lease")
            }
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(cfg.retry) => {}
        }
    }
    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader; reconcilers starting");
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            _ = &mut work => {
                release(&api, &cfg).await;
                return Ok(());
            }
            _ = &mut shutdown => {
                release(&api, &cfg).await;
                return Ok(());
            }
            _ = tokio::time::sleep(cfg.retry) => {}
        }
        // Each renewal attempt is bounded, so a hung API call cannot outlive the deadline.
        let left = cfg.renew_deadline.saturating_sub(renewed.elapsed());
        match tokio::time::timeout(left, try_acquire_or_renew(&api, &cfg, &mut candidate)).await {
            Ok(Ok(true)) => renewed = Instant::now(),
            Ok(Ok(false)) => anyhow::bail!(
                "lost the lease {}/{} to another replica: stopping so a restart campaigns again",
                cfg.namespace,
                cfg.name
            ),
            Ok(Err(e)) => {
                tracing::warn!(lease = %cfg.name, error = %e, "renewing the lease failed; retrying")
            }
            Err(_) => {}
        }
        if renewed.elapsed() >= cfg.renew_deadline {
            anyhow::bail!(
                "could not renew the lease {}/{} for {:?}: stopping the reconcilers so no two replicas reconcile at once",
                cfg.namespace,
                cfg.name,
                cfg.renew_deadline
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(identity: &str) -> LeaseConfig {
        LeaseConfig::new(
            "heddle-manager".into(),
            "heddle-system".into(),
            identity.into(),
        )
    }

    fn lease(holder: Option<&str>, renew_secs: i64, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("heddle-manager".into()),
                namespace: Some("heddle-system".into()),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(duration),
                renew_time: Some(MicroTime(
                    k8s_openapi::jiff::Timestamp::from_second(renew_secs).unwrap(),
                )),
                lease_transitions: Some(3),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_missing_lease_is_created_and_an_empty_holder_is_taken() {
        let (me, t0) = (cfg("a"), Instant::now());
        assert_eq!(Candidate::default().step(&me, None, t0), Step::Create);
        assert_eq!(
            Candidate::default().step(&me, Some(&lease(None, 100, 15)), t0),
            Step::Take { transition: true }
        );
    }

    #[test]
    fn a_live_holder_is_followed_until_its_record_stops_changing_for_the_lease_duration() {
        let me = cfg("b");
        let mut c = Candidate::default();
        let t0 = Instant::now();
        let other = lease(Some("a"), 100, 15);
        let follow = Step::Follow { holder: "a".into() };
        assert_eq!(c.step(&me, Some(&other), t0), follow);
        // The holder renews at 10 s: the clock restarts from that observation.
        let renewed = lease(Some("a"), 110, 15);
        assert_eq!(
            c.step(&me, Some(&renewed), t0 + Duration::from_secs(10)),
            follow
        );
        assert_eq!(
            c.step(&me, Some(&renewed), t0 + Duration::from_secs(24)),
            follow
        );
        // 15 s after the last change seen here, the lease is expired: take it over.
        assert_eq!(
            c.step(&me, Some(&renewed), t0 + Duration::from_secs(25)),
            Step::Take { transition: true }
        );
    }

    #[test]
    fn expiry_is_judged_on_the_local_clock_not_the_holders_renew_time() {
        // A renewTime far in the past (a holder whose wall clock is behind) is not expired
        // for a candidate that has only just seen it.
        let me = cfg("b");
        let ancient = lease(Some("a"), 0, 15);
        let t0 = Instant::now();
        let mut c = Candidate::default();
        assert_eq!(
            c.step(&me, Some(&ancient), t0),
            Step::Follow { holder: "a".into() }
        );
        assert_eq!(
            c.step(&me, Some(&ancient), t0 + Duration::from_secs(16)),
            Step::Take { transition: true }
        );
    }

    #[test]
    fn the_holder_renews_without_a_transition_and_keeps_its_acquire_time() {
        let me = cfg("a");
        let mut mine = lease(Some("a"), 100, 15);
        mine.spec.as_mut().unwrap().acquire_time = Some(MicroTime(
            k8s_openapi::jiff::Timestamp::from_second(50).unwrap(),
        ));
        assert_eq!(
            Candidate::default().step(&me, Some(&mine), Instant::now()),
            Step::Take { transition: false }
        );
        let written = held(&me, Some(&mine), false);
        let spec = written.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.acquire_time, mine.spec.unwrap().acquire_time);
        // The write carries the resourceVersion it read: a racing writer gets 409.
        assert_eq!(written.metadata.resource_version.as_deref(), Some("7"));
        let taken = held(&cfg("b"), Some(&lease(Some("a"), 100, 15)), true);
        assert_eq!(taken.spec.unwrap().lease_transitions, Some(4));
    }

    type Handle = tower_test::mock::Handle<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >;

    async fn answer(
        h: &mut Handle,
        method: &str,
        path: &str,
        status: u16,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let (req, send) = h.next_request().await.expect("a request");
        assert_eq!((req.method().as_str(), req.uri().path()), (method, path));
        let bytes = req.into_body().collect_bytes().await.unwrap();
        // A null reply echoes the request, as the API server does for a create.
        let reply = if body.is_null() {
            bytes.to_vec()
        } else {
            serde_json::to_vec(&body).unwrap()
        };
        send.send_response(
            http::Response::builder()
                .status(status)
                .body(kube::client::Body::from(reply))
                .unwrap(),
        );
        if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        }
    }

    fn not_found() -> serde_json::Value {
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not found"})
    }

    const PATH: &str =
        "/apis/coordination.k8s.io/v1/namespaces/heddle-system/leases/heddle-manager";
    const COLLECTION: &str = "/apis/coordination.k8s.io/v1/namespaces/heddle-system/leases";

    #[tokio::test]
    async fn the_first_candidate_creates_the_lease_holding_it() {
        let (svc, mut h) = tower_test::mock::pair();
        let api: Api<Lease> = Api::namespaced(Client::new(svc, "default"), "heddle-system");
        let me = cfg("pod-a");
        let task = tokio::spawn(async move {
            let mut c = Candidate::default();
            try_acquire_or_renew(&api, &me, &mut c).await
        });
        answer(&mut h, "GET", PATH, 404, not_found()).await;
        let sent = answer(&mut h, "POST", COLLECTION, 201, serde_json::Value::Null).await;
        assert_eq!(sent["spec"]["holderIdentity"], "pod-a");
        assert_eq!(sent["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(sent["spec"]["leaseTransitions"], 0);
        assert!(
            task.await.unwrap().unwrap(),
            "the creator must hold the lease"
        );
    }

    #[tokio::test]
    async fn of_two_candidates_taking_an_expired_lease_the_one_refused_with_409_follows() {
        let (svc, mut h) = tower_test::mock::pair();
        let api: Api<Lease> = Api::namespaced(Client::new(svc, "default"), "heddle-system");
        let mut me = cfg("pod-b");
        me.lease_duration = Duration::from_millis(1);
        let task = tokio::spawn(async move {
            let mut c = Candidate::default();
            // First look: pod-a's record is new to us, so it is live.
            let first = try_acquire_or_renew(&api, &me, &mut c).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            // Second look, unchanged after more than its duration: take it; pod-c won the race.
            let second = try_acquire_or_renew(&api, &me, &mut c).await.unwrap();
            (first, second)
        });
        let expired = serde_json::to_value(lease(Some("pod-a"), 100, 0)).unwrap();
        answer(&mut h, "GET", PATH, 200, expired.clone()).await;
        answer(&mut h, "GET", PATH, 200, expired).await;
        let sent = answer(
            &mut h,
            "PUT",
            PATH,
            409,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409, "reason": "Conflict", "message": "the object has been modified"}),
        )
        .await;
        assert_eq!(
            sent["metadata"]["resourceVersion"], "7",
            "the takeover must be conditional"
        );
        assert_eq!(sent["spec"]["holderIdentity"], "pod-b");
        assert_eq!(sent["spec"]["leaseTransitions"], 4);
        assert_eq!(task.await.unwrap(), (false, false));
    }
}
