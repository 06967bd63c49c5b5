//! MLflow AI Gateway compatibility: `inference-server import-mlflow-gateway` turns an MLflow
//! gateway (deployments server) config into ServingEndpoints with external entities, and the
//! gateway answers MLflow's `POST /endpoints/{name}/invocations` (see
//! [`sluice_contract::mlflow`] for the name rule both share).
//!
//! What is read: `endpoints` (and the older `routes` with `route_type`), each with
//! `endpoint_type`, `model.{provider,name,config}` and `limit.{calls,renewal_period}`; and
//! MLflow 3 traffic routes (`routes` with `task_type` and `destinations`), which become one
//! endpoint splitting traffic between the destinations' models. Keys written `$NAME` (or
//! `${NAME}`) become `apiKeySecretRef` to key `NAME` of one Secret; a key written in the file is
//! refused, as is anything Sluice would not call: every problem is named, and nothing is
//! written while one remains.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Map, Value, json};
use sluice_contract::external::{API_TYPE, ProviderSetting, provider_setting};
use sluice_contract::mlflow::endpoint_name;
use sluice_contract::support;
use sluice_crds::ServingEndpoint;

/// `inference-server import-mlflow-gateway`: prints the ServingEndpoints of an MLflow AI
/// Gateway config.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The MLflow gateway config YAML (`mlflow gateway start --config-path`).
    #[arg(long = "config")]
    pub config: PathBuf,
    /// Namespace of the endpoints (default: none, the one `kubectl apply` uses).
    #[arg(long)]
    pub namespace: Option<String>,
    /// The Secret holding the providers' keys, one key per `$NAME` of the config.
    #[arg(long, default_value = "mlflow-gateway-keys")]
    pub secret: String,
    /// Write the manifests here instead of standard output.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Why an import made nothing.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The config or the output could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The config holds what Sluice would not act on.
    #[error("the MLflow config cannot be imported:\n  {}", .0.join("\n  "))]
    Refused(Vec<String>),
}

/// Runs `import-mlflow-gateway`.
pub fn run_import(args: &ImportArgs) -> Result<(), ImportError> {
    let text = std::fs::read_to_string(&args.config).map_err(|source| ImportError::Io {
        path: args.config.clone(),
        source,
    })?;
    let options = ImportOptions {
        namespace: args.namespace.clone(),
        secret: args.secret.clone(),
    };
    let imported = import(&text, &options).map_err(ImportError::Refused)?;
    let yaml = imported.to_yaml(&options, &args.config.display().to_string());
    match &args.output {
        Some(path) => std::fs::write(path, yaml).map_err(|source| ImportError::Io {
            path: path.clone(),
            source,
        }),
        None => {
            print!("{yaml}");
            Ok(())
        }
    }
}

/// How the import names what it makes.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Namespace of the endpoints (none: the one `kubectl apply` uses).
    pub namespace: Option<String>,
    /// The Secret whose keys hold the providers' API keys.
    pub secret: String,
}

/// What an import made.
#[derive(Clone, Debug, PartialEq)]
pub struct Imported {
    /// The ServingEndpoints, as documents of one YAML stream.
    pub endpoints: Vec<Value>,
    /// The keys the Secret must hold (the `$NAME`s of the config), sorted.
    pub secret_keys: Vec<String>,
}

impl Imported {
    /// The endpoints as a YAML stream, headed by how to create the Secret.
    pub fn to_yaml(&self, options: &ImportOptions, source: &str) -> String {
        let mut out =
            format!("# ServingEndpoints made from the MLflow AI Gateway config {source}.\n");
        if !self.secret_keys.is_empty() {
            let literals: Vec<String> = self
                .secret_keys
                .iter()
                .map(|key| format!("--from-literal={key}=\"${key}\""))
                .collect();
            out.push_str(&format!(
                "# The provider keys go in one Secret beside them, e.g.:\n#   kubectl create secret generic {}{} {}\n",
                options.secret,
                options
                    .namespace
                    .as_ref()
                    .map(|ns| format!(" -n {ns}"))
                    .unwrap_or_default(),
                literals.join(" ")
            ));
        }
        for endpoint in &self.endpoints {
            out.push_str("---\n");
            out.push_str(&serde_norway::to_string(endpoint).unwrap_or_default());
        }
        out
    }
}

