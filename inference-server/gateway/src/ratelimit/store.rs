//! Where budgets are counted: in this replica's memory, or in a Redis every replica shares.
//!
//! Budgets are fixed one-minute windows aligned to the clock (the upstream API's "renewal
//! period"): the counter of window `w` holds what was used from second `60·w` to `60·w + 59`,
//! and a refused caller is told to come back when the window renews. Calls are counted when a
//! request is admitted, and only when every budget of the request has room, so a refused request
//! uses nothing; tokens are charged when the answer has ended, so the request that crosses a
//! token budget completes and the next one is refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::RwLock;

use super::budgets::{Budget, Measure};

/// Seconds in a window.
pub const WINDOW_SECONDS: u64 = 60;

/// How long a window's counter outlives it in Redis.
const KEY_TTL_SECONDS: u64 = 2 * WINDOW_SECONDS;

/// Most counters kept in memory; the oldest windows are dropped first.
const MAX_LOCAL_COUNTERS: usize = 100_000;

/// The verdict on a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every budget had room; calls were counted.
    Admitted,
    /// The budget at this index is spent for the window.
    Spent(usize),
}

/// The shared store could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis answered an error, or the connection failed.
    #[error("Redis at {url}: {source}")]
    Redis {
        /// The store.
        url: String,
        /// The cause.
        #[source]
        source: redis::RedisError,
    },
    /// Redis did not answer within the timeout.
    #[error("Redis at {url} did not answer within {timeout:?}")]
    Timeout {
        /// The store.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
}

/// Counters in this replica's memory.
#[derive(Debug, Default)]
pub struct LocalCounters {
    counters: Mutex<HashMap<String, (u64, u64)>>,
}

impl LocalCounters {
    /// Admits a request against `budgets` in `window`.
    pub fn admit(&self, budgets: &[Budget], window: u64) -> Verdict {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let used = |counters: &HashMap<String, (u64, u64)>, key: &str| match counters.get(key) {
            Some((w, used)) if *w == window => *used,
            _ => 0,
        };
        if let Some(spent) = budgets
            .iter()
            .position(|b| used(&counters, &b.key) >= b.limit)
        {
            return Verdict::Spent(spent);
        }
        for budget in budgets.iter().filter(|b| b.measure == Measure::Calls) {
            add(&mut counters, &budget.key, window, 1);
        }
        Verdict::Admitted
    }

    /// Adds `tokens` to each of `budgets` in `window`.
    pub fn charge(&self, budgets: &[Budget], window: u64, tokens: u64) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        for budget in budgets {
            add(&mut counters, &budget.key, window, tokens);
        }
    }
}

fn add(counters: &mut HashMap<String, (u64, u64)>, key: &str, window: u64, amount: u64) {
    if counters.len() >= MAX_LOCAL_COUNTERS && !counters.contains_key(key) {
        counters.retain(|_, (w, _)| *w >= window);
        if counters.len() >= MAX_LOCAL_COUNTERS {
            // Every counter is current: forget them all rather than grow without bound (a
            // flood of distinct principals); the metric of store errors does not apply, so log.
            tracing::warn!(
                counters = counters.len(),
                "too many rate-limit counters in one window; starting over"
            );
            counters.clear();
        }
    }
    let entry = counters.entry(key.to_string()).or_insert((window, 0));
    if entry.0 != window {
        *entry = (window, 0);
    }
    entry.1 = entry.1.saturating_add(amount);
}

/// Checks every budget, then counts calls, in one atomic step on the Redis server.
/// KEYS: the budgets' keys for the window. ARGV: the key TTL, then per budget its limit and
/// whether it counts calls (`1`). Answers 0 when admitted, else the 1-based spent budget.
const ADMIT: &str = r"
for i, key in ipairs(KEYS) do
  local used = tonumber(redis.call('GET', key) or '0')
  if used >= tonumber(ARGV[2 * i]) then
    return i
  end
end
for i, key in ipairs(KEYS) do
  if ARGV[2 * i + 1] == '1' then
    redis.call('INCR', key)
    redis.call('EXPIRE', key, ARGV[1])
  end
