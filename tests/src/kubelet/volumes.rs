//! Pod volumes materialised as host folders under the pod's state folder: emptyDir,
//! configMap, secret, downwardAPI, hostPath, persistentVolumeClaim (the folder of the bound
//! volume, see `provisioner`) and projected (service-account token from the TokenRequest API,
//! ConfigMaps such as `kube-root-ca.crt`, Secrets, downward API), and the
//! bind mounts that show them to a container at the spec's `mountPath`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{
        Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim,
        ServiceAccount, Volume,
    },
};
use kube::{Api, Client, ResourceExt, api::PostParams};

use super::{
    KubeletError,
    env::{Env, PodFacts, expand},
    io_err, kube_err,
    objects::{Data, Source, referenced},
    process::Mount,
    resources,
};

/// A volume's host folder.
#[derive(Clone, Debug)]
pub struct VolumeDir {
    /// Folder on the host.
    pub path: PathBuf,
    /// Mounted read-only whatever the mount says (configMap, secret, downwardAPI, projected).
    pub always_read_only: bool,
    /// The kubelet made the folder, so subPaths may be created in it.
    pub owned: bool,
}

fn write(dir: &Path, rel: &str, bytes: &[u8]) -> Result<(), KubeletError> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(io_err(format!("creating {}", parent.display())))?;
    }
    std::fs::write(&path, bytes).map_err(io_err(format!("writing {}", path.display())))
}

/// Writes the `data` keys (or only `items`, under their paths) into `dir`. An item whose key
/// is missing is an error unless the reference is optional.
fn write_keys(
    dir: &Path,
    data: &Data,
    items: Option<&Vec<KeyToPath>>,
    optional: Option<bool>,
) -> Result<(), KubeletError> {
    match items {
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(bytes) => write(dir, &item.path, bytes)?,
                    None if optional.unwrap_or(false) => {}
                    None => {
                        return Err(KubeletError::Missing(format!(
                            "configmap or secret references non-existent key {}",
                            item.key
                        )));
                    }
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

/// Writes a referenced ConfigMap's or Secret's keys; a missing optional object writes nothing.
async fn write_referenced(
    client: &Client,
    ns: &str,
    (source, name): (Source, &str),
    items: Option<&Vec<KeyToPath>>,
    optional: Option<bool>,
    dir: &Path,
) -> Result<(), KubeletError> {
    if let Some(data) = referenced(client, ns, source, name, optional).await? {
        write_keys(dir, &data, items, optional)?;
    }
    Ok(())
}

fn write_downward(
    dir: &Path,
    facts: &PodFacts<'_>,
    items: &[DownwardAPIVolumeFile],
) -> Result<(), KubeletError> {
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            facts.field(&f.field_path)
        } else if let Some(r) = &item.resource_field_ref {
            let name = r.container_name.as_deref().unwrap_or_default();
            facts.container(name).and_then(|c| {
                resources::field_value(c, facts.node, &r.resource, r.divisor.as_ref())
            })
        } else {
            None
        };
        write(dir, &item.path, value.unwrap_or_default().as_bytes())?;
    }
    Ok(())
}

/// A token for the pod's ServiceAccount, bound to the pod, from the TokenRequest API.
async fn token(
    client: &Client,
    facts: &PodFacts<'_>,
    audience: Option<String>,
    seconds: Option<i64>,
) -> Result<String, KubeletError> {
    let pod = facts.pod;
    let ns = pod.namespace().unwrap_or_default();
    let sa = facts
        .field("spec.serviceAccountName")
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.filter(|a| !a.is_empty()).map(|a| vec![a]),
            expiration_seconds: Some(seconds.unwrap_or(3607).max(600)),
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
            "requesting a token for ServiceAccount {ns}/{sa}"
        )))?;
    Ok(issued.status.and_then(|s| s.token).unwrap_or_default())
}

/// Materialises one volume; returns its host folder.
async fn materialise(
    client: &Client,
    facts: &PodFacts<'_>,
    volume: &Volume,
    dir: &Path,
) -> Result<VolumeDir, KubeletError> {
    let ns = facts.pod.namespace().unwrap_or_default();
    if let Some(h) = &volume.host_path {
        let path = PathBuf::from(&h.path);
        if h.type_.as_deref() == Some("DirectoryOrCreate") {
            std::fs::create_dir_all(&path)
                .map_err(io_err(format!("creating hostPath {}", path.display())))?;
        } else if !path.exists() {
            return Err(KubeletError::Missing(format!(
                "hostPath {} does not exist",
                path.display()
            )));
        }
        return Ok(VolumeDir {
            path,
            always_read_only: false,
            owned: false,
        });
    }
    if let Some(claim) = &volume.persistent_volume_claim {
        return Ok(VolumeDir {
            path: claimed_folder(client, &ns, &claim.claim_name).await?,
            always_read_only: claim.read_only.unwrap_or(false),
            owned: false,
        });
    }
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let mut always_read_only = true;
    if let Some(cm) = &volume.config_map {
        let source = (Source::ConfigMap, cm.name.as_str());
        write_referenced(client, &ns, source, cm.items.as_ref(), cm.optional, dir).await?;
    } else if let Some(s) = &volume.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let source = (Source::Secret, name.as_str());
        write_referenced(client, &ns, source, s.items.as_ref(), s.optional, dir).await?;
    } else if let Some(d) = &volume.downward_api {
        write_downward(dir, facts, d.items.as_deref().unwrap_or_default())?;
    } else if let Some(p) = &volume.projected {
        for source in p.sources.iter().flatten() {
            if let Some(t) = &source.service_account_token {
                let jwt = token(client, facts, t.audience.clone(), t.expiration_seconds).await?;
                write(dir, &t.path, jwt.as_bytes())?;
            }
            if let Some(cm) = &source.config_map {
                let source = (Source::ConfigMap, cm.name.as_str());
                write_referenced(client, &ns, source, cm.items.as_ref(), cm.optional, dir).await?;
            }
            if let Some(s) = &source.secret {
                let source = (Source::Secret, s.name.as_str());
                write_referenced(client, &ns, source, s.items.as_ref(), s.optional, dir).await?;
            }
            if let Some(d) = &source.downward_api {
                write_downward(dir, facts, d.items.as_deref().unwrap_or_default())?;
            }
        }
    } else {
        // emptyDir, and any other kind: a writable folder of the pod's own.
        always_read_only = false;
    }
    Ok(VolumeDir {
        path: dir.to_path_buf(),
        always_read_only,
        owned: true,
    })
}

