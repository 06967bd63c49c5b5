//! External model entities: which providers and settings this version calls, and where. The
//! gateway calls the provider itself (no pods); the operator refuses, by name, a provider or a
//! setting it would not act on ([`problems`]), so an endpoint is never READY in front of an
//! entity every call to which would fail.

use sluice_crds::{ExternalModel, ExternalProvider, ExternalTask};

/// `config` key: the OpenAI organisation sent as `OpenAI-Organization`.
pub const ORGANIZATION: &str = "organization";
/// `config` key: `azure` (an `api-key` header) or `azuread` (a Microsoft Entra bearer token)
/// makes an `openai` entity call Azure OpenAI at `apiBase`.
pub const API_TYPE: &str = "apiType";
/// `config` key: the Azure OpenAI deployment called.
pub const DEPLOYMENT_NAME: &str = "deploymentName";
/// `config` key: the Azure OpenAI `api-version` query parameter.
pub const API_VERSION: &str = "apiVersion";
/// `config` key: the `anthropic-version` header (default [`ANTHROPIC_VERSION`]).
pub const ANTHROPIC_VERSION_KEY: &str = "anthropicVersion";
/// `config` key: `max_tokens` sent to Anthropic when the request sets none (Anthropic requires
/// it; default [`ANTHROPIC_MAX_TOKENS`]).
pub const MAX_TOKENS: &str = "maxTokens";

/// The Anthropic API version sent unless `config.anthropicVersion` says otherwise.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// `max_tokens` sent to Anthropic when neither the request nor `config.maxTokens` sets one.
pub const ANTHROPIC_MAX_TOKENS: u32 = 4096;

/// How the gateway calls an external model: the wire format and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Api {
    /// The OpenAI API (OpenAI itself, or any OpenAI-compatible server) under `base`
    /// (`…/v1`): `POST {base}/chat/completions`, a bearer key.
    OpenAi {
        /// Base URL, without a trailing `/`.
        base: String,
        /// `OpenAI-Organization`, if set.
        organization: Option<String>,
    },
    /// Azure OpenAI: `POST {base}/openai/deployments/{deployment}/chat/completions
    /// ?api-version={version}`, the key in `api-key` (or a bearer token for `azuread`).
    Azure {
        /// Resource URL, without a trailing `/`.
        base: String,
        /// Deployment name.
        deployment: String,
        /// `api-version`.
        version: String,
        /// Whether the key is a Microsoft Entra token (`Authorization: Bearer`).
        entra: bool,
    },
    /// The Anthropic Messages API: `POST {base}/v1/messages`, the key in `x-api-key`.
    Anthropic {
        /// Base URL, without a trailing `/`.
        base: String,
        /// `anthropic-version`.
        version: String,
        /// `max_tokens` when the request sets none.
        max_tokens: u32,
    },
    /// A Databricks model serving endpoint (OpenAI chat format):
    /// `POST {base}/serving-endpoints/{name}/invocations`, a bearer token.
    Databricks {
        /// Workspace URL, without a trailing `/`.
        base: String,
    },
}

impl Api {
    /// The wire format's name, for messages and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::OpenAi { .. } => "openai",
            Self::Azure { .. } => "azure-openai",
            Self::Anthropic { .. } => "anthropic",
            Self::Databricks { .. } => "databricks",
        }
    }
}

/// The settings each provider reads from `config`; any other key is refused by name.
fn known_keys(model: &ExternalModel) -> &'static [&'static str] {
    match model.provider {
        ExternalProvider::Openai => &[ORGANIZATION, API_TYPE, DEPLOYMENT_NAME, API_VERSION],
        ExternalProvider::Anthropic => &[ANTHROPIC_VERSION_KEY, MAX_TOKENS],
        _ => &[],
    }
}

