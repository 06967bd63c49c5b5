//! Pure steps between the Databricks serving-endpoints API and ServingEndpoint objects:
//! request bodies into specs (with the upstream defaults, every problem named by its field),
//! and objects back into the `ServingEndpointDetailed` shape the SDK reads.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Map, Value, json};
use sluice_contract::external::{API_TYPE, ProviderSetting, provider_setting, task_name};
use sluice_contract::mlflow;
use sluice_crds::common::{SecretKeyRef, Tag};
use sluice_crds::{
    AiGatewayConfig, AutoCaptureConfig, ConfigUpdateState, EndpointConfigStatus, EndpointState,
    ExternalModel, ExternalProvider, Fallback, GuardrailParameters, Guardrails, PiiGuardrail,
    RateLimit, ReadyState, Route, ServedEntity, ServedEntityStatus, ServingEndpoint,
    ServingEndpointSpec, TrafficConfig, UsageTracking,
};

use super::wire::{
    AiGatewayInput, ConfigInput, CreateEndpoint, ExternalModelInput, GuardrailInput, PatchTags,
    RateLimitInput, ServedEntityInput, TableInput, TagInput,
};

/// Annotation naming who created an endpoint through this API (`creator` in its answers).
pub const CREATOR_ANNOTATION: &str = "serving.sluice.dev/creator";

/// What is wrong with a request body, each problem naming its field.
pub type Problems = Vec<String>;

/// The spec a create body asks for.
pub fn create_spec(body: &CreateEndpoint) -> Result<ServingEndpointSpec, Problems> {
    let mut problems = Problems::new();
    refuse_set(
        &mut problems,
        "route_optimized",
        body.route_optimized == Some(true),
    );
    refuse_set(
        &mut problems,
        "email_notifications",
        body.email_notifications.is_some(),
    );
    refuse_set(
        &mut problems,
        "budget_policy_id",
        body.budget_policy_id.is_some(),
    );
    refuse_set(
        &mut problems,
        "telemetry_config",
        body.telemetry_config.is_some(),
    );
    refuse_set(
        &mut problems,
        "uc_system_metrics_export_state",
        body.uc_system_metrics_export_state.is_some(),
    );
    let mut spec = ServingEndpointSpec {
        description: body.description.clone(),
        tags: body.tags.iter().map(tag).collect(),
        ..ServingEndpointSpec::default()
    };
    match &body.config {
        Some(config) => {
            if let Some(name) = &config.name
                && name != &body.name
            {
                problems.push(format!(
                    "config.name {name:?} differs from the endpoint's name {:?}",
                    body.name
                ));
            }
            set_config(&mut spec, config, "config.", &mut problems);
        }
        None => problems.push("config: an endpoint needs at least one served entity".into()),
    }
    let mut gateway = body.ai_gateway.as_ref().map(|g| {
        let mut spec_gateway = AiGatewayConfig::default();
        set_ai_gateway(&mut spec_gateway, &mut spec.auto_capture, g, &mut problems);
        spec_gateway
    });
    if !body.rate_limits.is_empty() {
        let gateway = gateway.get_or_insert_with(AiGatewayConfig::default);
        if gateway.rate_limits.is_empty() {
            gateway.rate_limits = rate_limits(&body.rate_limits, "rate_limits", &mut problems);
        } else {
            problems.push(
                "rate_limits: set the rate limits once, in ai_gateway.rate_limits (rate_limits is \
                 its deprecated spelling)"
                    .into(),
            );
        }
    }
    spec.ai_gateway = gateway.filter(|g| g != &AiGatewayConfig::default());
    done(spec, problems)
}

/// `spec` with the served entities, traffic and capture of `PUT …/config` (its other fields
/// kept).
pub fn with_config(
    spec: &ServingEndpointSpec,
    config: &ConfigInput,
) -> Result<ServingEndpointSpec, Problems> {
    let mut problems = Problems::new();
    let mut spec = spec.clone();
    set_config(&mut spec, config, "", &mut problems);
    done(spec, problems)
}

/// `spec` with the gateway policies of `PUT …/ai-gateway`: every upstream policy replaced,
/// Sluice's own (the response cache) kept.
pub fn with_ai_gateway(
    spec: &ServingEndpointSpec,
    input: &AiGatewayInput,
) -> Result<ServingEndpointSpec, Problems> {
    let mut problems = Problems::new();
    let mut spec = spec.clone();
    let kept = spec
        .ai_gateway
        .as_ref()
        .and_then(|g| g.response_cache.clone());
    let mut gateway = AiGatewayConfig {
        response_cache: kept,
        ..AiGatewayConfig::default()
    };
    set_ai_gateway(&mut gateway, &mut spec.auto_capture, input, &mut problems);
    spec.ai_gateway = Some(gateway).filter(|g| g != &AiGatewayConfig::default());
    done(spec, problems)
}