/// The host folder of the volume bound to claim `name`: a claim that is missing or not yet
/// Bound (or whose volume is bound to another claim) holds the pod back (`ContainerCreating`),
/// as on a real node; the volume must be a hostPath volume (the local provisioner's kind).
async fn claimed_folder(client: &Client, ns: &str, name: &str) -> Result<PathBuf, KubeletError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let claim = claims
        .get_opt(name)
        .await
        .map_err(kube_err(format!(
            "reading PersistentVolumeClaim {ns}/{name}"
        )))?
        .ok_or_else(|| {
            KubeletError::Missing(format!("persistentvolumeclaim \"{name}\" not found"))
        })?;
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let volume = claim.spec.as_ref().and_then(|s| s.volume_name.clone());
    let (true, Some(volume)) = (bound, volume) else {
        return Err(KubeletError::Missing(format!(
            "persistentvolumeclaim \"{name}\" is not bound"
        )));
    };
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&volume)
        .await
        .map_err(kube_err(format!("reading PersistentVolume {volume}")))?;
    let spec = pv.spec.unwrap_or_default();
    let bound_to = spec.claim_ref.as_ref().and_then(|r| r.uid.as_deref());
    if bound_to != claim.metadata.uid.as_deref() {
        return Err(KubeletError::Missing(format!(
            "PersistentVolume {volume} is not bound to persistentvolumeclaim \"{name}\""
        )));
    }
    let path = spec
        .host_path
        .map(|h| PathBuf::from(h.path))
        .ok_or_else(|| {
            KubeletError::Config(format!(
                "PersistentVolume {volume} (claim {ns}/{name}) is not a hostPath volume; the \
                 test kubelet mounts only those"
            ))
        })?;
    if !path.is_dir() {
        return Err(KubeletError::Missing(format!(
            "the folder {} of PersistentVolume {volume} does not exist",
            path.display()
        )));
    }
    Ok(path)
}

/// Materialises every volume of the pod under `root` (`root/<volume name>`), returning name →
/// folder. A required ConfigMap or Secret that does not exist yet is a
/// [`KubeletError::Missing`]: the pod waits in `ContainerCreating` and is retried.
pub async fn prepare(
    client: &Client,
    facts: &PodFacts<'_>,
    root: &Path,
) -> Result<BTreeMap<String, VolumeDir>, KubeletError> {
    let mut dirs = BTreeMap::new();
    let volumes = facts.pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    for volume in volumes.into_iter().flatten() {
        let dir = materialise(client, facts, volume, &root.join(&volume.name)).await?;
        dirs.insert(volume.name.clone(), dir);
    }
    Ok(dirs)
}

/// The bind mounts of one container, `subPath` and `subPathExpr` (expanded with its
/// environment) included. A subPath missing from a folder the kubelet owns is created.
pub fn mounts(
    container: &Container,
    dirs: &BTreeMap<String, VolumeDir>,
    env: &Env,
) -> Result<Vec<Mount>, KubeletError> {
    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let Some(volume) = dirs.get(&m.name) else {
            return Err(KubeletError::Missing(format!(
                "volume {} of mount {} is not declared",
                m.name, m.mount_path
            )));
        };
        let sub = match (m.sub_path.as_deref(), m.sub_path_expr.as_deref()) {
            (Some(s), _) if !s.is_empty() => Some(s.to_string()),
            (_, Some(e)) if !e.is_empty() => Some(expand(e, env)),
            _ => None,
        };
        let host = match sub {
            Some(sub) => {
                let host = volume.path.join(sub.trim_start_matches('/'));
                if volume.owned && !volume.always_read_only && !host.exists() {
                    std::fs::create_dir_all(&host)
                        .map_err(io_err(format!("creating subPath {}", host.display())))?;
                }
                host
            }
            None => volume.path.clone(),
        };
        mounts.push(Mount {
            host,
            path: m.mount_path.clone(),
            read_only: volume.always_read_only || m.read_only.unwrap_or(false),
        });
    }
    Ok(mounts)
}
