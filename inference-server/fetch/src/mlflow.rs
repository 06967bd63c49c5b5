//! MLflow sources, through a tracking server's REST API:
//!
//! - registry references are resolved to the artifact location they name:
//!   `models:/<name>/<version>` (`model-versions/get-download-uri`), `models:/<name>@<alias>`
//!   (`registered-models/alias`, then the version's download URI) and `runs:/<run id>/<path>`
//!   (`runs/get`: the run's artifact root and the path);
//! - `mlflow-artifacts:/<path>` (also `mlflow-artifacts://<host>/<path>`), where a server run
//!   with `--serve-artifacts` keeps them, is downloaded through its artifact proxy
//!   (`mlflow-artifacts/artifacts`, listed folder by folder, each file streamed with the HTTP
//!   path's retries); any other location (`s3://`, `gs://`, `https://`, …) is fetched by the
//!   path of its own scheme, with the same environment (the ModelVersion's Secret).
//!
//! The server is `--mlflow-tracking-uri`, else `MLFLOW_TRACKING_URI`; credentials are MLflow's
//! own variables: `MLFLOW_TRACKING_TOKEN` (a bearer token), or `MLFLOW_TRACKING_USERNAME` and
//! `MLFLOW_TRACKING_PASSWORD` (basic auth). They are never printed.

use std::path::Path;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use super::http::{self, CONNECT_TIMEOUT};
use super::{FetchError, Staged, io, stream::Transfer};

pub use sluice_contract::mlflow::is_reference;

/// The path inside the tracking server's artifact store that an `mlflow-artifacts:` URI names,
/// or `None` for any other URI.
pub fn artifact_path(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("mlflow-artifacts:")?;
    let path = match rest.strip_prefix("//") {
        // `mlflow-artifacts://host:port/path`: the authority is the server itself.
        Some(with_host) => with_host.split_once('/').map_or("", |(_, path)| path),
        None => rest,
    };
    Some(path.trim_matches('/'))
}

/// A tracking server and the credentials to call it.
#[derive(Debug)]
pub struct Tracking {
    base: Url,
    headers: HeaderMap,
    client: reqwest::Client,
}