/// `spec` with the rate limits of the deprecated `PUT …/rate-limits` (the other gateway
/// policies kept).
pub fn with_rate_limits(
    spec: &ServingEndpointSpec,
    limits: &[RateLimitInput],
) -> Result<ServingEndpointSpec, Problems> {
    let mut problems = Problems::new();
    let mut spec = spec.clone();
    let mut gateway = spec.ai_gateway.clone().unwrap_or_default();
    gateway.rate_limits = rate_limits(limits, "rate_limits", &mut problems);
    spec.ai_gateway = Some(gateway).filter(|g| g != &AiGatewayConfig::default());
    done(spec, problems)
}

/// `spec` with the tags of `PATCH …/tags` added (a key present gets the new value) and
/// removed.
pub fn with_tags(spec: &ServingEndpointSpec, patch: &PatchTags) -> ServingEndpointSpec {
    let mut spec = spec.clone();
    spec.tags.retain(|t| {
        !patch.delete_tags.contains(&t.key) && !patch.add_tags.iter().any(|a| a.key == t.key)
    });
    spec.tags.extend(patch.add_tags.iter().map(tag));
    spec
}

fn done(spec: ServingEndpointSpec, problems: Problems) -> Result<ServingEndpointSpec, Problems> {
    if problems.is_empty() {
        Ok(spec)
    } else {
        Err(problems)
    }
}

fn refuse_set(problems: &mut Problems, field: &str, set: bool) {
    if set {
        problems.push(format!(
            "{field} is not supported by Sluice; remove it (the rest of the request would be \
             applied without it)"
        ));
    }
}

fn tag(input: &TagInput) -> Tag {
    Tag {
        key: input.key.clone(),
        value: input.value.clone(),
    }
}

/// Served entities, traffic and the legacy capture table of `config`, at `at` (`config.` in a
/// create, nothing in `PUT …/config`).
fn set_config(
    spec: &mut ServingEndpointSpec,
    config: &ConfigInput,
    at: &str,
    problems: &mut Problems,
) {
    let (list, inputs) = match (
        config.served_entities.is_empty(),
        config.served_models.is_empty(),
    ) {
        (false, true) => ("served_entities", &config.served_entities),
        (true, false) => ("served_models", &config.served_models),
        (true, true) => {
            problems.push(format!(
                "{at}served_entities: an endpoint needs at least one served entity"
            ));
            return;
        }
        (false, false) => {
            problems.push(format!(
                "{at}served_entities and {at}served_models: set one of them (served_models is \
                 the older spelling)"
            ));
            return;
        }
    };
    spec.served_entities = inputs
        .iter()
        .enumerate()
        .filter_map(|(i, e)| served_entity(e, &format!("{at}{list}[{i}]"), problems))
        .collect();
    spec.traffic_config = config.traffic_config.as_ref().map(|t| TrafficConfig {
        routes: t
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let field = format!("{at}traffic_config.routes[{i}]");
                let named = match (&r.served_entity_name, &r.served_model_name) {
                    (Some(name), None) | (None, Some(name)) => name,
                    _ => {
                        problems.push(format!(
                            "{field}: name the entity with served_entity_name or \
                             served_model_name (one of them)"
                        ));
                        return None;
                    }
                };
                Some(Route {
                    served_entity_name: Some(entity_name(named, &field, problems)?),
                    served_model_name: None,
                    traffic_percentage: r.traffic_percentage,
                })
            })
            .collect(),
        shadow_routes: spec
            .traffic_config
            .as_ref()
            .and_then(|t| t.shadow_routes.clone()),
    });
    if let Some(table) = &config.auto_capture_config {
        spec.auto_capture = Some(capture(table, spec.auto_capture.as_ref()));
    }
}

/// A served entity's name in Sluice's spelling, or a problem naming the field.
fn entity_name(name: &str, field: &str, problems: &mut Problems) -> Option<String> {
    let out = mlflow::entity_name(name);
    if out.is_none() {
        problems.push(format!(
            "{field}: {name:?} is no served-entity name Sluice can use (letters, digits, `-`, \
             `_` and `.`, at most 32, starting and ending with a letter or digit)"
        ));
    }
    out
}