end
return 0
";

/// Counters in a Redis server every replica shares.
pub struct RedisCounters {
    url: String,
    client: redis::Client,
    timeout: Duration,
    connection: RwLock<Option<ConnectionManager>>,
    admit: redis::Script,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounters")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisCounters {
    /// Counters in the Redis at `url` (`redis://host:port/db`), each command bounded by
    /// `timeout`. Nothing is dialled until the first request.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        Ok(Self {
            url: redacted(url),
            client: redis::Client::open(url)?,
            timeout,
            connection: RwLock::new(None),
            admit: redis::Script::new(ADMIT),
        })
    }

    /// The URL, without a password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Admits a request against `budgets` in `window`.
    pub async fn admit(&self, budgets: &[Budget], window: u64) -> Result<Verdict, StoreError> {
        let mut invocation = self.admit.prepare_invoke();
        invocation.arg(KEY_TTL_SECONDS);
        for budget in budgets {
            invocation
                .key(windowed(&budget.key, window))
                .arg(budget.limit)
                .arg(u8::from(budget.measure == Measure::Calls));
        }
        let mut connection = self.connection().await?;
        let answer: i64 = self
            .bounded(invocation.invoke_async(&mut connection))
            .await?;
        Ok(match usize::try_from(answer) {
            Ok(0) | Err(_) => Verdict::Admitted,
            Ok(spent) => Verdict::Spent(spent - 1),
        })
    }

    /// Adds `tokens` to each of `budgets` in `window`.
    pub async fn charge(
        &self,
        budgets: &[Budget],
        window: u64,
        tokens: u64,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for budget in budgets {
            let key = windowed(&budget.key, window);
            pipe.incr(&key, tokens)
                .ignore()
                .expire(&key, KEY_TTL_SECONDS as i64)
                .ignore();
        }
        let mut connection = self.connection().await?;
        self.bounded(pipe.query_async::<()>(&mut connection)).await
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(StoreError::Redis {
                url: self.url.clone(),
                source,
            }),
            Err(_) => Err(StoreError::Timeout {
                url: self.url.clone(),
                timeout: self.timeout,
            }),
        }
    }

    /// The shared connection, made on first use; the manager reconnects by itself after.
    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(connection) = self.connection.read().await.as_ref() {
            return Ok(connection.clone());
        }
        let mut slot = self.connection.write().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(2);
        let connection = self
            .bounded(self.client.get_connection_manager_with_config(config))
            .await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }
}

fn windowed(key: &str, window: u64) -> String {
    format!("{key}:{window}")
}

/// `url` with any password replaced, for messages and logs.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(key: &str, measure: Measure, limit: u64) -> Budget {
        Budget {
            key: key.into(),
            measure,
            limit,
            rule: String::new(),
        }
    }

    #[test]
    fn local_calls_stop_at_the_limit_and_renew_with_the_window() {
        let counters = LocalCounters::default();
        let budgets = [
            budget("user", Measure::Calls, 3),
            budget("endpoint", Measure::Calls, 100),
        ];
        for _ in 0..3 {
            assert_eq!(counters.admit(&budgets, 7), Verdict::Admitted);
        }
        assert_eq!(counters.admit(&budgets, 7), Verdict::Spent(0));
        // A refused request used nothing from the other budget.
        assert_eq!(counters.counters.lock().unwrap()["endpoint"], (7, 3));
        assert_eq!(counters.admit(&budgets, 8), Verdict::Admitted);
    }

    #[test]
    fn tokens_are_charged_after_the_fact() {
        let counters = LocalCounters::default();
        let budgets = [budget("t", Measure::Tokens, 100)];
        assert_eq!(counters.admit(&budgets, 1), Verdict::Admitted);
        counters.charge(&budgets, 1, 150);
        assert_eq!(counters.admit(&budgets, 1), Verdict::Spent(0));
        assert_eq!(counters.admit(&budgets, 2), Verdict::Admitted);
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redacted("redis://:hunter2@redis.sluice:6379/0"),
            "redis://***@redis.sluice:6379/0"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
