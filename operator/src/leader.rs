//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics, so that
//! several operator replicas can run and exactly one of them reconciles.
//!
//! - A candidate takes the Lease when it is free (no holder: never held, or released) or when
//!   it has not changed for the holder's `leaseDurationSeconds`, as measured on the candidate's
//!   own clock from when it last saw the Lease change. Clocks therefore need not agree.
//! - The leader renews every `retry` period (a sixth of the lease duration). If it cannot renew
//!   for `renew_deadline` (two thirds of it), a standby may already have taken over, so it stops
//!   reconciling at once and reports [`Error::LostLease`]; the binary exits 1 and Kubernetes
//!   restarts it as a candidate.
//! - When its work ends (SIGTERM), the leader releases the Lease, so a standby takes over within
//!   one retry period rather than a lease duration.
//! - A replica that restarts with the identity it held the Lease under (the pod's name, which a
//!   container restart keeps) takes the Lease back at once.
//! - Every write carries the Lease's resourceVersion, so of two candidates racing for it exactly
//!   one wins.

use std::future::Future;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

use crate::context::{Error, kube_error};
use crate::metrics::Metrics;

/// One candidate for the Lease `name` in `namespace`.
pub struct Election {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

/// What a candidate does with the Lease as it finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    Take,
    Renew,
    Wait,
}

impl Election {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration: duration.max(Duration::from_secs(1)),
        }
    }

    fn retry(&self) -> Duration {
        self.duration / 6
    }

    fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// Runs `work` while this candidate holds the Lease: waits for it (returning without running
    /// `work` if `shutdown` resolves first), renews it while `work` runs, and releases it when
    /// `work` ends. Losing the Lease drops `work` at once and is an error.
    pub async fn lead<W: Future<Output = ()>>(
        &self,
        metrics: &Metrics,
        shutdown: impl Future<Output = ()>,
        work: W,
    ) -> Result<(), Error> {
        if !self.acquire(metrics, shutdown).await {
            return Ok(());
        }
        metrics.set_ready();
        metrics.set_leader(true);
        tracing::info!(identity = %self.identity, lease = %self.name, "leading");
        let held = self.hold(work).await;
        metrics.set_leader(false);
        if held.is_ok() {
            self.release().await;
        }
        held
    }

    /// Waits until this candidate holds the Lease; false when `shutdown` came first.
    async fn acquire(&self, metrics: &Metrics, shutdown: impl Future<Output = ()>) -> bool {
        tokio::pin!(shutdown);
        let mut seen: Option<(String, Instant)> = None;
        let mut waiting_for = None;
        loop {
            match self.try_acquire(&mut seen).await {
                Ok(None) => return true,
                Ok(Some(holder)) => {
                    metrics.set_ready();
                    if waiting_for.as_ref() != Some(&holder) {
                        tracing::info!(identity = %self.identity, %holder, "waiting for the leader Lease");
                        waiting_for = Some(holder);
                    }
                }
                Err(error) => tracing::warn!(%error, "trying for the leader Lease"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.retry()) => {}
                () = &mut shutdown => return false,
            }
        }
    }

    /// One attempt: `None` when this candidate now holds the Lease, else who does.
    async fn try_acquire(&self, seen: &mut Option<(String, Instant)>) -> Result<Option<String>, Error> {
        let now = Instant::now();
        let Some(lease) = self.api.get_opt(&self.name).await.map_err(kube_error("reading the leader Lease"))? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(held(None, &self.identity, self.duration, Timestamp::now())),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(None),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(Some("another candidate".to_owned())),
                Err(error) => Err(kube_error("creating the leader Lease")(error)),
            };
        };
        let version = lease.resource_version().unwrap_or_default();
        let changed_at = match seen {
            Some((seen_version, at)) if *seen_version == version => *at,
            _ => seen.insert((version, now)).1,
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if claim(&spec, &self.identity, now - changed_at) == Claim::Wait {
            return Ok(Some(holder));
        }
        let mut taken = lease;
        taken.spec = Some(held(Some(&spec), &self.identity, self.duration, Timestamp::now()));
        match self.api.replace(&self.name, &PostParams::default(), &taken).await {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Some(holder)),
            Err(error) => Err(kube_error("taking the leader Lease")(error)),
        }
    }

    /// Renews the Lease every retry period until `work` ends.
    async fn hold<W: Future<Output = ()>>(&self, work: W) -> Result<(), Error> {
        tokio::pin!(work);
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                () = &mut work => return Ok(()),
                () = tokio::time::sleep(self.retry()) => {}
            }
            match self.renew().await {
                Ok(()) => renewed = Instant::now(),
                Err(error @ Error::LostLease { .. }) => return Err(error),
                Err(error) if renewed.elapsed() >= self.renew_deadline() => {
                    tracing::error!(%error, "could not renew the leader Lease in time");
                    return Err(Error::LostLease {
                        identity: self.identity.clone(),
                        holder: format!("unknown (not renewed for {:?})", renewed.elapsed()),
                    });
                }
                Err(error) => tracing::warn!(%error, "renewing the leader Lease; will retry"),
            }
        }
    }

    async fn renew(&self) -> Result<(), Error> {
        let mut lease = self.api.get(&self.name).await.map_err(kube_error("reading the leader Lease"))?;
        let spec = lease.spec.clone().unwrap_or_default();
        if claim(&spec, &self.identity, Duration::ZERO) != Claim::Renew {
            return Err(Error::LostLease {
                identity: self.identity.clone(),
                holder: spec.holder_identity.unwrap_or_default(),
            });
        }
        lease.spec = Some(held(Some(&spec), &self.identity, self.duration, Timestamp::now()));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map_err(kube_error("renewing the leader Lease"))?;
        Ok(())
    }

    /// Gives the Lease up, so that a standby need not wait for it to expire.
    async fn release(&self) {
        let released = async {
            let mut lease = self.api.get(&self.name).await?;
            let spec = lease.spec.clone().unwrap_or_default();
            if claim(&spec, &self.identity, Duration::ZERO) == Claim::Renew {
                lease.spec = Some(released(&spec, Timestamp::now()));
                self.api.replace(&self.name, &PostParams::default(), &lease).await?;
            }
            Ok::<_, kube::Error>(())
        };
        match released.await {
            Ok(()) => tracing::info!(identity = %self.identity, "released the leader Lease"),
            Err(error) => tracing::warn!(%error, "releasing the leader Lease; a standby takes over when it expires"),
        }
    }
}

