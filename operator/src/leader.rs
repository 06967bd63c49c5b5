//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it:
//! a candidate takes the Lease when it is free or its holder stopped renewing for a whole lease
//! duration (measured on the candidate's own clock, so clock skew between nodes does not
//! matter), the holder renews it every retry period, and a holder that cannot renew within the
//! renew deadline, or sees another holder, has lost it. Every write carries the Lease's
//! `resourceVersion`, so two candidates can never both win.
//!
//! The pure step is [`decide`]; [`Elector`] does the I/O around it. The caller runs the
//! controllers only after [`Elector::acquire`] returns, and must stop writing (exit) as soon as
//! [`Elector::hold`] returns; on graceful shutdown it calls [`Elector::release`] so a standby
//! takes over at once instead of after a lease duration.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tracing::{info, instrument, warn};

use crate::health::Health;

/// Where the Lease is and how it is kept.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace (the operator's own).
    pub namespace: String,
    /// This process's identity (the pod name, else `hostname-pid`).
    pub identity: String,
    /// How long a Lease stays taken after its last renewal.
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it gives up leading.
    pub renew_deadline: Duration,
    /// How often candidates look and the holder renews.
    pub retry_period: Duration,
}

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// An API call on the Lease failed.
    #[error("{action} Lease {namespace}/{name}: {source}")]
    Kube {
        /// What was being done.
        action: &'static str,
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// Underlying error (boxed: it is large).
        #[source]
        source: Box<kube::Error>,
    },
    /// Another process took the Lease.
    #[error("Lease taken over by {holder}")]
    TakenOver {
        /// The new holder.
        holder: String,
    },
    /// Renewals kept failing for the whole renew deadline.
    #[error("could not renew the Lease within {0:?}")]
    RenewDeadline(Duration),
    /// The timings cannot work.
    #[error(
        "leader election needs retry period < renew deadline < lease duration (got {retry:?}, {renew:?}, {lease:?})"
    )]
    Timings {
        /// Retry period.
        retry: Duration,
        /// Renew deadline.
        renew: Duration,
        /// Lease duration.
        lease: Duration,
    },
}

/// What to do with the Lease as it was last read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease exists: create it, held by us.
    Create,
    /// Take it: it is free or expired (`transition`: a different holder had it).
    Take {
        /// Whether the holder changes (counts in `leaseTransitions`).
        transition: bool,
    },
    /// We hold it: renew.
    Renew,
    /// Someone else holds it and renews: wait.
    Wait {
        /// The holder.
        holder: String,
    },
}

/// Decides from the Lease `spec` (None when absent) for candidate `me`; `unchanged_for` is how
/// long this process has seen the same holder and renew time (zero when it just changed).
pub fn decide(spec: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> Decision {
    let Some(spec) = spec else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Take { transition: true };
    }
    let duration =
        Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
    if unchanged_for >= duration {
        Decision::Take { transition: true }
    } else {
        Decision::Wait {
            holder: holder.to_string(),
        }
    }
}

/// The Lease spec after we take or renew it at `now`.
pub fn claimed(
    previous: Option<&LeaseSpec>,
    decision: &Decision,
    me: &str,
    lease_duration: Duration,
    now: Timestamp,
) -> LeaseSpec {
    let previous = previous.cloned().unwrap_or_default();
    let (acquire_time, transitions) = match decision {
        Decision::Renew => (
            previous.acquire_time.clone().or(Some(MicroTime(now))),
            previous.lease_transitions.unwrap_or(0),
        ),
        Decision::Take { transition: true } => (
            Some(MicroTime(now)),
            previous.lease_transitions.unwrap_or(0) + 1,
        ),
        _ => (
            Some(MicroTime(now)),
            previous.lease_transitions.unwrap_or(0),
        ),
    };
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(i32::try_from(lease_duration.as_secs().max(1)).unwrap_or(15)),
        acquire_time,
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..previous
    }
}

/// The identity of this process: `POD_NAME` when set, else `<hostname>-<pid>`.
pub fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sluice-operator".into());
    format!("{host}-{}", std::process::id())
}

/// Holder identity and renew time: when either changes, the holder is alive.
type Observed = (Option<String>, Option<MicroTime>);

/// Takes, renews and releases the Lease.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The record last seen and when this process first saw it.
    observed: Option<(Observed, Instant)>,
}

