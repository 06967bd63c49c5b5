//! Pod volumes materialised as host folders: emptyDir, configMap, secret, downwardAPI and
//! projected (service-account token from the TokenRequest API, the cluster CA, the namespace).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, Pod, ServiceAccount, Volume},
};
use kube::{Api, Client, ResourceExt, api::PostParams};

use super::{
    KubeletError,
    env::PodFacts,
    io_err, kube_err,
    objects::{config_map_data, secret_data},
    process::Mount,
};

fn write(dir: &Path, rel: &str, bytes: &[u8]) -> Result<(), KubeletError> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(io_err(format!("creating {}", parent.display())))?;
    }
    std::fs::write(&path, bytes).map_err(io_err(format!("writing {}", path.display())))
}

/// Writes `data` keys (or only `items`, renamed) into `dir`.
fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
) -> Result<(), KubeletError> {
    match items {
        Some(items) => {
            for item in items {
                if let Some(bytes) = data.get(&item.key) {
                    write(dir, &item.path, bytes)?;
                }
            }
        }
        None => {
            for (k, v) in data {
                write(dir, k, v)?;
            }
        }
    }
    Ok(())
}

fn write_downward(
    dir: &Path,
    facts: &PodFacts<'_>,
    items: &[DownwardAPIVolumeFile],
) -> Result<(), KubeletError> {
    for item in items {
        if let Some(f) = &item.field_ref {
            write(
                dir,
                &item.path,
                facts.field(&f.field_path).unwrap_or_default().as_bytes(),
            )?;
        }
    }
    Ok(())
}

async fn token(
    client: &Client,
    pod: &Pod,
    audience: Option<String>,
    seconds: Option<i64>,
) -> Result<String, KubeletError> {
    let ns = pod.namespace().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.map(|a| vec![a]),
            expiration_seconds: Some(seconds.unwrap_or(3600).max(600)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create_token_request(&sa, &PostParams::default(), &request)
        .await
        .map_err(kube_err(format!(
            "requesting a token for ServiceAccount {sa}"
        )))?;
    Ok(issued.status.and_then(|s| s.token).unwrap_or_default())
}

/// Materialises one volume into `dir`.
async fn materialise(
    client: &Client,
    facts: &PodFacts<'_>,
    volume: &Volume,
    dir: &Path,
) -> Result<(), KubeletError> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let ns = facts.pod.namespace().unwrap_or_default();
    if let Some(cm) = &volume.config_map {
        let data = config_map_data(client, &ns, &cm.name)
            .await?
            .unwrap_or_default();
        write_keys(dir, &data, cm.items.as_ref())?;
    } else if let Some(s) = &volume.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let data = secret_data(client, &ns, &name).await?.unwrap_or_default();
        write_keys(dir, &data, s.items.as_ref())?;
    } else if let Some(d) = &volume.downward_api {
        write_downward(dir, facts, d.items.as_deref().unwrap_or_default())?;
    } else if let Some(p) = &volume.projected {
        for source in p.sources.iter().flatten() {
            if let Some(t) = &source.service_account_token {
                let jwt =
                    token(client, facts.pod, t.audience.clone(), t.expiration_seconds).await?;
                write(dir, &t.path, jwt.as_bytes())?;
            }
            if let Some(cm) = &source.config_map {
                let data = config_map_data(client, &ns, &cm.name)
                    .await?
                    .unwrap_or_default();
                write_keys(dir, &data, cm.items.as_ref())?;
            }
            if let Some(s) = &source.secret {
                let data = secret_data(client, &ns, &s.name).await?.unwrap_or_default();
                write_keys(dir, &data, s.items.as_ref())?;
            }
            if let Some(d) = &source.downward_api {
                write_downward(dir, facts, d.items.as_deref().unwrap_or_default())?;
            }
        }
    }
    // emptyDir (and anything else) is just the folder.
    Ok(())
}

/// Materialises every volume of the pod under `root/volumes`, returning name → folder.
pub async fn prepare(
    client: &Client,
    facts: &PodFacts<'_>,
    root: &Path,
) -> Result<BTreeMap<String, PathBuf>, KubeletError> {
    let mut dirs = BTreeMap::new();
    for volume in facts
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default()
    {
        let dir = root.join("volumes").join(&volume.name);
        materialise(client, facts, &volume, &dir).await?;
        dirs.insert(volume.name.clone(), dir);
    }
    Ok(dirs)
}

/// The bind mounts of one container.
pub fn mounts(container: &Container, dirs: &BTreeMap<String, PathBuf>) -> Vec<Mount> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|m| {
            let base = dirs.get(&m.name)?;
            let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => base.join(sub),
                None => base.clone(),
            };
            Some(Mount {
                host,
                path: m.mount_path.clone(),
                read_only: m.read_only.unwrap_or(false),
            })
        })
        .collect()
}
