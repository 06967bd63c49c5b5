//! `inference-server check`: what the chart's `helm test` pod runs to tell an installer that a
//! release works. It finds the release's operator and gateway pods through the API (by label,
//! as the gateway finds entity pods: pod addresses, no Service IP), asks each Ready pod's
//! `/readyz`, and, when a ServingEndpoint is named, sends it one query through a gateway pod.
//!
//! Every check prints one line (`ok …` or `FAIL …`), so `kubectl logs` of the test pod says what
//! was checked; any failure makes the command fail, naming it.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{ListParams, ResourceExt},
};
use sluice_protocol::units::parse_duration;

/// The flags of `inference-server check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Namespace of the release's pods; default: this pod's own (from its ServiceAccount).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Label selector of the operator pods; each Ready one must answer `/readyz`.
    #[arg(long)]
    pub operator_selector: String,
    /// Port of the operator's probe server.
    #[arg(long, default_value_t = 8090)]
    pub operator_port: u16,
    /// Label selector of the gateway pods; without it the gateway is not checked (a release
    /// with `gateway.enabled=false`).
    #[arg(long)]
    pub gateway_selector: Option<String>,
    /// Port of the gateway's admin server (`/readyz`).
    #[arg(long, default_value_t = 9090)]
    pub gateway_admin_port: u16,
    /// Port the gateway serves callers on.
    #[arg(long, default_value_t = 8000)]
    pub gateway_port: u16,
    /// A ServingEndpoint to query once through the gateway
    /// (`POST /serving-endpoints/<name>/invocations`).
    #[arg(long, requires = "gateway_selector")]
    pub query_endpoint: Option<String>,
    /// The JSON body of that query.
    #[arg(long, default_value = r#"{"inputs": [[5.1, 3.5, 1.4, 0.2]]}"#)]
    pub query_body: String,
    /// Bearer token sent with the query (`Authorization: Bearer …`): an API key, or any token
    /// the gateway accepts. Default: the pod's own ServiceAccount token (`--query-token-file`).
    #[arg(long, env = "SLUICE_CHECK_TOKEN", hide_env_values = true)]
    pub query_token: Option<String>,
    /// File holding the token to send when `--query-token` is not given (read when it exists).
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub query_token_file: std::path::PathBuf,
    /// How long each HTTP call may take.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Why the release check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No Kubernetes client could be made.
    #[error("cannot reach the Kubernetes API (run in a pod or set KUBECONFIG): {0}")]
    Client(#[source] Box<kube::Error>),
    /// The pods of a component could not be listed.
    #[error("listing the {component} pods ({selector}) in {namespace}: {source}")]
    List {
        /// operator or gateway.
        component: &'static str,
        /// The label selector.
        selector: String,
        /// The namespace.
        namespace: String,
        /// The cause.
        source: Box<kube::Error>,
    },
    /// No namespace was given and none could be read from the ServiceAccount.
    #[error("no --namespace given and this is not a pod with a ServiceAccount namespace")]
    Namespace,
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
    /// Some checks failed (each printed above).
    #[error("{failed} of {total} checks failed: {names}")]
    Failed {
        /// How many failed.
        failed: usize,
        /// How many ran.
        total: usize,
        /// What failed, in order.
        names: String,
    },
}

/// One check's result: what was checked, and the failure if any.
#[derive(Debug)]
struct Outcome {
    what: String,
    problem: Option<String>,
}

/// A Ready pod of a component and its address.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    pod: String,
    ip: String,
}

/// Runs every check once and prints its outcome; fails when any check failed.
pub async fn run(args: CheckArgs) -> Result<(), CheckError> {
    let client = Client::try_default()
        .await
        .map_err(|e| CheckError::Client(Box::new(e)))?;
    let namespace = match args.namespace.clone() {
        Some(ns) => ns,
        None => std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            .map(|ns| ns.trim().to_string())
            .map_err(|_| CheckError::Namespace)?,
    };
    let http = reqwest::Client::builder()
        .timeout(args.timeout)
        .no_proxy()
        .build()
        .map_err(CheckError::Http)?;
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let mut outcomes = Vec::new();

    let operators = targets(&pods, "operator", &args.operator_selector, &namespace).await?;
    outcomes.extend(readiness(&http, "operator", &operators, args.operator_port).await);
    if let Some(selector) = &args.gateway_selector {
        let gateways = targets(&pods, "gateway", selector, &namespace).await?;
        outcomes.extend(readiness(&http, "gateway", &gateways, args.gateway_admin_port).await);
        if let Some(endpoint) = &args.query_endpoint {
            outcomes.push(query(&http, &gateways, &args, endpoint).await);
        }
    }
    summarise(&outcomes)
}

/// The Ready pods of one component, in name order; none is a failure of its own.
async fn targets(
    pods: &Api<Pod>,
    component: &'static str,
    selector: &str,
    namespace: &str,
) -> Result<Vec<Target>, CheckError> {
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|source| CheckError::List {
            component,
            selector: selector.to_string(),
            namespace: namespace.to_string(),
            source: Box::new(source),
        })?;
    let mut ready: Vec<Target> = list.items.iter().filter_map(ready_target).collect();
    ready.sort_by(|a, b| a.pod.cmp(&b.pod));
    if ready.is_empty() {
        println!(
            "FAIL {component}: no Ready pod matches {selector} in {namespace} ({} pods)",
            list.items.len()
        );
    }
    Ok(ready)
}

