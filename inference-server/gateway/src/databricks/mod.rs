//! The Databricks serving-endpoints management API (`/api/2.0/serving-endpoints`), mapped onto
//! ServingEndpoint objects, so the `databricks-sdk` client and MLflow's Databricks deployment
//! client manage Sluice endpoints unchanged.
//!
//! Each call is authorised as its caller: the bearer token is checked as for queries, then a
//! SubjectAccessReview asks the API server whether that caller may do the matching RBAC verb
//! (`get`, `list`, `create`, `update`, `delete`) to `servingendpoints` in the endpoint's
//! namespace, exactly as `kubectl` would be asked. Only then does the gateway act, with its own
//! ServiceAccount. API keys only query; they cannot manage.
//!
//! Names: `<namespace>.<name>` names a namespace; a plain name is looked up in the watched
//! namespaces (refused when several have it) and created in `--api-namespace` (or the one
//! watched namespace). Bodies are the SDK's snake_case ([`wire`]), turned into the CRD with the
//! upstream defaults ([`convert`]); errors have the SDK's shape (`error_code`, `message`).

pub mod convert;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State as AxumState};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, patch, put};
use http::HeaderMap;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sluice_crds::{ConfigUpdateState, ServingEndpoint, ServingEndpointSpec};
use sluice_protocol::error::{ApiError, ErrorKind};

use crate::auth::{Auth, AuthError, Caller, Verb};
use crate::metrics::GatewayMetrics;

/// Largest management request body read.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The field manager of the gateway's writes.
const FIELD_MANAGER: &str = "sluice-gateway-api";

/// What the management API needs.
pub struct Management {
    /// The gateway's own client: it acts once the caller is authorised.
    pub client: Client,
    /// How callers are checked.
    pub auth: Arc<Auth>,
    /// The namespaces the gateway watches (all when empty).
    pub namespaces: Vec<String>,
    /// Where a plain name is created.
    pub default_namespace: Option<String>,
    /// Labels every created endpoint gets: those of the installation's selector, so its
    /// operator and gateways manage it.
    pub labels: BTreeMap<String, String>,
    /// Where calls are counted.
    pub metrics: GatewayMetrics,
}

type Shared = Arc<Management>;

/// The routes of the management API.
pub fn router(management: Shared) -> Router {
    Router::new()
        .route("/api/2.0/serving-endpoints", get(list).post(create))
        // MLflow's Databricks client lists with a trailing slash.
        .route("/api/2.0/serving-endpoints/", get(list).post(create))
        .route(
            "/api/2.0/serving-endpoints/{name}",
            get(read).delete(delete),
        )
        .route(
            "/api/2.0/serving-endpoints/{name}/config",
            put(update_config),
        )
        .route(
            "/api/2.0/serving-endpoints/{name}/ai-gateway",
            put(update_ai_gateway),
        )
        .route(
            "/api/2.0/serving-endpoints/{name}/rate-limits",
            put(update_rate_limits),
        )
        .route("/api/2.0/serving-endpoints/{name}/tags", patch(update_tags))
        .route(
            "/api/2.0/serving-endpoints/{name}/{*rest}",
            any(not_provided),
        )
        .route(
            "/api/2.0/permissions/serving-endpoints/{*rest}",
            any(not_provided),
        )
        .method_not_allowed_fallback(wrong_method)
        .with_state(management)
}

async fn wrong_method(request: Request<Body>) -> Response {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!(
            "{} is not a method of {} (docs/gateway.md, \"Managing endpoints\", lists each route)",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response()
}

/// An endpoint found: where it lives, and the name the caller gave it.
struct Located {
    namespace: String,
    name: String,
    shown: String,
}

/// `PUT …/rate-limits` (deprecated upstream: `ai_gateway.rate_limits`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitsBody {
    #[serde(default)]
    rate_limits: Vec<wire::RateLimitInput>,
}

impl Management {
    fn api(&self, namespace: &str) -> Api<ServingEndpoint> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Runs one call: counts it by verb and outcome, in a span naming both.
    async fn answer(
        &self,
        verb: Verb,
        call: impl Future<Output = Result<Value, ApiError>>,
    ) -> Response {
        let span = tracing::info_span!("management", verb = verb.as_str());
        let outcome = tracing::Instrument::instrument(call, span).await;
        match outcome {
            Ok(body) => {
                self.metrics.management(verb.as_str(), "OK");
                axum::Json(body).into_response()
            }
            Err(error) => {
                self.metrics.management(verb.as_str(), error.kind.code());
                tracing::debug!(verb = verb.as_str(), error = %error.message, "management call refused");
                error.into_response()
            }
        }
    }