fn served_entity(
    input: &ServedEntityInput,
    at: &str,
    problems: &mut Problems,
) -> Option<ServedEntity> {
    let before = problems.len();
    refuse_set(
        problems,
        &format!(
            "{at}.instance_profile_arn (give the entity a ServiceAccount with the cloud identity instead)"
        ),
        input.instance_profile_arn.is_some(),
    );
    for (field, set) in [
        (
            "min_provisioned_throughput",
            input.min_provisioned_throughput.is_some(),
        ),
        (
            "max_provisioned_throughput",
            input.max_provisioned_throughput.is_some(),
        ),
        (
            "provisioned_model_units",
            input.provisioned_model_units.is_some(),
        ),
        (
            "burst_scaling_enabled",
            input.burst_scaling_enabled.is_some(),
        ),
    ] {
        refuse_set(problems, &format!("{at}.{field}"), set);
    }
    let mut entity = ServedEntity {
        workload_size: input.workload_size,
        workload_type: input.workload_type,
        scale_to_zero_enabled: input.scale_to_zero_enabled,
        min_provisioned_concurrency: input.min_provisioned_concurrency,
        max_provisioned_concurrency: input.max_provisioned_concurrency,
        environment_vars: input.environment_vars.clone(),
        ..ServedEntity::default()
    };
    let default_name = match &input.external_model {
        Some(external) => {
            entity.external_model =
                external_model(external, &format!("{at}.external_model"), problems);
            mlflow::entity_name(&external.name.replace(':', "-"))
        }
        None => {
            let model = input.entity_name.as_deref().unwrap_or_default();
            let version = input.entity_version.as_deref().unwrap_or_default();
            if model.is_empty() {
                problems.push(format!(
                    "{at}.entity_name: name the registered model to serve (or set external_model)"
                ));
            } else {
                entity.model = mlflow::model_name(model);
                if entity.model.is_none() {
                    problems.push(format!(
                        "{at}.entity_name: {model:?} maps to no Sluice model name (letters, \
                         digits, `-`, `_`, `.`; at most 63)"
                    ));
                }
            }
            match version.parse::<i64>() {
                Ok(v) if v >= 1 => entity.version = Some(v),
                _ => problems.push(format!(
                    "{at}.entity_version: {version:?} is not a version number (1, 2, …)"
                )),
            }
            mlflow::default_entity_name(model, version)
        }
    };
    entity.name = match &input.name {
        Some(name) => entity_name(name, &format!("{at}.name"), problems).unwrap_or_default(),
        None => match default_name {
            Some(name) => name,
            None => {
                problems.push(format!(
                    "{at}.name: the default name (<model>-<version>) would not be a DNS label of \
                     at most 32 characters; set name"
                ));
                String::new()
            }
        },
    };
    (problems.len() == before).then_some(entity)
}

/// The provider's config object of `input`, as the API names it.
fn provider_config(
    input: &ExternalModelInput,
) -> Vec<(&'static str, ExternalProvider, &BTreeMap<String, Value>)> {
    [
        (
            "openai_config",
            ExternalProvider::Openai,
            &input.openai_config,
        ),
        (
            "anthropic_config",
            ExternalProvider::Anthropic,
            &input.anthropic_config,
        ),
        (
            "cohere_config",
            ExternalProvider::Cohere,
            &input.cohere_config,
        ),
        (
            "databricks_model_serving_config",
            ExternalProvider::DatabricksModelServing,
            &input.databricks_model_serving_config,
        ),
        (
            "custom_provider_config",
            ExternalProvider::Custom,
            &input.custom_provider_config,
        ),
        (
            "amazon_bedrock_config",
            ExternalProvider::AmazonBedrock,
            &input.amazon_bedrock_config,
        ),
        (
            "google_cloud_vertex_ai_config",
            ExternalProvider::GoogleCloudVertexAi,
            &input.google_cloud_vertex_ai_config,
        ),
        (
            "ai21labs_config",
            ExternalProvider::Ai21labs,
            &input.ai21labs_config,
        ),
        ("palm_config", ExternalProvider::Openai, &input.palm_config),
    ]
    .into_iter()
    .filter_map(|(field, provider, config)| config.as_ref().map(|c| (field, provider, c)))
    .collect()
}

