//! MLflow rules shared by the operator and the data plane.
//!
//! - AI Gateway names: MLflow endpoint names may hold `_`, `.` and capitals, Kubernetes object
//!   names may not. One rule maps the first to the second, used by the importer that writes
//!   ServingEndpoints from an MLflow config and by the gateway's
//!   `/endpoints/{name}/invocations`, so an MLflow client keeps calling the names it knows.
//! - Registry references (`models:/`, `runs:/`): the source check (`fetch --check`) says what
//!   a reference resolved to ([`resolved_summary`]), and the operator reads it back
//!   ([`resolved_location`]) into the ModelVersion's `status.resolvedUri`.
//! - MLmodel flavors: the source check names the flavors of an artifact's `MLmodel` and the
//!   engine they need ([`Flavors`]); the operator publishes them in the ModelVersion's status
//!   and serves an entity that names no runtime on that engine.

use sluice_crds::Engine;

/// Whether `uri` is a registry reference the source check resolves.
pub fn is_reference(uri: &str) -> bool {
    uri.starts_with("models:/") || uri.starts_with("runs:/")
}

const RESOLVED_TO: &str = " resolved to ";

/// The source check's summary of a reference: `<reference> resolved to <location>: <found>`.
pub fn resolved_summary(reference: &str, location: &str, found: &str) -> String {
    format!("{reference}{RESOLVED_TO}{location}: {found}")
}

/// The location in a summary [`resolved_summary`] wrote.
pub fn resolved_location(summary: &str) -> Option<&str> {
    let (_, rest) = summary.split_once(RESOLVED_TO)?;
    let location = rest.split_once(": ").map_or(rest, |(location, _)| location);
    (!location.is_empty() && !location.contains(char::is_whitespace)).then_some(location)
}

const FLAVORS: &str = "; MLmodel flavors ";
const RUNTIME: &str = " (runtime ";

/// What the source check read from an artifact's `MLmodel` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flavors {
    /// The flavor names, in the file's order.
    pub names: Vec<String>,
    /// The engine that serves the model when an entity names none; `None` when neither the
    /// builtin runtime nor MLflow's scoring server can (no `python_function` flavor).
    pub engine: Option<Engine>,
}

impl Flavors {
    /// The flavors `names`; `builtin` says whether the builtin runtime serves one of them (the
    /// model directory's rule, `MlModel::builtin_flavor` in `sluice-protocol`). Anything else
    /// with a `python_function` flavor runs on MLflow's scoring server.
    pub fn new(names: Vec<String>, builtin: bool) -> Self {
        let engine = if builtin {
            Some(Engine::Builtin)
        } else if names.iter().any(|n| n == "python_function") {
            Some(Engine::Mlflow)
        } else {
            None
        };
        Self { names, engine }
    }

    /// The note the source check appends to its summary: `; MLmodel flavors a, b (runtime x)`.
    pub fn note(&self) -> String {
        let engine = match self.engine {
            Some(Engine::Builtin) => "builtin",
            Some(Engine::Mlflow) => "mlflow",
            _ => "none",
        };
        format!("{FLAVORS}{}{RUNTIME}{engine})", self.names.join(", "))
    }

    /// The flavors a summary's [`Flavors::note`] names, if it has one.
    pub fn read(summary: &str) -> Option<Self> {
        let (_, rest) = summary.split_once(FLAVORS)?;
        let (names, rest) = rest.rsplit_once(RUNTIME)?;
        let engine = match rest.strip_suffix(')')? {
            "builtin" => Some(Engine::Builtin),
            "mlflow" => Some(Engine::Mlflow),
            _ => None,
        };
        let names = names
            .split(", ")
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        Some(Self { names, engine })
    }
}

/// Annotation holding the MLflow name an imported ServingEndpoint was made from.
pub const NAME_ANNOTATION: &str = "serving.sluice.dev/mlflow-name";

/// The ServingEndpoint name of MLflow endpoint `name`: lowercase, `_` and `.` as `-`; `None`
/// when that is no DNS-1035 label (starts with a letter, at most 63 characters, ends with a
/// letter or digit).
pub fn endpoint_name(name: &str) -> Option<String> {
    kubernetes_label(name, 63).filter(|out| out.starts_with(|c: char| c.is_ascii_lowercase()))
}

/// The Sluice model name (`ModelVersion.spec.model`) of registered model `name` as MLflow or
/// Databricks spell it (`Fraud_Model`, `main.risk.fraud`): lowercase, `_`, `.` and spaces as
/// `-`. `None` when that is no DNS label of at most 63 characters. Every path that turns a
/// registry name into a Sluice name calls this, so the same model keeps one name.
pub fn model_name(name: &str) -> Option<String> {
    kubernetes_label(&name.replace(' ', "-"), 63)
}

/// The served-entity name the upstream API gives an entity without one: the model's own name
/// (the last part of a three-part Unity Catalog name) and the version, `<model>-<version>`,
/// as a DNS label of at most 32 characters (`main.risk.Fraud_Model` version 3:
/// `fraud-model-3`). `None` when it would not be one.
pub fn default_entity_name(model: &str, version: &str) -> Option<String> {
    let own = model.rsplit('.').next().unwrap_or(model);
    entity_name(&format!("{own}-{version}"))
}

