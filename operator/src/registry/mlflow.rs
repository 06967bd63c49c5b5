//! What a mirror reads of an MLflow registry: each registered model's versions and aliases,
//! through the MLflow REST API (`registered-models/get|search`, `model-versions/search`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde::Deserialize;
use sluice_contract::config::RegistryMirror;

/// Why a registry could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The credentials folder could not be read.
    #[error("registry {mirror}: reading credentials {path}: {source}")]
    Credentials {
        /// The mirror.
        mirror: String,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The credential files hold characters an HTTP header cannot carry (the value is never
    /// printed).
    #[error(
        "registry {mirror}: the credentials in {dir} hold characters an Authorization header \
         cannot carry (a stray control character or non-ASCII byte in MLFLOW_TRACKING_TOKEN, \
         MLFLOW_TRACKING_USERNAME or MLFLOW_TRACKING_PASSWORD)"
    )]
    BadCredentials {
        /// The mirror.
        mirror: String,
        /// The credentials folder.
        dir: String,
        /// Why.
        #[source]
        source: reqwest::header::InvalidHeaderValue,
    },
    /// The HTTP client could not be built.
    #[error("registry {mirror}: {source}")]
    Client {
        /// The mirror.
        mirror: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The tracking server did not answer.
    #[error("registry {mirror}: {path} did not answer: {source}")]
    Unreachable {
        /// The mirror.
        mirror: String,
        /// The API path.
        path: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The tracking server answered with an error.
    #[error("registry {mirror}: {path} answered {status}: {body}")]
    Refused {
        /// The mirror.
        mirror: String,
        /// The API path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// MLflow's error body (its first 300 characters).
        body: String,
    },
}

/// One registered model as the registry holds it now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegisteredModel {
    /// Its MLflow name.
    pub name: String,
    /// Alias → version number.
    pub aliases: BTreeMap<String, i64>,
    /// The numbers of its versions whose registration is complete (`READY`).
    pub versions: Vec<i64>,
}

/// A registry's client, with the mirror's credentials.
pub struct Registry {
    mirror: String,
    base: String,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct Alias {
    alias: String,
    version: String,
}

#[derive(Deserialize)]
struct Model {
    name: String,
    #[serde(default)]
    aliases: Vec<Alias>,
}

#[derive(Deserialize)]
struct GetModel {
    registered_model: Model,
}

#[derive(Deserialize)]
struct SearchModels {
    #[serde(default)]
    registered_models: Vec<Model>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct Version {
    version: String,
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
struct SearchVersions {
    #[serde(default)]
    model_versions: Vec<Version>,
    #[serde(default)]
    next_page_token: Option<String>,
}

/// The credential file `name` in `dir`, trimmed; `None` when absent.
fn credential(mirror: &str, dir: &Path, name: &str) -> Result<Option<String>, RegistryError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RegistryError::Credentials {
            mirror: mirror.to_string(),
            path: path.display().to_string(),
            source,
        }),
    }
}

impl Registry {
    /// A client of `mirror`'s tracking server, with the credentials of its folder (read again
    /// at every sync, so a rotated Secret takes effect).
    pub fn new(mirror: &RegistryMirror) -> Result<Self, RegistryError> {
        let name = mirror.name.clone();
        let mut headers = HeaderMap::new();
        if let Some(dir) = &mirror.credentials_dir {
            let dir = Path::new(dir);
            let read = |file: &str| credential(&name, dir, file);
            let token = read("MLFLOW_TRACKING_TOKEN")?;
            let user = read("MLFLOW_TRACKING_USERNAME")?;
            let password = read("MLFLOW_TRACKING_PASSWORD")?;
            if let Some(value) = sluice_contract::mlflow::authorization(
                token.as_deref(),
                user.as_deref(),
                password.as_deref(),
            ) {
                let mut value = HeaderValue::from_str(&value).map_err(|source| {
                    RegistryError::BadCredentials {
                        mirror: name.clone(),
                        dir: dir.display().to_string(),
                        source,
                    }
                })?;
                value.set_sensitive(true);
                headers.insert(AUTHORIZATION, value);
            }
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .default_headers(headers)
            .build()
            .map_err(|source| RegistryError::Client {
                mirror: name.clone(),
                source,
            })?;
        Ok(Self {
            mirror: name,
            base: mirror.tracking_uri.trim_end_matches('/').to_string(),
            client,
        })
    }

    /// GETs `path` with `query`: `Ok(None)` for MLflow's `RESOURCE_DOES_NOT_EXIST`.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Option<T>, RegistryError> {
        let unreachable = |source| RegistryError::Unreachable {
            mirror: self.mirror.clone(),
            path: path.to_string(),
            source,
        };
        let response = self
            .client
            .get(format!("{}/api/2.0/mlflow/{path}", self.base))
            .query(query)
            .send()
            .await
            .map_err(|e| unreachable(e.without_url()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| unreachable(e.without_url()))?;
        if status.is_success() {
            return serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| RegistryError::Refused {
                    mirror: self.mirror.clone(),
                    path: path.to_string(),
                    status: status.as_u16(),
                    body: format!("not the MLflow answer expected: {e}"),
                });
        }
        if status.as_u16() == 404 && text.contains("RESOURCE_DOES_NOT_EXIST") {
            return Ok(None);
        }
        Err(RegistryError::Refused {
            mirror: self.mirror.clone(),
            path: path.to_string(),
            status: status.as_u16(),
            body: text.chars().take(300).collect(),
        })
    }