fn secret_reference(value: &Value, field: &str, problems: &mut Problems) -> Option<SecretKeyRef> {
    let found = value.as_str().and_then(SecretKeyRef::from_reference);
    if found.is_none() {
        problems.push(format!(
            "{field}: name the key as {{{{secrets/<secret>/<key>}}}}, a key of a Secret in the \
             endpoint's namespace"
        ));
    }
    found
}

fn external_model(
    input: &ExternalModelInput,
    at: &str,
    problems: &mut Problems,
) -> Option<ExternalModel> {
    let before = problems.len();
    let mut model = ExternalModel {
        provider: input.provider,
        name: input.name.clone(),
        task: input.task,
        ..ExternalModel::default()
    };
    for (field, provider, config) in provider_config(input) {
        let at = format!("{at}.{field}");
        if provider != input.provider || field == "palm_config" {
            problems.push(format!(
                "{at}: the configuration of another provider than {}",
                sluice_contract::external::provider_name(input.provider)
            ));
            continue;
        }
        for (key, value) in config {
            let field = format!("{at}.{key}");
            if key.ends_with("_plaintext") {
                problems.push(format!(
                    "{field}: keys are not taken in requests; put the key in a Secret and name \
                     it in {} as {{{{secrets/<secret>/<key>}}}}",
                    key.trim_end_matches("_plaintext")
                ));
                continue;
            }
            match (key.as_str(), provider_setting(key)) {
                ("custom_provider_url", _) => {
                    model.api_base = value.as_str().map(|v| v.trim_end_matches('/').to_string());
                }
                ("bearer_token_auth", _) => {
                    model.api_key_secret_ref = secret_reference(
                        value.get("token").unwrap_or(&Value::Null),
                        &format!("{field}.token"),
                        problems,
                    );
                }
                (_, Some(ProviderSetting::ApiKey)) => {
                    model.api_key_secret_ref = secret_reference(value, &field, problems);
                }
                (_, Some(ProviderSetting::ApiBase)) => {
                    model.api_base = value.as_str().map(|v| v.trim_end_matches('/').to_string());
                }
                (_, Some(ProviderSetting::Config(API_TYPE))) if value == "openai" => {}
                (_, Some(ProviderSetting::Config(setting))) => match value.as_str() {
                    Some(text) => {
                        model.config.insert(setting.to_string(), text.to_string());
                    }
                    None => problems.push(format!("{field}: must be a string")),
                },
                (_, None) => problems.push(format!("{field} is not read by Sluice")),
            }
        }
    }
    if let Err(found) = sluice_contract::external::api(&model) {
        problems.extend(found.into_iter().map(|p| format!("{at}: {p}")));
    }
    (problems.len() == before).then_some(model)
}

fn capture(table: &TableInput, before: Option<&AutoCaptureConfig>) -> AutoCaptureConfig {
    AutoCaptureConfig {
        enabled: table.enabled.unwrap_or(true),
        catalog_name: table.catalog_name.clone(),
        schema_name: table.schema_name.clone(),
        table_name_prefix: table.table_name_prefix.clone(),
        uri: None,
        // Sluice's own settings of the table stay as they were.
        ..before.cloned().unwrap_or_default()
    }
}

fn rate_limits(inputs: &[RateLimitInput], at: &str, problems: &mut Problems) -> Vec<RateLimit> {
    inputs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            if r.calls.is_none() && r.tokens.is_none() {
                problems.push(format!("{at}[{i}]: set calls, tokens or both"));
                return None;
            }
            Some(RateLimit {
                calls: r.calls,
                tokens: r.tokens,
                key: r.key.unwrap_or_default(),
                principal: r.principal.clone(),
                renewal_period: r.renewal_period.unwrap_or_default(),
            })
        })
        .collect()
}

fn guardrail(input: &GuardrailInput, at: &str, problems: &mut Problems) -> GuardrailParameters {
    refuse_set(
        problems,
        &format!(
            "{at}.safety (Sluice has no safety classifier; invalid_keywords and valid_topics work)"
        ),
        input.safety == Some(true),
    );
    GuardrailParameters {
        pii: input.pii.as_ref().map(|p| PiiGuardrail {
            behavior: p.behavior,
        }),
        invalid_keywords: input.invalid_keywords.clone(),
        valid_topics: input.valid_topics.clone(),
    }
}