/// Whether a candidate named `identity` may write `spec`, given how long the Lease has gone
/// unchanged in its eyes.
fn claim(spec: &LeaseSpec, identity: &str, unchanged_for: Duration) -> Claim {
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => Claim::Renew,
        None | Some("") => Claim::Take,
        Some(_) => {
            let seconds = spec.lease_duration_seconds.unwrap_or(0).max(1);
            if unchanged_for >= Duration::from_secs(u64::from(seconds.unsigned_abs())) {
                Claim::Take
            } else {
                Claim::Wait
            }
        }
    }
}

/// The Lease as `identity` writes it when it takes or renews `previous`.
fn held(previous: Option<&LeaseSpec>, identity: &str, duration: Duration, now: Timestamp) -> LeaseSpec {
    let renewing = previous.and_then(|p| p.holder_identity.as_deref()) == Some(identity);
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    let taken_over = previous.is_some_and(|p| p.acquire_time.is_some()) && !renewing;
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: match previous {
            Some(p) if renewing => p.acquire_time.clone(),
            _ => Some(MicroTime(now)),
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if taken_over { transitions + 1 } else { transitions }),
        ..Default::default()
    }
}

/// The Lease as its holder leaves it: no holder, and a one-second duration, as client-go
/// releases it.
fn released(spec: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: spec.lease_transitions,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            lease_transitions: Some(3),
            ..Default::default()
        }
    }

    #[test]
    fn a_held_lease_is_waited_for_until_it_has_gone_unrenewed_for_its_duration() {
        let spec = lease(Some("a"), 15);
        assert_eq!(claim(&spec, "b", Duration::from_secs(14)), Claim::Wait);
        assert_eq!(claim(&spec, "b", Duration::from_secs(15)), Claim::Take);
        assert_eq!(claim(&spec, "a", Duration::ZERO), Claim::Renew, "the holder renews, restarted or not");
    }

    #[test]
    fn a_free_or_released_lease_is_taken_at_once() {
        assert_eq!(claim(&LeaseSpec::default(), "b", Duration::ZERO), Claim::Take);
        assert_eq!(claim(&released(&lease(Some("a"), 15), Timestamp::now()), "b", Duration::ZERO), Claim::Take);
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let now = Timestamp::from_second(1_000).unwrap();
        let taken = held(Some(&lease(Some("a"), 15)), "b", Duration::from_secs(15), now);
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));

        let later = Timestamp::from_second(1_002).unwrap();
        let renewed = held(Some(&taken), "b", Duration::from_secs(15), later);
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, Some(MicroTime(now)));
        assert_eq!(renewed.renew_time, Some(MicroTime(later)));

        let first = held(None, "a", Duration::from_secs(15), now);
        assert_eq!((first.lease_transitions, first.lease_duration_seconds), (Some(0), Some(15)));
    }
}