/// The pod's name and address when it is Ready.
fn ready_target(pod: &Pod) -> Option<Target> {
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let ip = status.pod_ip.clone()?;
    ready.then(|| Target {
        pod: pod.name_any(),
        ip,
    })
}

/// `http://<ip>:<port><path>`, with an IPv6 address in brackets.
fn url(ip: &str, port: u16, path: &str) -> String {
    if ip.contains(':') {
        format!("http://[{ip}]:{port}{path}")
    } else {
        format!("http://{ip}:{port}{path}")
    }
}

/// `/readyz` of each pod (a component without Ready pods is one failed check).
async fn readiness(
    http: &reqwest::Client,
    component: &str,
    targets: &[Target],
    port: u16,
) -> Vec<Outcome> {
    if targets.is_empty() {
        return vec![Outcome {
            what: format!("{component} has a Ready pod"),
            problem: Some("none".into()),
        }];
    }
    let mut outcomes = Vec::new();
    for target in targets {
        let address = url(&target.ip, port, "/readyz");
        let what = format!("{component} {} {address}", target.pod);
        let problem = match http.get(&address).send().await {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("answered {}", response.status())),
            Err(error) => Some(error.to_string()),
        };
        outcomes.push(report(what, problem));
    }
    outcomes
}

/// One query of `endpoint` through the first Ready gateway pod.
async fn query(
    http: &reqwest::Client,
    gateways: &[Target],
    args: &CheckArgs,
    endpoint: &str,
) -> Outcome {
    let Some(gateway) = gateways.first() else {
        return report(
            format!("query {endpoint}"),
            Some("no Ready gateway pod".into()),
        );
    };
    let path = format!("/serving-endpoints/{endpoint}/invocations");
    let address = url(&gateway.ip, args.gateway_port, &path);
    let what = format!("query {endpoint} via {} {address}", gateway.pod);
    let mut request = http
        .post(&address)
        .header("content-type", "application/json")
        .body(args.query_body.clone());
    let token = args.query_token.clone().or_else(|| {
        std::fs::read_to_string(&args.query_token_file)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    });
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let problem = match request.send().await {
        Ok(response) => {
            let status = response.status();
            let served_by = response
                .headers()
                .get("served-model-name")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string();
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(300).collect();
            if status.is_success() {
                println!("     {endpoint} answered (served-model-name {served_by}): {body}");
                None
            } else {
                Some(format!("answered {status}: {body}"))
            }
        }
        Err(error) => Some(error.to_string()),
    };
    report(what, problem)
}

/// Prints one outcome as it happens.
fn report(what: String, problem: Option<String>) -> Outcome {
    match &problem {
        None => println!("ok   {what}"),
        Some(p) => println!("FAIL {what}: {p}"),
    }
    Outcome { what, problem }
}

/// Success when every check passed; else the failures, named.
fn summarise(outcomes: &[Outcome]) -> Result<(), CheckError> {
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.problem.is_some()).collect();
    if failed.is_empty() {
        println!("all {} checks passed", outcomes.len());
        return Ok(());
    }
    Err(CheckError::Failed {
        failed: failed.len(),
        total: outcomes.len(),
        names: failed
            .iter()
            .map(|o| o.what.as_str())
            .collect::<Vec<_>>()
            .join("; "),
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    use super::*;

    fn pod(name: &str, ready: &str, ip: Option<&str>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.status = Some(PodStatus {
            pod_ip: ip.map(Into::into),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: ready.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        pod
    }

    #[test]
    fn only_ready_pods_with_an_address_are_checked() {
        assert_eq!(
            ready_target(&pod("a", "True", Some("10.1.2.3"))),
            Some(Target {
                pod: "a".into(),
                ip: "10.1.2.3".into()
            })
        );
        assert_eq!(ready_target(&pod("b", "False", Some("10.1.2.3"))), None);
        assert_eq!(ready_target(&pod("c", "True", None)), None);
    }

    #[test]
    fn addresses_bracket_ipv6() {
        assert_eq!(url("10.0.0.1", 80, "/readyz"), "http://10.0.0.1:80/readyz");
        assert_eq!(url("fd00::1", 80, "/readyz"), "http://[fd00::1]:80/readyz");
    }

    #[test]
    fn the_summary_names_every_failed_check() {
        let outcomes = [
            Outcome {
                what: "operator a".into(),
                problem: None,
            },
            Outcome {
                what: "gateway b".into(),
                problem: Some("answered 503".into()),
            },
            Outcome {
                what: "query iris".into(),
                problem: Some("refused".into()),
            },
        ];
        let error = summarise(&outcomes).expect_err("two failed");
        assert_eq!(
            error.to_string(),
            "2 of 3 checks failed: gateway b; query iris"
        );
        assert!(summarise(&outcomes[..1]).is_ok());
    }
}