fn set_ai_gateway(
    gateway: &mut AiGatewayConfig,
    capture_spec: &mut Option<AutoCaptureConfig>,
    input: &AiGatewayInput,
    problems: &mut Problems,
) {
    gateway.usage_tracking = input
        .usage_tracking_config
        .as_ref()
        .map(|s| UsageTracking { enabled: s.enabled });
    gateway.fallback = input
        .fallback_config
        .as_ref()
        .map(|s| Fallback { enabled: s.enabled });
    gateway.rate_limits = rate_limits(&input.rate_limits, "ai_gateway.rate_limits", problems);
    gateway.guardrails = input.guardrails.as_ref().map(|g| Guardrails {
        input: g
            .input
            .as_ref()
            .map(|p| guardrail(p, "ai_gateway.guardrails.input", problems)),
        output: g
            .output
            .as_ref()
            .map(|p| guardrail(p, "ai_gateway.guardrails.output", problems)),
    });
    if let Some(table) = &input.inference_table_config {
        *capture_spec = Some(capture(table, capture_spec.as_ref()));
    }
}

/// An endpoint's state as a client must read it: an update the operator has not taken up yet
/// (a spec generation newer than the one it observed) is `IN_PROGRESS` already, so a client
/// that waits for `NOT_UPDATING` right after an update never reads the old state as done.
pub fn state(endpoint: &ServingEndpoint) -> EndpointState {
    let status = endpoint.status.as_ref();
    let observed = status.and_then(|s| s.observed_generation);
    let mut state = status.and_then(|s| s.state.clone()).unwrap_or_default();
    if status.is_none() || observed != endpoint.metadata.generation {
        state.config_update = ConfigUpdateState::IN_PROGRESS;
        if status.and_then(|s| s.config.as_ref()).is_none() {
            state.ready = ReadyState::NOT_READY;
        }
    }
    state
}

fn millis(time: Option<&Time>) -> Option<i64> {
    time.map(|t| t.0.as_millisecond())
}

fn served_entity_out(entity: &ServedEntityStatus, created: Option<i64>) -> Value {
    let mut out = Map::new();
    let mut put = |key: &str, value: Value| {
        if !value.is_null() {
            out.insert(key.to_string(), value);
        }
    };
    put("name", json!(entity.name));
    put("entity_name", json!(entity.model));
    put(
        "entity_version",
        json!(entity.version.map(|v| v.to_string())),
    );
    put(
        "external_model",
        json!(entity.external_model.as_ref().map(external_model_out)),
    );
    put("workload_size", json!(entity.workload_size));
    put("workload_type", json!(entity.workload_type));
    if entity.external_model.is_none() {
        put("scale_to_zero_enabled", json!(entity.scale_to_zero_enabled));
        put(
            "min_provisioned_concurrency",
            json!(entity.min_provisioned_concurrency),
        );
        put(
            "max_provisioned_concurrency",
            json!(entity.max_provisioned_concurrency),
        );
    }
    put("creation_timestamp", json!(created));
    put(
        "state",
        json!(entity.state.as_ref().map(|s| json!({
            "deployment": s.deployment,
            "deployment_state_message": s.deployment_state_message.clone().unwrap_or_default(),
        }))),
    );
    Value::Object(out)
}

fn external_model_out(model: &ExternalModel) -> Value {
    json!({
        "provider": sluice_contract::external::provider_name(model.provider),
        "name": model.name,
        "task": task_name(model.task),
    })
}

/// The served entities of a spec not yet resolved by the operator, as a pending config shows
/// them.
fn spec_entity_out(entity: &ServedEntity) -> Value {
    let mut out = json!({"name": entity.name});
    if let Some(model) = &entity.model {
        out["entity_name"] = json!(model);
    }
    if let Some(version) = entity.version {
        out["entity_version"] = json!(version.to_string());
    }
    if let Some(external) = &entity.external_model {
        out["external_model"] = external_model_out(external);
    }
    if let Some(size) = entity.workload_size {
        out["workload_size"] = json!(size);
    }
    if let Some(kind) = entity.workload_type {
        out["workload_type"] = json!(kind);
    }
    if let Some(zero) = entity.scale_to_zero_enabled {
        out["scale_to_zero_enabled"] = json!(zero);
    }
    out["state"] = json!({"deployment": "DEPLOYMENT_CREATING", "deployment_state_message": ""});
    out
}

fn routes_out<'a>(routes: impl Iterator<Item = (&'a str, i32)>) -> Value {
    let routes: Vec<Value> = routes
        .map(|(name, percent)| {
            json!({"served_model_name": name, "served_entity_name": name, "traffic_percentage": percent})
        })
        .collect();
    json!({ "routes": routes })
}