/// The Sluice spelling of served-entity name `name` (routes name entities with it too):
/// lowercase, `_` and `.` as `-`, a DNS label of at most 32 characters.
pub fn entity_name(name: &str) -> Option<String> {
    kubernetes_label(name, 32)
}

/// The ModelVersion alias of MLflow alias `alias` (`Champion_2` → `champion-2`): a DNS label
/// of at most 32 characters that starts with a letter, as `spec.aliases` takes them.
pub fn alias_name(alias: &str) -> Option<String> {
    kubernetes_label(alias, 32).filter(|out| out.starts_with(|c: char| c.is_ascii_lowercase()))
}

/// The name of the ModelVersion object of version `version` of Sluice model `model`.
pub fn version_object_name(model: &str, version: i64) -> String {
    format!("{model}-{version}")
}

/// The `Authorization` header value for MLflow credentials as MLflow's own clients take them
/// (`MLFLOW_TRACKING_TOKEN`, else `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`);
/// `None` without credentials.
pub fn authorization(
    token: Option<&str>,
    username: Option<&str>,
    password: Option<&str>,
) -> Option<String> {
    use base64::Engine as _;
    match (token, username) {
        (Some(token), _) => Some(format!("Bearer {token}")),
        (None, Some(user)) => Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", password.unwrap_or_default()))
        )),
        (None, None) => None,
    }
}

/// `name` lowercased, with `_` and `.` as `-`, when that is a DNS-1123 label of at
/// most `max` characters.
fn kubernetes_label(name: &str, max: usize) -> Option<String> {
    let out: String = name
        .chars()
        .map(|c| match c {
            '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = (1..=max).contains(&out.len())
        && out.starts_with(alphanumeric)
        && out.ends_with(alphanumeric)
        && out.chars().all(|c| alphanumeric(c) || c == '-');
    valid.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::Flavors;
    use sluice_crds::Engine;

    #[test]
    fn flavors_choose_an_engine_and_read_back_from_a_summary() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let sklearn = Flavors::new(names(&["python_function", "sklearn"]), false);
        assert_eq!(sklearn.engine, Some(Engine::Mlflow));
        let onnx = Flavors::new(names(&["onnx", "python_function"]), true);
        assert_eq!(onnx.engine, Some(Engine::Builtin));
        let spark = Flavors::new(names(&["spark"]), false);
        assert_eq!(spark.engine, None);
        for flavors in [sklearn, onnx, spark] {
            let summary = super::resolved_summary(
                "models:/m/1",
                "mlflow-artifacts:/1/x/artifacts/model",
                &format!("readable, 3 objects, 1.2 KiB{}", flavors.note()),
            );
            assert_eq!(Flavors::read(&summary), Some(flavors), "{summary}");
            assert_eq!(
                super::resolved_location(&summary),
                Some("mlflow-artifacts:/1/x/artifacts/model")
            );
        }
        assert_eq!(Flavors::read("pvc://m: readable, 1 object, 3 B"), None);
    }

    #[test]
    fn a_resolved_location_reads_back() {
        let summary = super::resolved_summary(
            "models:/iris@champion",
            "mlflow-artifacts:/1/abc/artifacts/model",
            "readable, 3 objects, 1.2 KiB",
        );
        assert_eq!(
            super::resolved_location(&summary),
            Some("mlflow-artifacts:/1/abc/artifacts/model")
        );
        assert_eq!(
            super::resolved_location("s3://b/k: readable, 1 object"),
            None
        );
        assert!(super::is_reference("runs:/r/model") && !super::is_reference("s3://b/k"));
    }

    use super::*;

    #[test]
    fn mlflow_names_map_onto_kubernetes_names() {
        assert_eq!(endpoint_name("chat").as_deref(), Some("chat"));
        assert_eq!(
            endpoint_name("Azure_Chat.v2").as_deref(),
            Some("azure-chat-v2")
        );
        for bad in ["", "9lives", "trailing_", "spa ce", &"x".repeat(64)] {
            assert_eq!(endpoint_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn credentials_become_the_header_mlflow_clients_send() {
        assert_eq!(
            authorization(None, Some("admin"), Some("password1234")).as_deref(),
            Some("Basic YWRtaW46cGFzc3dvcmQxMjM0")
        );
        assert_eq!(
            authorization(Some("t0k"), Some("admin"), None).as_deref(),
            Some("Bearer t0k")
        );
        assert_eq!(authorization(None, None, Some("p")), None);
        assert_eq!(alias_name("Champion_2").as_deref(), Some("champion-2"));
        assert_eq!(alias_name("2nd"), None);
    }

    #[test]
    fn registry_names_map_onto_model_and_entity_names() {
        assert_eq!(model_name("Fraud_Model").as_deref(), Some("fraud-model"));
        assert_eq!(
            model_name("main.risk.fraud").as_deref(),
            Some("main-risk-fraud")
        );
        assert_eq!(model_name("9lives").as_deref(), Some("9lives"));
        assert_eq!(
            default_entity_name("mi_catalogo.mi_schema.chatbot", "3").as_deref(),
            Some("chatbot-3")
        );
        assert_eq!(
            default_entity_name("ads1", "12").as_deref(),
            Some("ads1-12")
        );
        assert_eq!(entity_name("Champion").as_deref(), Some("champion"));
        for bad in ["", "-x", "x!", &"x".repeat(33)] {
            assert_eq!(entity_name(bad), None, "{bad:?}");
        }
        assert_eq!(model_name("résumé"), None);
    }
}
