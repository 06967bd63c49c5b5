//! Container environments as the kubelet builds them: the API server's service variables
//! (pointing at loopback), then `envFrom`, then `env` in order with `$(VAR)` expansion and
//! `valueFrom` (fieldRef, secretKeyRef, configMapKeyRef, resourceFieldRef). Service link
//! variables of other Services are never injected: they would be ClusterIPs, which nothing on
//! this machine answers.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::{Client, ResourceExt};

use super::{
    KubeletError, NodeConfig,
    objects::{Source, referenced, referenced_key},
    resources,
};

/// A container's environment.
pub type Env = BTreeMap<String, String>;

/// What a pod knows about itself for the downward API.
pub struct PodFacts<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// Its address.
    pub ip: &'a str,
    /// The node it runs on.
    pub node: Option<&'a NodeConfig>,
}

/// `key="value"` lines, as the downward API writes whole label and annotation maps.
fn map_lines(map: &BTreeMap<String, String>) -> String {
    map.iter().map(|(k, v)| format!("{k}={v:?}\n")).collect()
}

impl PodFacts<'_> {
    /// The value of a downward-API field path.
    pub fn field(&self, path: &str) -> Option<String> {
        let p = self.pod;
        let entry = |map: &BTreeMap<String, String>, rest: &str| {
            let key = rest.strip_prefix("['")?.strip_suffix("']")?;
            Some(map.get(key).cloned().unwrap_or_default())
        };
        match path {
            "metadata.name" => Some(p.name_any()),
            "metadata.namespace" => p.namespace(),
            "metadata.uid" => p.uid(),
            "metadata.labels" => Some(map_lines(p.labels())),
            "metadata.annotations" => Some(map_lines(p.annotations())),
            "spec.nodeName" => p.spec.as_ref().and_then(|s| s.node_name.clone()),
            "spec.serviceAccountName" => Some(
                p.spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".into()),
            ),
            "status.podIP" | "status.podIPs" => Some(self.ip.to_string()),
            "status.hostIP" | "status.hostIPs" => Some("127.0.0.1".into()),
            other => {
                if let Some(rest) = other.strip_prefix("metadata.labels") {
                    entry(p.labels(), rest)
                } else if let Some(rest) = other.strip_prefix("metadata.annotations") {
                    entry(p.annotations(), rest)
                } else {
                    None
                }
            }
        }
    }

    /// The container of this pod named `name` (main or init).
    pub fn container(&self, name: &str) -> Option<&Container> {
        let spec = self.pod.spec.as_ref()?;
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == name)
    }
}

/// Expands `$(NAME)` references to defined variables; `$$` is a literal `$`, and a reference
/// to an undefined variable stays as written, as in Kubernetes.
pub fn expand(value: &str, vars: &Env) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(end) = tail.strip_prefix("$(").and_then(|t| t.find(')')) {
            let name = &tail[2..2 + end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&tail[..3 + end]),
            }
            rest = &tail[3 + end..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The variables every container gets before its own (the image's `PATH` and the like come
/// from the image): `HOSTNAME`, and the
/// `kubernetes` Service's variables pointing at the loopback API server (kubelet injects those
/// even with `enableServiceLinks: false`).
fn base(pod: &Pod, host: &str, port: u16) -> Env {
    let port = port.to_string();
    let url = format!("tcp://{host}:{port}");
    Env::from([
        ("HOSTNAME".into(), pod.name_any()),
        ("KUBERNETES_SERVICE_HOST".into(), host.into()),
        ("KUBERNETES_SERVICE_PORT".into(), port.clone()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.clone()),
        ("KUBERNETES_PORT".into(), url.clone()),
        (format!("KUBERNETES_PORT_{port}_TCP"), url),
        (format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
        (format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.clone()),
        (format!("KUBERNETES_PORT_{port}_TCP_ADDR"), host.into()),
    ])
}

/// The full environment of `container`. A required ConfigMap, Secret or key that does not
/// exist yet is a [`KubeletError::Missing`]: the container waits
/// (`CreateContainerConfigError`) and is retried, as on a real node.
pub async fn build(
    client: &Client,
    facts: &PodFacts<'_>,
    container: &Container,
    apiserver: (&str, u16),
) -> Result<Env, KubeletError> {
    let ns = facts.pod.namespace().unwrap_or_default();
    let mut vars = base(facts.pod, apiserver.0, apiserver.1);
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => referenced(client, &ns, Source::ConfigMap, &r.name, r.optional).await?,
            (None, Some(r)) => referenced(client, &ns, Source::Secret, &r.name, r.optional).await?,
            (None, None) => None,
        };
        for (k, v) in data.unwrap_or_default() {
            vars.insert(
                format!("{prefix}{k}"),
                String::from_utf8_lossy(&v).into_owned(),
            );
        }
    }
    for e in container.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => Some(expand(v, &vars)),
            (None, Some(from)) => {
                let bytes = if let Some(s) = &from.secret_key_ref {
                    referenced_key(client, &ns, Source::Secret, &s.name, &s.key, s.optional).await?
                } else if let Some(c) = &from.config_map_key_ref {
                    referenced_key(client, &ns, Source::ConfigMap, &c.name, &c.key, c.optional)
                        .await?
                } else {
                    None
                };
                let text = bytes.map(|b| String::from_utf8_lossy(&b).into_owned());
                text.or_else(|| {
                    let f = from.field_ref.as_ref()?;
                    facts.field(&f.field_path)
                })
                .or_else(|| {
                    let r = from.resource_field_ref.as_ref()?;
                    let target = match r.container_name.as_deref() {
                        Some(name) if !name.is_empty() => facts.container(name)?,
                        _ => container,
                    };
                    resources::field_value(target, facts.node, &r.resource, r.divisor.as_ref())
                })
            }
            (None, None) => Some(String::new()),
        };
        if let Some(v) = value {
            vars.insert(e.name.clone(), v);
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;

    use super::*;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars = Env::from([("POD_IP".to_string(), "127.10.0.2".to_string())]);
        assert_eq!(expand("$(POD_IP):8080", &vars), "127.10.0.2:8080");
        assert_eq!(
            expand("$$(POD_IP) $(MISSING) $x $(", &vars),
            "$(POD_IP) $(MISSING) $x $("
        );
    }

    #[test]
    fn downward_fields_resolve() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..Default::default()
            },
            ..Default::default()
        };
        let facts = PodFacts {
            pod: &pod,
            ip: "127.10.0.9",
            node: None,
        };
        assert_eq!(
            facts.field("metadata.labels['app']").as_deref(),
            Some("web")
        );
        assert_eq!(facts.field("metadata.labels['none']").as_deref(), Some(""));
        assert_eq!(
            facts.field("metadata.labels").as_deref(),
            Some("app=\"web\"\n")
        );
        assert_eq!(facts.field("status.podIP").as_deref(), Some("127.10.0.9"));
        assert_eq!(facts.field("status.hostIP").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            facts.field("spec.serviceAccountName").as_deref(),
            Some("default")
        );
        assert_eq!(facts.field("metadata.namespace").as_deref(), Some("ns"));
    }

    #[test]
    fn no_service_links_only_the_loopback_api_server() {
        let vars = base(&Pod::default(), "127.0.0.1", 6443);
        assert_eq!(vars["KUBERNETES_SERVICE_HOST"], "127.0.0.1");
        assert_eq!(vars["KUBERNETES_SERVICE_PORT"], "6443");
        assert!(
            vars.keys()
                .filter(|k| k.ends_with("_SERVICE_HOST"))
                .all(|k| k == "KUBERNETES_SERVICE_HOST")
        );
    }
}
