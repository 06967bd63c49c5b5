//! Gateway policies: rate limits, usage tracking, guardrails, fallback.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Policies the gateway applies to every request of the endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AiGatewayConfig {
    /// Request and token budgets per minute; a request over any budget gets 429
    /// `REQUEST_LIMIT_EXCEEDED`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub rate_limits: Vec<RateLimit>,
    /// Record per-request usage (requester, tokens in and out) in a usage table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_tracking: Option<UsageTracking>,
    /// Content checks on requests and responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardrails: Option<Guardrails>,
    /// Retry a failed request (5xx) on the other served entities, in list order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// Answer a repeated request from the gateway's memory instead of the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_cache: Option<ResponseCache>,
}

/// The response cache of an endpoint: a request equal to an earlier one (same route, same body
/// once normalised: key order and whitespace do not matter) within `ttlSeconds` gets the
/// earlier answer, with `x-sluice-cache: hit`, and no model is called. Only whole (not
/// streamed) successful answers are kept; chat and text completions only when deterministic
/// (`temperature: 0`) unless `cacheNonDeterministic`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResponseCache {
    /// Whether answers are cached.
    pub enabled: bool,
    /// How long an answer is reused. Defaults to 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub ttl_seconds: Option<i32>,
    /// Most memory the endpoint's cached answers take in each gateway replica, in MiB; the
    /// least recently used go first. Defaults to 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16384))]
    pub max_size_mib: Option<i32>,
    /// Cache chat and text completions sampled with a temperature above 0 too (every caller
    /// then gets the first sampled answer). Defaults to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_non_deterministic: Option<bool>,
}

/// One rate limit.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.calls) || has(self.tokens)")
        .message("a rate limit sets calls, tokens or both"),
    validation = Rule::new("!has(self.principal) || self.key != 'endpoint'")
        .message("principal applies only to the user, user_group and service_principal keys")
        .field_path(".principal"),
)]
pub struct RateLimit {
    /// Requests allowed per renewal period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000_000))]
    pub calls: Option<i64>,
    /// Tokens (input plus output) allowed per renewal period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000_000_000i64))]
    pub tokens: Option<i64>,
    /// What the budget is counted per: the whole `endpoint`, each `user`, each `user_group` or
    /// each `service_principal`.
    pub key: RateLimitKey,
    /// Limit only this user, group or service principal (else every one of the key's kind gets
    /// its own budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub principal: Option<String>,
    /// Budget window; only `minute`.
    pub renewal_period: RenewalPeriod,
}

// What a rate limit is counted per.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    /// One budget for the endpoint.
    #[default]
    Endpoint,
    /// One budget per caller.
    User,
    /// One budget per group of the caller.
    UserGroup,
    /// One budget per service principal (ServiceAccount).
    ServicePrincipal,
}

// Rate limit window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RenewalPeriod {
    /// Sixty seconds.
    #[default]
    Minute,
}

/// Usage tracking switch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageTracking {
    /// Whether usage records are written.
    pub enabled: bool,
}

/// Fallback switch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    /// Whether failed requests are retried on the other entities.
    pub enabled: bool,
}

/// Guardrails on requests (input) and responses (output).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Guardrails {
    /// Checks applied to requests before they reach a model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<GuardrailParameters>,
    /// Checks applied to responses before they reach the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<GuardrailParameters>,
}

/// One direction's guardrails.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailParameters {
    /// What to do with personal data (emails, phone and card numbers) found in the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pii: Option<PiiGuardrail>,
    /// Refuse text that matches any of these keywords (case-insensitive substring match).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 256)))]
    pub invalid_keywords: Vec<String>,
    /// Chat requests must be about one of these topics (keyword match).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 256)))]
    pub valid_topics: Vec<String>,
}

/// PII handling.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PiiGuardrail {
    /// `NONE` (pass), `BLOCK` (refuse with 400) or `MASK` (replace with a placeholder).
    pub behavior: PiiBehavior,
}

// PII behaviours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum PiiBehavior {
    /// Let it through.
    #[default]
    NONE,
    /// Refuse the request.
    BLOCK,
    /// Replace it with a placeholder.
    MASK,
}