fn table_out(capture: &AutoCaptureConfig) -> Value {
    let mut out = json!({"enabled": capture.enabled});
    for (key, value) in [
        ("catalog_name", &capture.catalog_name),
        ("schema_name", &capture.schema_name),
        ("table_name_prefix", &capture.table_name_prefix),
    ] {
        if let Some(value) = value {
            out[key] = json!(value);
        }
    }
    out
}

/// A config the operator resolved (`config` or `pending_config`).
fn config_out(config: &EndpointConfigStatus, capture: Option<&AutoCaptureConfig>) -> Value {
    let created = millis(config.start_time.as_ref());
    let entities: Vec<Value> = config
        .served_entities
        .iter()
        .map(|e| served_entity_out(e, created))
        .collect();
    let mut out = json!({
        "config_version": config.config_version,
        "served_entities": entities,
        "served_models": entities,
        "traffic_config": routes_out(
            config.routes.iter().map(|r| (r.served_entity_name.as_str(), r.traffic_percentage))
        ),
    });
    if let Some(start) = created {
        out["start_time"] = json!(start);
    }
    if let Some(capture) = capture {
        out["auto_capture_config"] = table_out(capture);
    }
    out
}

/// The gateway policies in the upstream shape (`PUT …/ai-gateway` answers with it too).
pub fn ai_gateway_out(spec: &ServingEndpointSpec) -> Value {
    let mut out = Map::new();
    let gateway = spec.ai_gateway.clone().unwrap_or_default();
    if let Some(usage) = &gateway.usage_tracking {
        out.insert(
            "usage_tracking_config".into(),
            json!({"enabled": usage.enabled}),
        );
    }
    if let Some(capture) = &spec.auto_capture {
        out.insert("inference_table_config".into(), table_out(capture));
    }
    if !gateway.rate_limits.is_empty() {
        let limits: Vec<Value> = gateway
            .rate_limits
            .iter()
            .map(|r| {
                let mut limit = json!({"key": r.key, "renewal_period": r.renewal_period});
                for (key, value) in [("calls", r.calls), ("tokens", r.tokens)] {
                    if let Some(value) = value {
                        limit[key] = json!(value);
                    }
                }
                if let Some(principal) = &r.principal {
                    limit["principal"] = json!(principal);
                }
                limit
            })
            .collect();
        out.insert("rate_limits".into(), json!(limits));
    }
    if let Some(guardrails) = &gateway.guardrails {
        let side = |p: &GuardrailParameters| {
            let mut side = json!({
                "invalid_keywords": p.invalid_keywords,
                "valid_topics": p.valid_topics,
            });
            if let Some(pii) = &p.pii {
                side["pii"] = json!({"behavior": pii.behavior});
            }
            side
        };
        let mut g = Map::new();
        if let Some(input) = &guardrails.input {
            g.insert("input".into(), side(input));
        }
        if let Some(output) = &guardrails.output {
            g.insert("output".into(), side(output));
        }
        out.insert("guardrails".into(), Value::Object(g));
    }
    if let Some(fallback) = &gateway.fallback {
        out.insert(
            "fallback_config".into(),
            json!({"enabled": fallback.enabled}),
        );
    }
    Value::Object(out)
}

/// `ServingEndpointDetailed` of `endpoint`, called `shown` (its name, or `namespace.name`).
pub fn detailed(endpoint: &ServingEndpoint, shown: &str) -> Value {
    let meta = &endpoint.metadata;
    let spec = &endpoint.spec;
    let status = endpoint.status.as_ref();
    let state = state(endpoint);
    let created = millis(meta.creation_timestamp.as_ref());
    let active = status.and_then(|s| s.config.as_ref());
    let pending = status.and_then(|s| s.pending_config.as_ref());
    let mut out = json!({
        "name": shown,
        "id": meta.uid,
        "state": {"ready": state.ready, "config_update": state.config_update},
        "ai_gateway": ai_gateway_out(spec),
        "tags": spec.tags.iter().map(|t| json!({"key": t.key, "value": t.value})).collect::<Vec<_>>(),
        "permission_level": "CAN_MANAGE",
        "route_optimized": false,
    });
    let mut put = |key: &str, value: Value| {
        if !value.is_null() {
            out[key] = value;
        }
    };
    put("creation_timestamp", json!(created));
    put(
        "last_updated_timestamp",
        json!(
            millis(pending.and_then(|p| p.start_time.as_ref()))
                .or(millis(active.and_then(|c| c.start_time.as_ref())))
                .or(created)
        ),
    );
    put(
        "creator",
        json!(
            meta.annotations
                .as_ref()
                .and_then(|a| a.get(CREATOR_ANNOTATION))
        ),
    );
    put("description", json!(spec.description));
    put("endpoint_url", json!(status.and_then(|s| s.url.clone())));
    put("task", json!(task(spec)));
    put(
        "config",
        json!(active.map(|c| config_out(c, spec.auto_capture.as_ref()))),
    );
    let unobserved = status.and_then(|s| s.observed_generation) != meta.generation;
    let pending = match pending {
        Some(config) if !unobserved => Some(config_out(config, spec.auto_capture.as_ref())),
        // The operator has not taken up the spec yet: the spec itself is what is pending.
        _ if unobserved => Some(spec_pending(
            spec,
            active.map_or(1, |c| c.config_version + 1),
        )),
        _ => None,
    };
    put("pending_config", json!(pending));
    out
}