/// The MLflow providers called, and the `config` keys read for each.
fn provider_of(provider: &str) -> Option<(&'static str, Option<&'static str>)> {
    // (Sluice provider, apiType for the Azure names)
    match provider {
        "openai" => Some(("openai", None)),
        "azure" => Some(("openai", Some("azure"))),
        "azuread" => Some(("openai", Some("azuread"))),
        "anthropic" => Some(("anthropic", None)),
        "databricks-model-serving" | "databricks" => Some(("databricks-model-serving", None)),
        _ => None,
    }
}

/// One MLflow endpoint's model as an `externalModel`, or its problems; `keys` gathers the
/// Secret keys it names.
fn external_model(
    at: &str,
    task: &str,
    model: &Value,
    options: &ImportOptions,
    keys: &mut Vec<String>,
    problems: &mut Vec<String>,
) -> Option<Value> {
    let provider = model.get("provider").and_then(Value::as_str).unwrap_or("");
    let name = model.get("name").and_then(Value::as_str);
    let Some((sluice_provider, api_type)) = provider_of(provider) else {
        problems.push(format!(
            "{at}: model.provider {provider:?} is not called by Sluice (openai, azure, azuread, \
             anthropic, databricks-model-serving are)"
        ));
        return None;
    };
    let Some(name) = name else {
        problems.push(format!("{at}: model.name is required"));
        return None;
    };
    let empty = Map::new();
    let config = model
        .get("config")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut out = json!({"provider": sluice_provider, "name": name, "task": task});
    let mut settings: BTreeMap<&str, String> = BTreeMap::new();
    if let Some(kind) = api_type {
        settings.insert(API_TYPE, kind.to_string());
    }
    for (key, value) in config {
        let text = match value {
            Value::String(text) => text.clone(),
            Value::Number(n) => n.to_string(),
            _ => {
                problems.push(format!("{at}: model.config.{key} must be a string"));
                continue;
            }
        };
        match provider_setting(key) {
            Some(ProviderSetting::ApiKey) => match env_reference(&text) {
                Some(env) => {
                    if !keys.contains(&env) {
                        keys.push(env.clone());
                    }
                    out["apiKeySecretRef"] = json!({"name": options.secret, "key": env});
                }
                None => problems.push(format!(
                    "{at}: model.config.{key} is a key written in the file; write it as \
                     $NAME and put the key in Secret {} under NAME",
                    options.secret
                )),
            },
            Some(ProviderSetting::ApiBase) => {
                out["apiBase"] = Value::String(text.trim_end_matches('/').to_string());
            }
            Some(ProviderSetting::Config(API_TYPE)) => match text.as_str() {
                "openai" => {}
                "azure" | "azuread" => {
                    settings.insert(API_TYPE, text);
                }
                other => problems.push(format!(
                    "{at}: model.config.{key} {other:?} is not openai, azure or azuread"
                )),
            },
            Some(ProviderSetting::Config(setting)) => {
                settings.insert(setting, text);
            }
            None => problems.push(format!(
                "{at}: model.config.{key} is not read by Sluice for provider {provider}"
            )),
        }
    }
    if !settings.is_empty() {
        out["config"] = json!(settings);
    }
    Some(out)
}

/// `NAME` of `$NAME` or `${NAME}`.
fn env_reference(text: &str) -> Option<String> {
    let name = text.strip_prefix('$')?;
    let name = name
        .strip_prefix('{')
        .and_then(|n| n.strip_suffix('}'))
        .unwrap_or(name);
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    valid.then(|| name.to_string())
}