    /// The models `names` (every model when empty) with their ready versions and aliases. A
    /// named model the registry does not hold comes back with no versions.
    pub async fn read(&self, names: &[String]) -> Result<Vec<RegisteredModel>, RegistryError> {
        let mut models = Vec::new();
        if names.is_empty() {
            let mut page: Option<String> = None;
            loop {
                let mut query = vec![("max_results", "1000")];
                if let Some(token) = &page {
                    query.push(("page_token", token));
                }
                let found: SearchModels = self
                    .get("registered-models/search", &query)
                    .await?
                    .unwrap_or(SearchModels {
                        registered_models: Vec::new(),
                        next_page_token: None,
                    });
                models.extend(found.registered_models);
                match found.next_page_token.filter(|t| !t.is_empty()) {
                    Some(token) => page = Some(token),
                    None => break,
                }
            }
        } else {
            for name in names {
                let found: Option<GetModel> = self
                    .get("registered-models/get", &[("name", name.as_str())])
                    .await?;
                models.push(found.map_or_else(
                    || Model {
                        name: name.clone(),
                        aliases: Vec::new(),
                    },
                    |f| f.registered_model,
                ));
            }
        }
        let mut out = Vec::new();
        for model in models {
            let versions = self.versions(&model.name).await?;
            out.push(RegisteredModel {
                aliases: model
                    .aliases
                    .iter()
                    .filter_map(|a| Some((a.alias.clone(), a.version.parse().ok()?)))
                    .collect(),
                name: model.name,
                versions,
            });
        }
        Ok(out)
    }

    async fn versions(&self, model: &str) -> Result<Vec<i64>, RegistryError> {
        // MLflow's filter grammar quotes with `'`; a name holding one is matched with `"`.
        let filter = if model.contains('\'') {
            format!("name=\"{model}\"")
        } else {
            format!("name='{model}'")
        };
        let mut versions = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut query = vec![("filter", filter.as_str()), ("max_results", "1000")];
            if let Some(token) = &page {
                query.push(("page_token", token));
            }
            let Some(found): Option<SearchVersions> =
                self.get("model-versions/search", &query).await?
            else {
                break;
            };
            versions.extend(
                found
                    .model_versions
                    .iter()
                    .filter(|v| v.status.as_deref().is_none_or(|s| s == "READY"))
                    .filter_map(|v| v.version.parse::<i64>().ok()),
            );
            match found.next_page_token.filter(|t| !t.is_empty()) {
                Some(token) => page = Some(token),
                None => break,
            }
        }
        versions.sort_unstable();
        versions.dedup();
        Ok(versions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_a_header_cannot_carry_are_refused_naming_the_folder_not_the_value() {
        let dir =
            std::env::temp_dir().join(format!("sluice-registry-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("folder");
        std::fs::write(dir.join("MLFLOW_TRACKING_TOKEN"), "tok\u{7f}en-secret\n").expect("token");
        let mirror = RegistryMirror {
            name: "prod".into(),
            tracking_uri: "http://127.0.0.1:9".into(),
            credentials_dir: Some(dir.display().to_string()),
            ..RegistryMirror::default()
        };
        let error = Registry::new(&mirror).err().expect("refused");
        let text = error.to_string();
        assert!(
            text.starts_with("registry prod: the credentials in")
                && text.contains(&dir.display().to_string()),
            "{text}"
        );
        assert!(
            !text.contains("secret"),
            "the value is never printed: {text}"
        );
        std::fs::write(dir.join("MLFLOW_TRACKING_TOKEN"), "token\n").expect("token");
        assert!(Registry::new(&mirror).is_ok());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