fn spec_pending(spec: &ServingEndpointSpec, version: i64) -> Value {
    let entities: Vec<Value> = spec.served_entities.iter().map(spec_entity_out).collect();
    let routes: Vec<(&str, i32)> = match &spec.traffic_config {
        Some(t) => t
            .routes
            .iter()
            .map(|r| (r.target(), r.traffic_percentage))
            .collect(),
        None => spec
            .served_entities
            .first()
            .map(|e| vec![(e.name.as_str(), 100)])
            .unwrap_or_default(),
    };
    let mut out = json!({
        "config_version": version,
        "served_entities": entities,
        "served_models": entities,
        "traffic_config": routes_out(routes.into_iter()),
    });
    if let Some(capture) = &spec.auto_capture {
        out["auto_capture_config"] = table_out(capture);
    }
    out
}

/// The endpoint's task where the upstream reports one: that of its external models.
fn task(spec: &ServingEndpointSpec) -> Option<&'static str> {
    spec.served_entities
        .iter()
        .find_map(|e| e.external_model.as_ref())
        .map(|m| task_name(m.task))
}

/// The list item (`ServingEndpoint`) of `endpoint`: `detailed` without the pending config.
pub fn summary(endpoint: &ServingEndpoint, shown: &str) -> Value {
    let mut out = detailed(endpoint, shown);
    if let Some(map) = out.as_object_mut() {
        map.remove("pending_config");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(body: Value) -> Result<ServingEndpointSpec, Problems> {
        let body: CreateEndpoint = serde_json::from_value(body).expect("wire");
        create_spec(&body)
    }

    #[test]
    fn the_seeds_create_body_becomes_a_spec_with_the_upstream_defaults() {
        let spec = create(json!({
            "name": "chatbot-endpoint",
            "config": {
                "served_models": [{
                    "model_name": "mi_catalogo.mi_schema.chatbot",
                    "model_version": "3",
                    "workload_size": "Small",
                    "scale_to_zero_enabled": true,
                    "environment_vars": {"KEY": "{{secrets/risk/feature_key}}"}
                }],
                "auto_capture_config": {"catalog_name": "mi_catalogo", "schema_name": "mi_schema",
                                        "table_name_prefix": "inference_"}
            },
            "tags": [{"key": "team", "value": "risk"}]
        }))
        .expect("valid");
        let entity = &spec.served_entities[0];
        assert_eq!(entity.name, "chatbot-3");
        assert_eq!(
            entity.model.as_deref(),
            Some("mi-catalogo-mi-schema-chatbot")
        );
        assert_eq!(entity.version, Some(3));
        assert_eq!(entity.scale_to_zero_enabled, Some(true));
        assert_eq!(
            entity.environment_vars["KEY"],
            "{{secrets/risk/feature_key}}"
        );
        let capture = spec.auto_capture.expect("capture");
        assert!(capture.enabled);
        assert_eq!(capture.table_name_prefix.as_deref(), Some("inference_"));
        assert_eq!(spec.tags[0].key, "team");
    }

    #[test]
    fn a_ninety_ten_update_names_routes_by_the_default_entity_names() {
        let spec = create(json!({"name": "ep", "config": {"served_entities": [
            {"entity_name": "ads1", "entity_version": "1"}]}}))
        .expect("valid");
        let update: ConfigInput = serde_json::from_value(json!({
            "served_entities": [
                {"entity_name": "ads1", "entity_version": "1", "workload_size": "Small"},
                {"entity_name": "ads1", "entity_version": "2", "workload_size": "Small"}],
            "traffic_config": {"routes": [
                {"served_model_name": "ads1-1", "traffic_percentage": 90},
                {"served_entity_name": "ads1-2", "traffic_percentage": 10}]}
        }))
        .expect("wire");
        let spec = with_config(&spec, &update).expect("valid");
        let names: Vec<&str> = spec
            .served_entities
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, ["ads1-1", "ads1-2"]);
        let routes: Vec<(&str, i32)> = spec
            .traffic_config
            .as_ref()
            .expect("traffic")
            .routes
            .iter()
            .map(|r| (r.target(), r.traffic_percentage))
            .collect();
        assert_eq!(routes, [("ads1-1", 90), ("ads1-2", 10)]);
    }

    #[test]
    fn an_external_model_takes_its_key_from_a_secret_reference_only() {
        let spec = create(json!({"name": "chat", "config": {"served_entities": [{
            "external_model": {"provider": "openai", "name": "gpt-4o-mini", "task": "llm/v1/chat",
                "openai_config": {"openai_api_key": "{{secrets/llm/openai}}",
                                  "openai_api_base": "http://127.0.0.1:9/v1/"}}}]}}))
        .expect("valid");
        let entity = &spec.served_entities[0];
        assert_eq!(entity.name, "gpt-4o-mini");
        let model = entity.external_model.as_ref().expect("external");
        assert_eq!(
            model.api_key_secret_ref,
            Some(SecretKeyRef {
                name: "llm".into(),
                key: "openai".into()
            })
        );
        assert_eq!(model.api_base.as_deref(), Some("http://127.0.0.1:9/v1"));

        let problems = create(json!({"name": "chat", "config": {"served_entities": [{
            "external_model": {"provider": "openai", "name": "gpt-4o", "task": "llm/v1/chat",
                "openai_config": {"openai_api_key_plaintext": "sk-123"}}}]}}))
        .expect_err("a plaintext key");
        assert!(
            problems[0].contains(
                "config.served_entities[0].external_model.openai_config.openai_api_key_plaintext"
            ),
            "{problems:?}"
        );
        assert!(!problems.join(" ").contains("sk-123"));
    }

    #[test]
    fn what_sluice_would_not_act_on_is_refused_by_field() {
        let problems = create(json!({"name": "ep", "route_optimized": true, "config": {
            "served_entities": [{"entity_name": "m", "entity_version": "x",
                                 "instance_profile_arn": "arn:aws:iam::1:instance-profile/p"}]},
            "ai_gateway": {"guardrails": {"input": {"safety": true}}}}))
        .expect_err("refused");
        let all = problems.join("\n");
        for field in [
            "route_optimized",
            "config.served_entities[0].instance_profile_arn",
            "config.served_entities[0].entity_version: \"x\"",
            "ai_gateway.guardrails.input.safety",
        ] {
            assert!(all.contains(field), "{field} in {all}");
        }
        let unknown = serde_json::from_value::<CreateEndpoint>(json!({"name": "e", "colour": 1}));
        assert!(unknown.expect_err("unknown").to_string().contains("colour"));
    }

    #[test]
    fn an_unobserved_update_reads_as_in_progress() {
        let mut endpoint = ServingEndpoint::new(
            "ep",
            create(json!({"name": "ep", "config": {
            "served_entities": [{"entity_name": "m", "entity_version": "1"}]}}))
            .expect("valid"),
        );
        endpoint.metadata.generation = Some(2);
        endpoint.status = Some(sluice_crds::ServingEndpointStatus {
            observed_generation: Some(1),
            state: Some(EndpointState {
                ready: ReadyState::READY,
                config_update: ConfigUpdateState::NOT_UPDATING,
            }),
            config: Some(EndpointConfigStatus {
                config_version: 1,
                ..Default::default()
            }),
            ..Default::default()
        });
        let out = detailed(&endpoint, "ep");
        assert_eq!(
            out["state"],
            json!({"ready": "READY", "config_update": "IN_PROGRESS"})
        );
        assert_eq!(out["pending_config"]["config_version"], 2);
        assert_eq!(out["pending_config"]["served_entities"][0]["name"], "m-1");
        endpoint
            .status
            .as_mut()
            .expect("status")
            .observed_generation = Some(2);
        let out = detailed(&endpoint, "ep");
        assert_eq!(out["state"]["config_update"], "NOT_UPDATING");
        assert!(out.get("pending_config").is_none());
    }
}