impl Tracking {
    /// The server `flag` names, else `MLFLOW_TRACKING_URI`, with the credentials of the
    /// environment. `uri` is the source being fetched, for messages.
    pub fn from_env(flag: Option<&str>, uri: &str) -> Result<Self, FetchError> {
        let failed = |message: String| FetchError::Registry {
            uri: uri.to_string(),
            message,
        };
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let server = flag
            .map(str::to_string)
            .or_else(|| env("MLFLOW_TRACKING_URI"))
            .ok_or_else(|| {
                failed(
                "no MLflow tracking server: set spec.source.trackingUri on the ModelVersion, or \
                 MLFLOW_TRACKING_URI in its Secret"
                    .into(),
            )
            })?;
        let base = Url::parse(server.trim_end_matches('/'))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                failed(format!(
                    "the tracking URI {} is not an http(s):// URL",
                    http::redact(&server)
                ))
            })?;
        let mut headers = HeaderMap::new();
        let secret = |text: String| {
            HeaderValue::from_str(&text).map(|mut value| {
                value.set_sensitive(true);
                value
            })
        };
        let authorization = sluice_contract::mlflow::authorization(
            env("MLFLOW_TRACKING_TOKEN").as_deref(),
            env("MLFLOW_TRACKING_USERNAME").as_deref(),
            env("MLFLOW_TRACKING_PASSWORD").as_deref(),
        )
        .map(secret);
        if let Some(value) = authorization {
            let value = value.map_err(|_| {
                failed("the MLflow credentials hold characters a header cannot carry".into())
            })?;
            headers.insert(AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(std::time::Duration::from_secs(60))
            .default_headers(headers.clone())
            .build()
            .map_err(|e| failed(e.without_url().to_string()))?;
        Ok(Self {
            base,
            headers,
            client,
        })
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}/{}", url.path().trim_end_matches('/'), path);
        url.set_path(&joined);
        url
    }

    /// GETs an API path with `query`; MLflow's error body is kept in the message.
    async fn get(
        &self,
        uri: &str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Value, FetchError> {
        let failed = |message: String| FetchError::Registry {
            uri: uri.to_string(),
            message,
        };
        let response = self
            .client
            .get(self.url(path))
            .query(query)
            .send()
            .await
            .map_err(|e| {
                failed(format!(
                    "the tracking server {} did not answer: {}",
                    http::redact(self.base.as_str()),
                    e.without_url()
                ))
            })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let said = body["message"].as_str().unwrap_or_default();
        let code = body["error_code"].as_str().unwrap_or_default();
        Err(failed(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => format!(
                "the tracking server refused the credentials (HTTP {}): check \
                 MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD in the Secret",
                status.as_u16()
            ),
            _ => format!("{path}: HTTP {} {code} {said}", status.as_u16())
                .trim()
                .to_string(),
        }))
    }

    /// The artifact location a registry reference names.
    pub async fn resolve(&self, uri: &str) -> Result<String, FetchError> {
        let failed = |message: &str| FetchError::Registry {
            uri: uri.to_string(),
            message: message.to_string(),
        };
        if let Some(rest) = uri.strip_prefix("models:/") {
            let (name, version) = match rest.split_once('@') {
                Some((name, alias)) => {
                    let found = self
                        .get(
                            uri,
                            "api/2.0/mlflow/registered-models/alias",
                            &[("name", name), ("alias", alias)],
                        )
                        .await?;
                    let version = found["model_version"]["version"]
                        .as_str()
                        .map(str::to_string)
                        .or_else(|| {
                            found["model_version"]["version"]
                                .as_i64()
                                .map(|v| v.to_string())
                        })
                        .ok_or_else(|| failed("the alias names no version"))?;
                    (name, version)
                }
                None => match rest.rsplit_once('/') {
                    Some((name, version))
                        if !name.is_empty()
                            && version.bytes().all(|b| b.is_ascii_digit())
                            && !version.is_empty() =>
                    {
                        (name, version.to_string())
                    }
                    _ => {
                        return Err(failed(
                            "expected models:/<name>/<version> or models:/<name>@<alias> \
                             (stages such as /Production are not supported: use an alias)",
                        ));
                    }
                },
            };
            let found = self
                .get(
                    uri,
                    "api/2.0/mlflow/model-versions/get-download-uri",
                    &[("name", name), ("version", &version)],
                )
                .await?;
            return found["artifact_uri"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| failed("the server named no artifact location"));
        }
        if let Some(rest) = uri.strip_prefix("runs:/") {
            let (run, path) = rest.split_once('/').unwrap_or((rest, ""));
            if run.is_empty() {
                return Err(failed("expected runs:/<run id>/<path>"));
            }
            let found = self
                .get(uri, "api/2.0/mlflow/runs/get", &[("run_id", run)])
                .await?;
            let root = found["run"]["info"]["artifact_uri"]
                .as_str()
                .ok_or_else(|| failed("the run has no artifact location"))?;
            let path = path.trim_matches('/');
            return Ok(if path.is_empty() {
                root.to_string()
            } else {
                format!("{}/{path}", root.trim_end_matches('/'))
            });
        }
        Err(failed("not a registry reference (models:/ or runs:/)"))
    }

    /// Every file under the artifact `path` (relative paths and sizes); a path that names one
    /// file is that file.
    pub async fn list(
        &self,
        uri: &str,
        path: &str,
    ) -> Result<Vec<(String, Option<u64>)>, FetchError> {
        let mut files = Vec::new();
        let mut folders = vec![String::new()];
        while let Some(folder) = folders.pop() {
            let full = join(path, &folder);
            let listed = self
                .get(
                    uri,
                    "api/2.0/mlflow-artifacts/artifacts",
                    &[("path", &full)],
                )
                .await?;
            for entry in listed["files"].as_array().into_iter().flatten() {
                let Some(name) = entry["path"].as_str() else {
                    continue;
                };
                // The server answers base names; anything else is not followed.
                let name = name.rsplit('/').next().unwrap_or(name);
                if name.is_empty() || name == "." || name == ".." {
                    continue;
                }
                let relative = join(&folder, name);
                if entry["is_dir"].as_bool() == Some(true) {
                    folders.push(relative);
                } else {
                    files.push((relative, entry["file_size"].as_u64()));
                }
            }
        }
        if files.is_empty() && !path.is_empty() {
            // Perhaps one file: the parent lists it.
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            let listed = self
                .get(
                    uri,
                    "api/2.0/mlflow-artifacts/artifacts",
                    &[("path", parent)],
                )
                .await?;
            let file = listed["files"].as_array().into_iter().flatten().find(|e| {
                e["path"].as_str().and_then(|p| p.rsplit('/').next()) == Some(name)
                    && e["is_dir"].as_bool() != Some(true)
            });
            if let Some(file) = file {
                return Ok(vec![(String::new(), file["file_size"].as_u64())]);
            }
            return Err(FetchError::Registry {
                uri: uri.to_string(),
                message: format!("no artifact at {path} on the tracking server"),
            });
        }
        files.sort();
        Ok(files)
    }

    /// The text of the small file `name` under the artifact folder `path` (an `MLmodel`).
    pub async fn text(&self, uri: &str, path: &str, name: &str) -> Result<String, FetchError> {
        let at = join(path, name);
        let failed = |message: String| FetchError::Registry {
            uri: uri.to_string(),
            message: format!("reading {at}: {message}"),
        };
        let url = self.url(&format!("api/2.0/mlflow-artifacts/artifacts/{at}"));
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| failed(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(failed(format!("HTTP {}", status.as_u16())));
        }
        response
            .text()
            .await
            .map_err(|e| failed(e.without_url().to_string()))
    }

    /// Downloads the artifact `path` (a folder or one file) into `staging`.
    pub async fn download(
        &self,
        uri: &str,
        path: &str,
        staging: &Path,
        transfer: &Transfer,
    ) -> Result<Staged, FetchError> {
        let files = self.list(uri, path).await?;
        let single = files.len() == 1 && files[0].0.is_empty();
        for (relative, _) in &files {
            let target = staging.join(relative);
            let folder = target.parent().unwrap_or(staging);
            std::fs::create_dir_all(folder).map_err(io("creating", folder))?;
            let url = self.url(&format!(
                "api/2.0/mlflow-artifacts/artifacts/{}",
                join(path, relative)
            ));
            let staged =
                http::fetch_with(url.as_str(), folder, transfer, self.headers.clone()).await?;
            if single {
                return Ok(staged);
            }
        }
        Ok(Staged::Folder)
    }
}

fn join(base: &str, name: &str) -> String {
    match (base.is_empty(), name.is_empty()) {
        (true, _) => name.to_string(),
        (_, true) => base.to_string(),
        _ => format!("{}/{name}", base.trim_end_matches('/')),
    }
}

/// Standard base64 (for basic auth).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_artifact_paths_are_recognised() {
        assert_eq!(
            artifact_path("mlflow-artifacts:/1/abc/artifacts/model"),
            Some("1/abc/artifacts/model")
        );
        assert_eq!(
            artifact_path("mlflow-artifacts://mlflow:5000/1/abc/"),
            Some("1/abc")
        );
        assert_eq!(artifact_path("s3://b/k"), None);
        assert_eq!(join("a/b", "c"), "a/b/c");
        assert_eq!(join("", "c"), "c");
        assert_eq!(join("a", ""), "a");
    }
}
