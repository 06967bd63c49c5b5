//! Container environments as the kubelet builds them: `env` in order with `$(VAR)` expansion,
//! `valueFrom` (fieldRef, secretKeyRef, configMapKeyRef, resourceFieldRef), `envFrom`, and the
//! in-cluster API address on loopback. Service link variables are never injected.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::{Client, ResourceExt};

use super::{
    KubeletError,
    objects::{config_map_data, secret_data},
};

/// What a pod knows about itself for the downward API.
pub struct PodFacts<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// Its address.
    pub ip: &'a str,
}

impl PodFacts<'_> {
    /// The value of a downward-API field path.
    pub fn field(&self, path: &str) -> Option<String> {
        let p = self.pod;
        let from_map = |map: &BTreeMap<String, String>, rest: &str| {
            let key = rest.trim_start_matches("['").trim_end_matches("']");
            map.get(key).cloned()
        };
        match path {
            "metadata.name" => Some(p.name_any()),
            "metadata.namespace" => p.namespace(),
            "metadata.uid" => p.uid(),
            "spec.nodeName" => p.spec.as_ref().and_then(|s| s.node_name.clone()),
            "spec.serviceAccountName" => {
                p.spec.as_ref().and_then(|s| s.service_account_name.clone())
            }
            "status.podIP" | "status.podIPs" => Some(self.ip.to_string()),
            "status.hostIP" | "status.hostIPs" => Some("127.0.0.1".into()),
            other => {
                if let Some(rest) = other.strip_prefix("metadata.labels") {
                    from_map(p.labels(), rest)
                } else if let Some(rest) = other.strip_prefix("metadata.annotations") {
                    from_map(p.annotations(), rest)
                } else {
                    None
                }
            }
        }
    }
}

/// Expands `$(NAME)` references to earlier variables; `$$(NAME)` stays literal, as in Kubernetes.
pub fn expand(value: &str, vars: &BTreeMap<String, String>) -> String {
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

/// One key of a ConfigMap's or Secret's data, as text.
fn key_of(data: Option<BTreeMap<String, Vec<u8>>>, key: &str) -> Option<String> {
    data?
        .get(key)
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

/// The full environment of `container`.
pub async fn build(
    client: &Client,
    facts: &PodFacts<'_>,
    container: &Container,
    apiserver_port: u16,
) -> Result<BTreeMap<String, String>, KubeletError> {
    let ns = facts.pod.namespace().unwrap_or_default();
    let mut vars = BTreeMap::from([
        (
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        ("HOME".to_string(), "/tmp".to_string()),
        ("HOSTNAME".to_string(), facts.pod.name_any()),
        (
            "KUBERNETES_SERVICE_HOST".to_string(),
            "127.0.0.1".to_string(),
        ),
        (
            "KUBERNETES_SERVICE_PORT".to_string(),
            apiserver_port.to_string(),
        ),
    ]);
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => config_map_data(client, &ns, &r.name).await?,
            (None, Some(r)) => secret_data(client, &ns, &r.name).await?,
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
                if let Some(f) = &from.field_ref {
                    facts.field(&f.field_path)
                } else if let Some(s) = &from.secret_key_ref {
                    key_of(secret_data(client, &ns, &s.name).await?, &s.key)
                } else if let Some(c) = &from.config_map_key_ref {
                    key_of(config_map_data(client, &ns, &c.name).await?, &c.key)
                } else if from.resource_field_ref.is_some() {
                    Some("0".into())
                } else {
                    None
                }
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
    use super::*;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars = BTreeMap::from([("POD_IP".to_string(), "127.10.0.2".to_string())]);
        assert_eq!(expand("$(POD_IP):8080", &vars), "127.10.0.2:8080");
        assert_eq!(
            expand("$$(POD_IP) $(MISSING) $x", &vars),
            "$(POD_IP) $(MISSING) $x"
        );
    }
}
