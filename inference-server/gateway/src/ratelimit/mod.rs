//! How much a caller may use: the `spec.aiGateway.rateLimits` of each endpoint, enforced per
//! request.
//!
//! A request is counted against every budget its caller falls under ([`budgets`]): the whole
//! endpoint, the user, each of the user's groups, the service principal (a ServiceAccount or an
//! API key), or only a named principal. Calls are counted on admission; tokens are read from the
//! answer as it streams past ([`sluice_protocol::usage`]) and charged when it ends. A spent
//! budget answers 429 `REQUEST_LIMIT_EXCEEDED` with `Retry-After` set to when it renews.
//!
//! The counters ([`store`]) live in a Redis every replica shares (`--rate-limit-redis`), or,
//! without one, in each replica's memory, each replica then allowing its share of every budget
//! (`--rate-limit-replicas`: the limit divided by the replica count, rounded up). When Redis
//! cannot be asked within `--rate-limit-timeout`, `--rate-limit-fail-mode` decides: `open`
//! lets the request through, `closed` answers 503; either way it is counted
//! (`sluice_gateway_rate_limit_store_failures_total`).

pub mod budgets;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_crds::RateLimit;
use sluice_protocol::{ApiError, ErrorKind};

use crate::auth::Identity;
use crate::metrics::{GatewayMetrics, StoreFailure};
use budgets::{Budget, Measure};
use store::{LocalCounters, RedisCounters, Verdict, WINDOW_SECONDS};

/// What the gateway does when the shared store cannot be asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FailMode {
    /// Let the request through, uncounted.
    #[default]
    Open,
    /// Refuse it with 503 and `Retry-After`.
    Closed,
}

/// Where the counters are.
#[derive(Debug)]
enum Counters {
    Local(LocalCounters),
    Redis(Box<RedisCounters>),
}

/// The rate limiter of every endpoint.
#[derive(Debug)]
pub struct RateLimiter {
    counters: Counters,
    fail_mode: FailMode,
    share: u32,
    metrics: GatewayMetrics,
}

/// Token budgets of an admitted request, charged when its answer ends.
#[derive(Debug)]
pub struct Admission {
    budgets: Vec<Budget>,
    window: u64,
}

impl RateLimiter {
    /// Counters in this replica's memory; each replica allows `1/share` of every budget.
    pub fn local(share: u32, metrics: GatewayMetrics) -> Self {
        Self {
            counters: Counters::Local(LocalCounters::default()),
            fail_mode: FailMode::Open,
            share: share.max(1),
            metrics,
        }
    }

    /// Counters in a shared Redis.
    pub fn redis(counters: RedisCounters, fail_mode: FailMode, metrics: GatewayMetrics) -> Self {
        Self {
            counters: Counters::Redis(Box::new(counters)),
            fail_mode,
            share: 1,
            metrics,
        }
    }

    /// Admits a call of `identity` to `namespace/endpoint` under `limits`, or refuses it
    /// (429 when a budget is spent, 503 when the store is down and the fail mode is closed).
    /// The admission, when it holds token budgets, is charged with [`charge`](Self::charge).
    pub async fn admit(
        &self,
        namespace: &str,
        endpoint: &str,
        limits: &[RateLimit],
        identity: &Identity,
    ) -> Result<Option<Admission>, ApiError> {
        if limits.is_empty() {
            return Ok(None);
        }
        let budgets = budgets::budgets(namespace, endpoint, limits, identity, self.share);
        if budgets.is_empty() {
            return Ok(None);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let window = now / WINDOW_SECONDS;
        let verdict = match &self.counters {
            Counters::Local(counters) => Ok(counters.admit(&budgets, window)),
            Counters::Redis(counters) => counters.admit(&budgets, window).await,
        };
        let admitted = |budgets: Vec<Budget>| {
            let budgets: Vec<Budget> = budgets
                .into_iter()
                .filter(|b| b.measure == Measure::Tokens)
                .collect();
            (!budgets.is_empty()).then_some(Admission { budgets, window })
        };
        match verdict {
            Ok(Verdict::Admitted) => Ok(admitted(budgets)),
            Ok(Verdict::Spent(index)) => {
                let budget = &budgets[index];
                self.metrics
                    .rate_limited(namespace, endpoint, budget.measure.label());
                let renews = WINDOW_SECONDS - now % WINDOW_SECONDS;
                Err(ApiError::new(
                    ErrorKind::RequestLimitExceeded,
                    format!(
                        "rate limit of serving endpoint {namespace}/{endpoint} reached: {}; \
                         the budget renews in {renews}s",
                        budget.rule
                    ),
                )
                .with_retry_after(Duration::from_secs(renews)))
            }
            Err(error) => match self.fail_mode {
                FailMode::Open => {
                    self.metrics.store_failure(StoreFailure::Admitted);
                    tracing::warn!(%error, "rate limits not checked; letting the request through (fail mode open)");
                    Ok(admitted(budgets))
                }
                FailMode::Closed => {
                    self.metrics.store_failure(StoreFailure::Refused);
                    tracing::warn!(%error, "rate limits not checked; refusing the request (fail mode closed)");
                    Err(ApiError::new(
                        ErrorKind::Unavailable,
                        format!(
                            "rate limits of serving endpoint {namespace}/{endpoint} cannot be \
                             checked: {error}"
                        ),
                    )
                    .with_retry_after(Duration::from_secs(1)))
                }
            },
        }
    }

    /// Charges `tokens` to the token budgets of `admission`, in the window it was admitted in.
    /// Redis is asked in the background: the answer has already ended.
    pub fn charge(self: &Arc<Self>, admission: Admission, tokens: u64) {
        if tokens == 0 {
            return;
        }
        match &self.counters {
            Counters::Local(counters) => {
                counters.charge(&admission.budgets, admission.window, tokens);
            }
            Counters::Redis(_) => {
                let limiter = self.clone();
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    self.metrics.store_failure(StoreFailure::Uncharged);
                    return;
                };
                runtime.spawn(async move {
                    let Counters::Redis(counters) = &limiter.counters else {
                        return;
                    };
                    if let Err(error) = counters
                        .charge(&admission.budgets, admission.window, tokens)
                        .await
                    {
                        limiter.metrics.store_failure(StoreFailure::Uncharged);
                        tracing::warn!(%error, tokens, "tokens not charged to their rate limits");
                    }
                });
            }
        }
    }
}