impl Elector {
    /// An elector for `config`; checks the timings.
    pub fn new(client: Client, config: LeaseConfig) -> Result<Self, LeaderError> {
        if !(config.retry_period < config.renew_deadline
            && config.renew_deadline < config.lease_duration)
        {
            return Err(LeaderError::Timings {
                retry: config.retry_period,
                renew: config.renew_deadline,
                lease: config.lease_duration,
            });
        }
        Ok(Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        })
    }

    /// This process's identity.
    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    fn err(&self, action: &'static str) -> impl FnOnce(kube::Error) -> LeaderError + use<> {
        let (namespace, name) = (self.config.namespace.clone(), self.config.name.clone());
        move |source| LeaderError::Kube {
            action,
            namespace,
            name,
            source: Box::new(source),
        }
    }

    /// One look at the Lease: takes or renews it when [`decide`] says so. Ok(None) when we hold
    /// it afterwards, Ok(Some(holder)) when someone else does. A write that loses a race (409)
    /// reads as "someone else holds it".
    #[instrument(skip_all, fields(lease = %self.config.name))]
    async fn try_acquire_or_renew(&mut self) -> Result<Option<String>, LeaderError> {
        let lease = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(self.err("reading"))?;
        let spec = lease.as_ref().and_then(|l| l.spec.as_ref());
        let seen: Observed = (
            spec.and_then(|s| s.holder_identity.clone()),
            spec.and_then(|s| s.renew_time.clone()),
        );
        let now = Instant::now();
        let since = match &self.observed {
            Some((prev, at)) if *prev == seen => *at,
            _ => now,
        };
        self.observed = Some((seen, since));
        let decision = decide(spec, &self.config.identity, now - since);
        let new_spec = claimed(
            spec,
            &decision,
            &self.config.identity,
            self.config.lease_duration,
            Timestamp::now(),
        );
        let result = match (&decision, lease) {
            (Decision::Wait { holder }, _) => return Ok(Some(holder.clone())),
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(new_spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (_, Some(mut lease)) => {
                // Replace carries metadata.resourceVersion: a concurrent writer makes it 409.
                lease.spec = Some(new_spec);
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
            }
            (_, None) => return Ok(Some(String::new())),
        };
        match result {
            Ok(_) => {
                if decision != Decision::Renew {
                    info!(identity = %self.config.identity, "took the Lease");
                }
                Ok(None)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Some(String::new())),
            Err(e) => Err(self.err("writing")(e)),
        }
    }

    /// Waits until this process holds the Lease, keeping `health` informed while standing by.
    pub async fn acquire(&mut self, health: &Health) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(None) => return,
                Ok(Some(holder)) => {
                    health.set_lease_reachable(true);
                    tracing::debug!(%holder, "standing by");
                }
                Err(e) => {
                    health.set_lease_reachable(false);
                    warn!(error = %e, "leader election");
                }
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews the Lease every retry period; returns (the lease is lost) when another holder
    /// appears or no renewal succeeded within the renew deadline.
    pub async fn hold(&mut self) -> LeaderError {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            let deadline = last_renewal + self.config.renew_deadline;
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(None)) => last_renewal = Instant::now(),
                Ok(Ok(Some(holder))) if !holder.is_empty() => {
                    return LeaderError::TakenOver { holder };
                }
                Ok(Ok(Some(_))) => warn!("Lease renewal lost a write race; retrying"),
                Ok(Err(e)) => warn!(error = %e, "Lease renewal failed; retrying"),
                Err(_) => return LeaderError::RenewDeadline(self.config.renew_deadline),
            }
            if Instant::now() >= last_renewal + self.config.renew_deadline {
                return LeaderError::RenewDeadline(self.config.renew_deadline);
            }
        }
    }

    /// Gives the Lease up (holder cleared) if this process still holds it, so a standby takes
    /// it on its next look.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(self.err("reading"))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
            .map_err(self.err("releasing"))?;
        info!(identity = %self.config.identity, "released the Lease");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(seconds),
            lease_transitions: Some(3),
            acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            ..Default::default()
        }
    }

    #[test]
    fn a_missing_lease_is_created_and_a_free_one_taken() {
        assert_eq!(decide(None, "me", Duration::ZERO), Decision::Create);
        let free = LeaseSpec::default();
        assert_eq!(
            decide(Some(&free), "me", Duration::ZERO),
            Decision::Take { transition: true }
        );
    }

    #[test]
    fn a_live_holder_is_waited_for_until_it_stops_renewing() {
        let other = held_by("other", 15);
        assert_eq!(
            decide(Some(&other), "me", Duration::from_secs(14)),
            Decision::Wait {
                holder: "other".into()
            }
        );
        assert_eq!(
            decide(Some(&other), "me", Duration::from_secs(15)),
            Decision::Take { transition: true }
        );
        assert_eq!(
            decide(Some(&held_by("me", 15)), "me", Duration::from_secs(99)),
            Decision::Renew
        );
    }

    #[test]
    fn renewing_keeps_acquire_time_and_taking_counts_a_transition() {
        let now = Timestamp::from_second(1_000).expect("time");
        let prev = held_by("me", 15);
        let renewed = claimed(
            Some(&prev),
            &Decision::Renew,
            "me",
            Duration::from_secs(15),
            now,
        );
        assert_eq!(renewed.acquire_time, prev.acquire_time);
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));
        assert_eq!(renewed.lease_transitions, Some(3));
        let taken = claimed(
            Some(&held_by("other", 15)),
            &Decision::Take { transition: true },
            "me",
            Duration::from_secs(10),
            now,
        );
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.lease_duration_seconds, Some(10));
        let created = claimed(None, &Decision::Create, "me", Duration::from_secs(15), now);
        assert_eq!(created.lease_transitions, Some(0));
    }
}