/// How to call `model`, or every reason this version cannot, each naming the field (relative
/// to the entity's `externalModel`).
pub fn api(model: &ExternalModel) -> Result<Api, Vec<String>> {
    let mut problems = Vec::new();
    let known = known_keys(model);
    for key in model.config.keys() {
        if !known.contains(&key.as_str()) {
            problems.push(format!(
                "config.{key} (not a setting of provider {}; known: {})",
                provider_name(model.provider),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
    }
    let base = model
        .api_base
        .as_deref()
        .map(|b| b.trim_end_matches('/').to_string());
    let setting = |key: &str| model.config.get(key).cloned();
    let api = match model.provider {
        ExternalProvider::Openai => match setting(API_TYPE).as_deref() {
            None | Some("openai") => Some(Api::OpenAi {
                base: base.unwrap_or_else(|| "https://api.openai.com/v1".into()),
                organization: setting(ORGANIZATION),
            }),
            Some(kind @ ("azure" | "azuread")) => {
                let deployment = setting(DEPLOYMENT_NAME);
                let version = setting(API_VERSION);
                for (value, key) in [(&deployment, DEPLOYMENT_NAME), (&version, API_VERSION)] {
                    if value.is_none() {
                        problems.push(format!("config.{key} (required with apiType {kind})"));
                    }
                }
                if base.is_none() {
                    problems.push(format!(
                        "apiBase (required with apiType {kind}: the Azure OpenAI resource URL)"
                    ));
                }
                match (base, deployment, version) {
                    (Some(base), Some(deployment), Some(version)) => Some(Api::Azure {
                        base,
                        deployment,
                        version,
                        entra: kind == "azuread",
                    }),
                    _ => None,
                }
            }
            Some(other) => {
                problems.push(format!(
                    "config.apiType {other:?} (one of openai, azure, azuread)"
                ));
                None
            }
        },
        ExternalProvider::Custom => match base {
            Some(base) => Some(Api::OpenAi {
                base,
                organization: None,
            }),
            None => {
                problems.push("apiBase (required for provider custom)".into());
                None
            }
        },
        ExternalProvider::Anthropic => {
            let max_tokens = match setting(MAX_TOKENS) {
                None => ANTHROPIC_MAX_TOKENS,
                Some(text) => match text.parse::<u32>() {
                    Ok(n) if n > 0 => n,
                    _ => {
                        problems.push(format!("config.{MAX_TOKENS} {text:?} (a positive integer)"));
                        ANTHROPIC_MAX_TOKENS
                    }
                },
            };
            if model.task != ExternalTask::Chat {
                problems.push(format!(
                    "task {} (the Anthropic Messages API serves llm/v1/chat only)",
                    task_name(model.task)
                ));
            }
            Some(Api::Anthropic {
                base: base.unwrap_or_else(|| "https://api.anthropic.com".into()),
                version: setting(ANTHROPIC_VERSION_KEY).unwrap_or_else(|| ANTHROPIC_VERSION.into()),
                max_tokens,
            })
        }
        ExternalProvider::DatabricksModelServing => match base {
            Some(base) => Some(Api::Databricks { base }),
            None => {
                problems.push(
                    "apiBase (required for provider databricks-model-serving: the workspace URL)"
                        .into(),
                );
                None
            }
        },
        other => {
            problems.push(format!(
                "provider {} (this version calls openai, azure openai, anthropic, \
                 databricks-model-serving and custom OpenAI-compatible servers)",
                provider_name(other)
            ));
            None
        }
    };
    match api {
        Some(api) if problems.is_empty() => Ok(api),
        _ => Err(problems),
    }
}

/// What one key of an upstream provider config sets (MLflow AI Gateway's `model.config`, the
/// Databricks API's `<provider>_config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderSetting {
    /// The provider's API key (a reference to a secret, in the source's own spelling).
    ApiKey,
    /// The provider's base URL (`apiBase`).
    ApiBase,
    /// A `config` setting, by its Sluice key ([`API_TYPE`], [`DEPLOYMENT_NAME`], …).
    Config(&'static str),
}

/// What upstream provider-config key `key` sets; `None` for a key Sluice does not read.
pub fn provider_setting(key: &str) -> Option<ProviderSetting> {
    Some(match key {
        "openai_api_key" | "anthropic_api_key" | "cohere_api_key" | "databricks_api_token" => {
            ProviderSetting::ApiKey
        }
        "openai_api_base" | "cohere_api_base" | "databricks_workspace_url" => {
            ProviderSetting::ApiBase
        }
        "openai_organization" => ProviderSetting::Config(ORGANIZATION),
        "openai_api_type" => ProviderSetting::Config(API_TYPE),
        "openai_deployment_name" => ProviderSetting::Config(DEPLOYMENT_NAME),
        "openai_api_version" => ProviderSetting::Config(API_VERSION),
        "anthropic_version" => ProviderSetting::Config(ANTHROPIC_VERSION_KEY),
        _ => return None,
    })
}

/// The provider's name as the API spells it.
pub fn provider_name(provider: ExternalProvider) -> &'static str {
    match provider {
        ExternalProvider::Openai => "openai",
        ExternalProvider::Anthropic => "anthropic",
        ExternalProvider::Cohere => "cohere",
        ExternalProvider::AmazonBedrock => "amazon-bedrock",
        ExternalProvider::GoogleCloudVertexAi => "google-cloud-vertex-ai",
        ExternalProvider::Ai21labs => "ai21labs",
        ExternalProvider::DatabricksModelServing => "databricks-model-serving",
        ExternalProvider::Custom => "custom",
    }
}

/// The task's name as the API spells it.
pub fn task_name(task: ExternalTask) -> &'static str {
    match task {
        ExternalTask::Chat => "llm/v1/chat",
        ExternalTask::Completions => "llm/v1/completions",
        ExternalTask::Embeddings => "llm/v1/embeddings",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn model(
        provider: ExternalProvider,
        base: Option<&str>,
        config: &[(&str, &str)],
    ) -> ExternalModel {
        ExternalModel {
            provider,
            name: "m".into(),
            task: ExternalTask::Chat,
            api_key_secret_ref: None,
            api_base: base.map(str::to_string),
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn each_provider_resolves_to_its_wire_format_and_defaults() {
        assert_eq!(
            api(&model(ExternalProvider::Openai, None, &[])),
            Ok(Api::OpenAi {
                base: "https://api.openai.com/v1".into(),
                organization: None
            })
        );
        assert_eq!(
            api(&model(
                ExternalProvider::Openai,
                Some("https://r.openai.azure.com/"),
                &[
                    ("apiType", "azure"),
                    ("deploymentName", "d"),
                    ("apiVersion", "2024-10-21")
                ]
            )),
            Ok(Api::Azure {
                base: "https://r.openai.azure.com".into(),
                deployment: "d".into(),
                version: "2024-10-21".into(),
                entra: false
            })
        );
        assert_eq!(
            api(&model(ExternalProvider::Anthropic, None, &[])),
            Ok(Api::Anthropic {
                base: "https://api.anthropic.com".into(),
                version: ANTHROPIC_VERSION.into(),
                max_tokens: ANTHROPIC_MAX_TOKENS
            })
        );
    }

    #[test]
    fn what_cannot_be_called_is_named() {
        let problems = api(&model(
            ExternalProvider::Openai,
            None,
            &[("apiType", "azure"), ("region", "x")],
        ))
        .unwrap_err();
        let text = problems.join("; ");
        for field in [
            "config.region",
            "config.deploymentName",
            "config.apiVersion",
            "apiBase",
        ] {
            assert!(text.contains(field), "{text}");
        }
        assert!(
            api(&model(ExternalProvider::Custom, None, &[])).unwrap_err()[0].starts_with("apiBase")
        );
        assert!(
            api(&model(ExternalProvider::Cohere, None, &[])).unwrap_err()[0].contains("cohere")
        );
        let mut embeddings = model(ExternalProvider::Anthropic, None, &[("maxTokens", "0")]);
        embeddings.task = ExternalTask::Embeddings;
        assert_eq!(api(&embeddings).unwrap_err().len(), 2);
    }
}