/// `rateLimits` for an MLflow `limit`.
fn rate_limits(at: &str, limit: Option<&Value>, problems: &mut Vec<String>) -> Option<Value> {
    let limit = limit?;
    let calls = limit.get("calls").and_then(Value::as_u64);
    let period = limit
        .get("renewal_period")
        .and_then(Value::as_str)
        .unwrap_or("minute");
    match (calls, period) {
        (Some(calls), "minute") => {
            Some(json!([{"calls": calls, "key": "endpoint", "renewalPeriod": "minute"}]))
        }
        (None, _) => {
            problems.push(format!("{at}: limit.calls is required"));
            None
        }
        (_, other) => {
            problems.push(format!(
                "{at}: limit.renewal_period {other:?} (Sluice counts per minute)"
            ));
            None
        }
    }
}

/// One MLflow endpoint, by its name, with what it is made of.
struct Source<'a> {
    at: String,
    task: &'a str,
    model: &'a Value,
    limit: Option<&'a Value>,
}

/// The ServingEndpoints of the MLflow gateway config `text`.
pub fn import(text: &str, options: &ImportOptions) -> Result<Imported, Vec<String>> {
    let config: Value = serde_norway::from_str(text).map_err(|e| vec![format!("not YAML: {e}")])?;
    let mut problems = Vec::new();
    let mut sources: BTreeMap<String, Source> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut traffic: Vec<(String, &str, &Vec<Value>)> = Vec::new();
    let lists = [
        ("endpoints", config.get("endpoints")),
        ("routes", config.get("routes")),
    ];
    for (list, items) in lists {
        for (i, item) in items
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = item.get("name").and_then(Value::as_str).unwrap_or("");
            let at = format!("{list}[{i}] ({name})");
            if name.is_empty() {
                problems.push(format!("{list}[{i}]: name is required"));
                continue;
            }
            if let Some(destinations) = item.get("destinations").and_then(Value::as_array) {
                let task = item.get("task_type").and_then(Value::as_str).unwrap_or("");
                traffic.push((name.to_string(), task, destinations));
                continue;
            }
            let task = item
                .get("endpoint_type")
                .or_else(|| item.get("route_type"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let Some(model) = item.get("model") else {
                problems.push(format!("{at}: model is required"));
                continue;
            };
            order.push(name.to_string());
            sources.insert(
                name.to_string(),
                Source {
                    at,
                    task,
                    model,
                    limit: item.get("limit"),
                },
            );
        }
    }
    if sources.is_empty() && traffic.is_empty() {
        problems.push("the config has no endpoints".into());
    }
    let mut keys = Vec::new();
    let mut endpoints = Vec::new();
    let entity = |source: &Source,
                  entity_name: &str,
                  keys: &mut Vec<String>,
                  problems: &mut Vec<String>| {
        if !matches!(
            source.task,
            "llm/v1/chat" | "llm/v1/completions" | "llm/v1/embeddings"
        ) {
            problems.push(format!(
                "{}: endpoint_type {:?} is not llm/v1/chat, llm/v1/completions or llm/v1/embeddings",
                source.at, source.task
            ));
            return None;
        }
        let model = external_model(
            &source.at,
            source.task,
            source.model,
            options,
            keys,
            problems,
        )?;
        Some(json!({"name": entity_name, "externalModel": model}))
    };
    for name in &order {
        let source = &sources[name];
        let Some(se_name) = named(&source.at, name, &mut problems) else {
            continue;
        };
        let Some(served) = entity(source, &se_name, &mut keys, &mut problems) else {
            continue;
        };
        let mut spec = json!({"servedEntities": [served]});
        if let Some(limits) = rate_limits(&source.at, source.limit, &mut problems) {
            spec["aiGateway"] = json!({"rateLimits": limits});
        }
        endpoints.push(document(&se_name, name, spec, options));
    }
    for (name, task, destinations) in traffic {
        let at = format!("routes ({name})");
        let Some(se_name) = named(&at, &name, &mut problems) else {
            continue;
        };
        let mut served = Vec::new();
        let mut routes = Vec::new();
        for destination in destinations {
            let target = destination
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let Some(source) = sources.get(target) else {
                problems.push(format!(
                    "{at}: destination {target:?} is not an endpoint of the config"
                ));
                continue;
            };
            if !task.is_empty() && task != source.task {
                problems.push(format!(
                    "{at}: destination {target} serves {}, not {task}",
                    source.task
                ));
                continue;
            }
            let Some(entity_name) = named(&at, target, &mut problems) else {
                continue;
            };
            if let Some(e) = entity(source, &entity_name, &mut keys, &mut problems) {
                served.push(e);
                let percent = destination
                    .get("traffic_percentage")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                routes.push(json!({"servedEntityName": entity_name, "trafficPercentage": percent}));
            }
        }
        endpoints.push(document(
            &se_name,
            &name,
            json!({"servedEntities": served, "trafficConfig": {"routes": routes}}),
            options,
        ));
    }
    // What the operator would refuse is refused here, by the same rule.
    for endpoint in &endpoints {
        match serde_json::from_value::<ServingEndpoint>(endpoint.clone()) {
            Ok(parsed) => {
                let fields = support::unsupported_fields(&parsed);
                if !fields.is_empty() {
                    problems.push(format!(
                        "{}: {}",
                        endpoint["metadata"]["name"].as_str().unwrap_or_default(),
                        support::unsupported_message(&fields)
                    ));
                }
            }
            Err(error) => problems.push(format!("a made endpoint does not parse: {error}")),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    keys.sort();
    Ok(Imported {
        endpoints,
        secret_keys: keys,
    })
}

fn named(at: &str, name: &str, problems: &mut Vec<String>) -> Option<String> {
    match endpoint_name(name) {
        Some(name) => Some(name),
        None => {
            problems.push(format!(
                "{at}: {name:?} cannot be a Kubernetes name (letters, digits, '-', '_', '.'; \
                 starting with a letter; at most 63)"
            ));
            None
        }
    }
}

fn document(name: &str, mlflow_name: &str, spec: Value, options: &ImportOptions) -> Value {
    let mut metadata = json!({"name": name, "annotations": {
        sluice_contract::mlflow::NAME_ANNOTATION: mlflow_name,
    }});
    if let Some(namespace) = &options.namespace {
        metadata["namespace"] = json!(namespace);
    }
    json!({
        "apiVersion": "serving.sluice.dev/v1alpha1",
        "kind": "ServingEndpoint",
        "metadata": metadata,
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ImportOptions {
        ImportOptions {
            namespace: Some("ml".into()),
            secret: "mlflow-keys".into(),
        }
    }

    const CONFIG: &str = r#"
endpoints:
  - name: chat
    endpoint_type: llm/v1/chat
    model:
      provider: openai
      name: gpt-4o-mini
      config:
        openai_api_key: $OPENAI_API_KEY
        openai_organization: org-1
    limit:
      renewal_period: minute
      calls: 10
  - name: azure_chat
    endpoint_type: llm/v1/chat
    model:
      provider: azure
      name: gpt-35-turbo
      config:
        openai_api_key: ${AZURE_OPENAI_API_KEY}
        openai_api_base: https://my-resource.openai.azure.com/
        openai_api_version: "2023-05-15"
        openai_deployment_name: my-deployment
  - name: claude
    endpoint_type: llm/v1/chat
    model:
      provider: anthropic
      name: claude-3-5-haiku-latest
      config:
        anthropic_api_key: $ANTHROPIC_API_KEY
routes:
  - name: embeddings
    route_type: llm/v1/embeddings
    model:
      provider: openai
      name: text-embedding-3-small
      config:
        openai_api_key: $OPENAI_API_KEY
  - name: chat-ab
    task_type: llm/v1/chat
    destinations:
      - {name: chat, traffic_percentage: 80}
      - {name: claude, traffic_percentage: 20}
    routing_strategy: TRAFFIC_SPLIT
"#;

    #[test]
    fn an_mlflow_config_becomes_endpoints_with_secret_references() {
        let imported = import(CONFIG, &options()).unwrap();
        assert_eq!(
            imported.secret_keys,
            [
                "ANTHROPIC_API_KEY",
                "AZURE_OPENAI_API_KEY",
                "OPENAI_API_KEY"
            ]
        );
        let names: Vec<&str> = imported
            .endpoints
            .iter()
            .map(|e| e["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["chat", "azure-chat", "claude", "embeddings", "chat-ab"]
        );
        let chat = &imported.endpoints[0];
        assert_eq!(chat["metadata"]["namespace"], "ml");
        assert_eq!(
            chat["spec"]["servedEntities"][0]["externalModel"],
            json!({"provider": "openai", "name": "gpt-4o-mini", "task": "llm/v1/chat",
                   "apiKeySecretRef": {"name": "mlflow-keys", "key": "OPENAI_API_KEY"},
                   "config": {"organization": "org-1"}})
        );
        assert_eq!(chat["spec"]["aiGateway"]["rateLimits"][0]["calls"], 10);
        let azure = &imported.endpoints[1];
        assert_eq!(
            azure["metadata"]["annotations"][sluice_contract::mlflow::NAME_ANNOTATION],
            "azure_chat"
        );
        assert_eq!(
            azure["spec"]["servedEntities"][0]["externalModel"]["config"],
            json!({"apiType": "azure", "apiVersion": "2023-05-15", "deploymentName": "my-deployment"})
        );
        assert_eq!(
            azure["spec"]["servedEntities"][0]["externalModel"]["apiBase"],
            "https://my-resource.openai.azure.com"
        );
        let ab = &imported.endpoints[4];
        assert_eq!(ab["spec"]["servedEntities"].as_array().unwrap().len(), 2);
        assert_eq!(
            ab["spec"]["trafficConfig"]["routes"][1],
            json!({"servedEntityName": "claude", "trafficPercentage": 20})
        );
        let yaml = imported.to_yaml(&options(), "config.yaml");
        assert!(yaml.contains(
            "kubectl create secret generic mlflow-keys -n ml --from-literal=ANTHROPIC_API_KEY="
        ));
        assert_eq!(yaml.matches("kind: ServingEndpoint").count(), 5);
    }

    #[test]
    fn what_sluice_would_not_call_is_named_and_nothing_is_made() {
        let config = r#"
endpoints:
  - name: cohere
    endpoint_type: llm/v1/completions
    model: {provider: cohere, name: command, config: {cohere_api_key: $COHERE_API_KEY}}
  - name: literal
    endpoint_type: llm/v1/chat
    model: {provider: openai, name: gpt-4o, config: {openai_api_key: sk-abc}}
  - name: 9bad
    endpoint_type: llm/v1/chat
    model: {provider: openai, name: gpt-4o, config: {openai_api_key: $K}}
  - name: odd
    endpoint_type: llm/v1/chat
    model: {provider: openai, name: gpt-4o, config: {openai_api_key: $K, temperature: "1"}}
"#;
        let problems = import(config, &options()).unwrap_err().join("\n");
        for needle in [
            "provider \"cohere\"",
            "openai_api_key is a key written in the file",
            "\"9bad\" cannot be a Kubernetes name",
            "model.config.temperature",
        ] {
            assert!(problems.contains(needle), "{needle}: {problems}");
        }
        assert!(
            !problems.contains("sk-abc"),
            "a key is never repeated: {problems}"
        );
    }
}