    async fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        self.auth.authenticate(headers).await.map_err(refused)
    }

    async fn allow(
        &self,
        caller: &Caller,
        verb: Verb,
        namespace: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        self.auth
            .authorize_to(caller, verb, namespace, name)
            .await
            .map_err(refused)
    }

    /// The namespace and name a create of `name` means.
    fn to_create(&self, name: &str) -> Result<Located, ApiError> {
        let (namespace, bare) = match name.split_once('.') {
            Some((namespace, bare)) => (namespace.to_string(), bare),
            None => {
                let namespace =
                    self.default_namespace
                        .clone()
                        .or(match self.namespaces.as_slice() {
                            [one] => Some(one.clone()),
                            _ => None,
                        });
                let namespace = namespace.ok_or_else(|| {
                    ApiError::invalid(format!(
                        "name: say which namespace {name:?} goes to, as <namespace>.{name} (this \
                         gateway has no --api-namespace)"
                    ))
                })?;
                (namespace, name)
            }
        };
        if !self.namespaces.is_empty() && !self.namespaces.contains(&namespace) {
            return Err(ApiError::invalid(format!(
                "name: this gateway serves the namespaces {}, not {namespace}",
                self.namespaces.join(", ")
            )));
        }
        if sluice_contract::mlflow::endpoint_name(bare).as_deref() != Some(bare) || bare.len() > 24
        {
            return Err(ApiError::invalid(format!(
                "name: {bare:?} is no endpoint name Sluice can use: a DNS-1035 label (lower-case \
                 letters, digits and `-`, starting with a letter) of at most 24 characters"
            )));
        }
        Ok(Located {
            shown: name.to_string(),
            namespace,
            name: bare.to_string(),
        })
    }

    /// Where the endpoint the caller calls `name` lives.
    async fn locate(&self, name: &str) -> Result<Located, ApiError> {
        if let Some((namespace, bare)) = name.split_once('.') {
            return Ok(Located {
                namespace: namespace.to_string(),
                name: bare.to_string(),
                shown: name.to_string(),
            });
        }
        let by_name = ListParams::default().fields(&format!("metadata.name={name}"));
        let mut found = Vec::new();
        if self.namespaces.is_empty() {
            let all: Api<ServingEndpoint> = Api::all(self.client.clone());
            found.extend(
                all.list_metadata(&by_name)
                    .await
                    .map_err(kube_failure)?
                    .items
                    .into_iter()
                    .filter_map(|m| m.metadata.namespace),
            );
        } else {
            for namespace in &self.namespaces {
                if self
                    .api(namespace)
                    .get_metadata_opt(name)
                    .await
                    .map_err(kube_failure)?
                    .is_some()
                {
                    found.push(namespace.clone());
                }
            }
        }
        match found.as_slice() {
            [namespace] => Ok(Located {
                namespace: namespace.clone(),
                name: name.to_string(),
                shown: name.to_string(),
            }),
            [] => Err(does_not_exist(name)),
            many => Err(ApiError::invalid(format!(
                "name: {name} is an endpoint in several namespaces ({}); call it \
                 <namespace>.{name}",
                many.join(", ")
            ))),
        }
    }

    async fn fetch(&self, at: &Located) -> Result<ServingEndpoint, ApiError> {
        self.api(&at.namespace)
            .get_opt(&at.name)
            .await
            .map_err(kube_failure)?
            .ok_or_else(|| does_not_exist(&at.shown))
    }

    /// Reads endpoint `name` for `verb`, lets `change` turn its spec into the new one, and
    /// writes it back (refused while a config update is in progress when `busy_refused`).
    async fn change(
        &self,
        headers: &HeaderMap,
        name: &str,
        busy_refused: bool,
        change: impl FnOnce(&ServingEndpointSpec) -> Result<ServingEndpointSpec, ApiError>,
    ) -> Result<(ServingEndpoint, Located), ApiError> {
        let caller = self.caller(headers).await?;
        let at = self.locate(name).await?;
        self.allow(&caller, Verb::Update, &at.namespace, &at.name)
            .await?;
        let mut endpoint = self.fetch(&at).await?;
        if busy_refused && convert::state(&endpoint).config_update == ConfigUpdateState::IN_PROGRESS
        {
            return Err(ApiError::new(
                ErrorKind::ResourceConflict,
                format!(
                    "endpoint {} is being updated (state.config_update is IN_PROGRESS); another \
                     update can be made once it is NOT_UPDATING",
                    at.shown
                ),
            ));
        }
        endpoint.spec = change(&endpoint.spec)?;
        endpoint.status = None;
        endpoint.metadata.managed_fields = None;
        let written = self
            .api(&at.namespace)
            .replace(&at.name, &post_params(), &endpoint)
            .await
            .map_err(kube_failure)?;
        Ok((written, at))
    }
}

