//! Which budgets a request is counted against: the pure step from an endpoint's
//! `spec.aiGateway.rateLimits` and a verified caller to store keys and limits.

use sluice_crds::{RateLimit, RateLimitKey};

use crate::auth::Identity;

/// Prefix of every store key, so a shared Redis can hold other data.
pub const KEY_PREFIX: &str = "sluice:rl";

/// What a budget counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// Requests admitted.
    Calls,
    /// Input plus output tokens, charged once each answer has ended.
    Tokens,
}

impl Measure {
    /// The metric label and key part.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Calls => "calls",
            Self::Tokens => "tokens",
        }
    }
}

/// One budget a request is counted against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The store key, without the window.
    pub key: String,
    /// What it counts.
    pub measure: Measure,
    /// The most allowed per minute (on this replica, for a per-replica share).
    pub limit: u64,
    /// The limit as written, for messages.
    pub rule: String,
}

/// Whether `identity` is a service principal: a Kubernetes ServiceAccount, or a caller with a
/// Sluice API key (keys are minted for programs).
pub fn is_service_principal(identity: &Identity) -> bool {
    identity.key.is_some() || identity.user.starts_with("system:serviceaccount:")
}

/// The budgets a call of `identity` to `namespace/endpoint` is counted against, each limit
/// divided by `share` (the replicas splitting the budget without a shared store).
pub fn budgets(
    namespace: &str,
    endpoint: &str,
    limits: &[RateLimit],
    identity: &Identity,
    share: u32,
) -> Vec<Budget> {
    let mut out = Vec::new();
    for (index, limit) in limits.iter().enumerate() {
        let subjects: Vec<String> = match limit.key {
            RateLimitKey::Endpoint => vec![String::new()],
            RateLimitKey::User => vec![identity.user.clone()],
            RateLimitKey::ServicePrincipal if is_service_principal(identity) => {
                vec![identity.user.clone()]
            }
            RateLimitKey::ServicePrincipal => Vec::new(),
            RateLimitKey::UserGroup => identity.groups.clone(),
        };
        let key_label = key_label(limit.key);
        for subject in subjects {
            if limit
                .principal
                .as_deref()
                .is_some_and(|only| only != subject)
            {
                continue;
            }
            for (measure, amount) in [
                (Measure::Calls, limit.calls),
                (Measure::Tokens, limit.tokens),
            ] {
                let Some(amount) = amount.and_then(|n| u64::try_from(n).ok()) else {
                    continue;
                };
                let whom = if subject.is_empty() {
                    String::new()
                } else {
                    format!(" ({subject})")
                };
                out.push(Budget {
                    key: format!(
                        "{KEY_PREFIX}:{namespace}/{endpoint}:{index}:{}:{key_label}:{subject}",
                        measure.label()
                    ),
                    measure,
                    limit: amount.div_ceil(u64::from(share.max(1))),
                    rule: format!(
                        "{amount} {} per minute per {key_label}{whom}",
                        measure.label()
                    ),
                });
            }
        }
    }
    out
}

fn key_label(key: RateLimitKey) -> &'static str {
    match key {
        RateLimitKey::Endpoint => "endpoint",
        RateLimitKey::User => "user",
        RateLimitKey::UserGroup => "user_group",
        RateLimitKey::ServicePrincipal => "service_principal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeyScope;
    use sluice_crds::RenewalPeriod;

    fn limit(
        key: RateLimitKey,
        calls: Option<i64>,
        tokens: Option<i64>,
        principal: Option<&str>,
    ) -> RateLimit {
        RateLimit {
            calls,
            tokens,
            key,
            principal: principal.map(str::to_string),
            renewal_period: RenewalPeriod::Minute,
        }
    }

    fn user(name: &str, groups: &[&str]) -> Identity {
        Identity {
            user: name.into(),
            groups: groups.iter().map(|g| (*g).to_string()).collect(),
            uid: None,
            key: None,
        }
    }

    #[test]
    fn each_key_kind_counts_its_own_subject() {
        let limits = [
            limit(RateLimitKey::Endpoint, Some(1000), None, None),
            limit(RateLimitKey::User, Some(60), Some(5000), None),
            limit(RateLimitKey::UserGroup, None, Some(100), Some("ml")),
            limit(RateLimitKey::ServicePrincipal, Some(10), None, None),
        ];
        let alice = budgets("team", "chat", &limits, &user("alice", &["ml", "eng"]), 1);
        let keys: Vec<&str> = alice.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "sluice:rl:team/chat:0:calls:endpoint:",
                "sluice:rl:team/chat:1:calls:user:alice",
                "sluice:rl:team/chat:1:tokens:user:alice",
                "sluice:rl:team/chat:2:tokens:user_group:ml",
            ]
        );
        assert_eq!(alice[1].rule, "60 calls per minute per user (alice)");

        let robot = Identity {
            key: Some(KeyScope {
                id: "0123456789ab".into(),
                endpoints: vec![],
            }),
            ..user("batch", &[])
        };
        let sa = user(
            "system:serviceaccount:team:scorer",
            &["system:serviceaccounts"],
        );
        for caller in [robot, sa] {
            let found = budgets("team", "chat", &limits, &caller, 1);
            assert!(
                found.iter().any(|b| b
                    .key
                    .ends_with(&format!(":service_principal:{}", caller.user))),
                "{found:?}"
            );
        }
    }

    #[test]
    fn a_per_replica_share_rounds_up() {
        let limits = [limit(RateLimitKey::Endpoint, Some(61), Some(1), None)];
        let shared = budgets("a", "b", &limits, &Identity::anonymous(), 2);
        assert_eq!(shared.iter().map(|b| b.limit).collect::<Vec<_>>(), [31, 1]);
    }
}
