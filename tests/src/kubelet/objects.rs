//! Reading the ConfigMaps and Secrets that env and volumes refer to, as key → bytes, with the
//! kubelet's rules: a missing object or key holds the container back unless the reference is
//! `optional`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

use super::{KubeletError, kube_err};

/// Key → bytes.
pub type Data = BTreeMap<String, Vec<u8>>;

/// Which kind of object a reference names.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// A ConfigMap (`data` and `binaryData`).
    ConfigMap,
    /// A Secret.
    Secret,
}

impl Source {
    fn noun(self) -> &'static str {
        match self {
            Source::ConfigMap => "configmap",
            Source::Secret => "secret",
        }
    }
}

/// The data of a ConfigMap (`data` and `binaryData`), or `None` when it does not exist.
pub async fn config_map_data(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<Data>, KubeletError> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(kube_err(format!("reading ConfigMap {ns}/{name}")))?;
    Ok(cm.map(|c| {
        let mut data: Data = c
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        data.extend(
            c.binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        data
    }))
}

/// The data of a Secret, or `None` when it does not exist.
pub async fn secret_data(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<Data>, KubeletError> {
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(kube_err(format!("reading Secret {ns}/{name}")))?;
    Ok(s.map(|s| {
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    }))
}

/// The data of a referenced object: `None` when it is missing and `optional`, an error naming
/// it when it is missing and required.
pub async fn referenced(
    client: &Client,
    ns: &str,
    source: Source,
    name: &str,
    optional: Option<bool>,
) -> Result<Option<Data>, KubeletError> {
    let data = match source {
        Source::ConfigMap => config_map_data(client, ns, name).await?,
        Source::Secret => secret_data(client, ns, name).await?,
    };
    match data {
        Some(d) => Ok(Some(d)),
        None if optional.unwrap_or(false) => Ok(None),
        None => Err(KubeletError::Missing(format!(
            "{} \"{name}\" not found",
            source.noun()
        ))),
    }
}

/// One key of a referenced object: `None` when the object or key is missing and `optional`.
pub async fn referenced_key(
    client: &Client,
    ns: &str,
    source: Source,
    name: &str,
    key: &str,
    optional: Option<bool>,
) -> Result<Option<Vec<u8>>, KubeletError> {
    let Some(data) = referenced(client, ns, source, name, optional).await? else {
        return Ok(None);
    };
    match data.get(key) {
        Some(v) => Ok(Some(v.clone())),
        None if optional.unwrap_or(false) => Ok(None),
        None => Err(KubeletError::Missing(format!(
            "couldn't find key {key} in {} {ns}/{name}",
            source.noun()
        ))),
    }
}