fn post_params() -> PostParams {
    PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    }
}

fn refused(error: AuthError) -> ApiError {
    error.to_api_error()
}

fn does_not_exist(name: &str) -> ApiError {
    ApiError::new(
        ErrorKind::ResourceDoesNotExist,
        format!("no serving endpoint named {name}"),
    )
}

/// The API server's answer to one of the gateway's calls, as the caller's error.
fn kube_failure(error: kube::Error) -> ApiError {
    let kube::Error::Api(status) = &error else {
        return ApiError::new(
            ErrorKind::Unavailable,
            format!(
                "the Kubernetes API could not be asked: {}",
                sluice_protocol::error::error_chain(&error)
            ),
        )
        .with_retry_after(std::time::Duration::from_secs(1));
    };
    let kind = match (status.code, status.reason.as_str()) {
        (409, "AlreadyExists") => ErrorKind::ResourceAlreadyExists,
        (409, _) => ErrorKind::ResourceConflict,
        (404, _) => ErrorKind::ResourceDoesNotExist,
        (400 | 422, _) => ErrorKind::InvalidParameterValue,
        (403, _) => {
            return ApiError::internal(format!(
                "the gateway's ServiceAccount may not do this ({}); the chart grants it with \
                 gateway.managementApi.enabled",
                status.message
            ));
        }
        _ => ErrorKind::Unavailable,
    };
    ApiError::new(kind, status.message.clone())
}

/// The body of `request` as `T`, or a 400 naming the field that is wrong.
async fn body_of<T: DeserializeOwned>(request: Request) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
    let bytes = if bytes.is_empty() {
        &b"{}"[..]
    } else {
        &bytes[..]
    };
    let mut parser = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut parser).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        ApiError::invalid(format!("{at}{}", e.inner()))
    })
}

fn problems(found: convert::Problems) -> ApiError {
    ApiError::invalid(found.join("; "))
}

async fn create(AxumState(m): AxumState<Shared>, request: Request) -> Response {
    let headers = request.headers().clone();
    m.answer(Verb::Create, async {
        let caller = m.caller(&headers).await?;
        let body: wire::CreateEndpoint = body_of(request).await?;
        let at = m.to_create(&body.name)?;
        m.allow(&caller, Verb::Create, &at.namespace, "").await?;
        let spec = convert::create_spec(&body).map_err(problems)?;
        let mut endpoint = ServingEndpoint::new(&at.name, spec);
        endpoint.metadata.namespace = Some(at.namespace.clone());
        endpoint.metadata.labels = (!m.labels.is_empty()).then(|| m.labels.clone());
        endpoint.metadata.annotations = Some(BTreeMap::from([(
            convert::CREATOR_ANNOTATION.to_string(),
            caller.identity.user.clone(),
        )]));
        let created = m
            .api(&at.namespace)
            .create(&post_params(), &endpoint)
            .await
            .map_err(kube_failure)?;
        tracing::info!(
            namespace = at.namespace,
            name = at.name,
            user = caller.identity.user,
            "endpoint created"
        );
        Ok(convert::detailed(&created, &at.shown))
    })
    .await
}

async fn read(
    AxumState(m): AxumState<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    m.answer(Verb::Get, async {
        let caller = m.caller(&headers).await?;
        let at = m.locate(&name).await?;
        m.allow(&caller, Verb::Get, &at.namespace, &at.name).await?;
        let endpoint = m.fetch(&at).await?;
        Ok(convert::detailed(&endpoint, &at.shown))
    })
    .await
}

async fn list(AxumState(m): AxumState<Shared>, headers: HeaderMap) -> Response {
    m.answer(Verb::List, async {
        let caller = m.caller(&headers).await?;
        let mut endpoints = Vec::new();
        if m.namespaces.is_empty() {
            let all: Api<ServingEndpoint> = Api::all(m.client.clone());
            endpoints = all
                .list(&ListParams::default())
                .await
                .map_err(kube_failure)?
                .items;
        } else {
            for namespace in &m.namespaces {
                endpoints.extend(
                    m.api(namespace)
                        .list(&ListParams::default())
                        .await
                        .map_err(kube_failure)?
                        .items,
                );
            }
        }
        // Only the namespaces the caller may list.
        let mut allowed: BTreeMap<String, bool> = BTreeMap::new();
        for endpoint in &endpoints {
            let namespace = endpoint.metadata.namespace.clone().unwrap_or_default();
            if allowed.contains_key(&namespace) {
                continue;
            }
            let verdict = match m
                .auth
                .authorize_to(&caller, Verb::List, &namespace, "")
                .await
            {
                Ok(()) => true,
                Err(AuthError::ForbiddenTo { .. }) => false,
                Err(other) => return Err(refused(other)),
            };
            allowed.insert(namespace, verdict);
        }
        endpoints.retain(|e| {
            allowed.get(e.metadata.namespace.as_deref().unwrap_or_default()) == Some(&true)
        });
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for endpoint in &endpoints {
            *seen
                .entry(endpoint.metadata.name.as_deref().unwrap_or_default())
                .or_default() += 1;
        }
        let listed: Vec<Value> = endpoints
            .iter()
            .map(|e| {
                let name = e.metadata.name.as_deref().unwrap_or_default();
                let shown = if seen.get(name) == Some(&1) {
                    name.to_string()
                } else {
                    format!(
                        "{}.{name}",
                        e.metadata.namespace.as_deref().unwrap_or_default()
                    )
                };
                convert::summary(e, &shown)
            })
            .collect();
        Ok(json!({ "endpoints": listed }))
    })
    .await
}

async fn delete(
    AxumState(m): AxumState<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    m.answer(Verb::Delete, async {
        let caller = m.caller(&headers).await?;
        let at = m.locate(&name).await?;
        m.allow(&caller, Verb::Delete, &at.namespace, &at.name)
            .await?;
        m.api(&at.namespace)
            .delete(&at.name, &DeleteParams::default())
            .await
            .map_err(kube_failure)?;
        tracing::info!(
            namespace = at.namespace,
            name = at.name,
            user = caller.identity.user,
            "endpoint deleted"
        );
        Ok(json!({}))
    })
    .await
}

/// One update route: the body as `B`, the spec changed by `change` (refused while a config
/// update is in progress when `busy_refused`), the written endpoint answered by `out`.
async fn updated<B: DeserializeOwned>(
    m: Shared,
    name: String,
    request: Request,
    busy_refused: bool,
    change: impl FnOnce(&ServingEndpointSpec, &B) -> Result<ServingEndpointSpec, convert::Problems>,
    out: impl FnOnce(&ServingEndpoint, &Located) -> Value,
) -> Response {
    let headers = request.headers().clone();
    m.answer(Verb::Update, async {
        let body: B = body_of(request).await?;
        let (written, at) = m
            .change(&headers, &name, busy_refused, |spec| {
                change(spec, &body).map_err(problems)
            })
            .await?;
        Ok(out(&written, &at))
    })
    .await
}

async fn update_config(
    AxumState(m): AxumState<Shared>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    updated(
        m,
        name,
        request,
        true,
        convert::with_config,
        |written, at| convert::detailed(written, &at.shown),
    )
    .await
}

async fn update_ai_gateway(
    AxumState(m): AxumState<Shared>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    updated(
        m,
        name,
        request,
        false,
        convert::with_ai_gateway,
        |written, _| convert::ai_gateway_out(&written.spec),
    )
    .await
}

async fn update_rate_limits(
    AxumState(m): AxumState<Shared>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    updated(
        m,
        name,
        request,
        false,
        |spec, body: &RateLimitsBody| convert::with_rate_limits(spec, &body.rate_limits),
        |written, _| {
            let out = convert::ai_gateway_out(&written.spec);
            json!({ "rate_limits": out.get("rate_limits").cloned().unwrap_or(json!([])) })
        },
    )
    .await
}

async fn update_tags(
    AxumState(m): AxumState<Shared>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    updated(
        m,
        name,
        request,
        false,
        |spec, body| Ok(convert::with_tags(spec, body)),
        |written, _| {
            let tags: Vec<Value> = written
                .spec
                .tags
                .iter()
                .map(|t| json!({"key": t.key, "value": t.value}))
                .collect();
            json!({ "tags": tags })
        },
    )
    .await
}

/// Routes of the upstream API that Sluice does not provide, named in a 501.
async fn not_provided(request: Request<Body>) -> Response {
    ApiError::new(
        ErrorKind::NotImplemented,
        format!(
            "{} {} is not provided by Sluice: metrics are on the gateway's /metrics, logs in \
             `kubectl logs`, permissions in Kubernetes RBAC",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response()
}
