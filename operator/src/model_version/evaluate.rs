//! The pure step of the ModelVersion controller: from one version, its siblings (every version
//! of the same model in the namespace) and what the reconciler saw of its Secret, compute the
//! status it should have.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Condition, jiff::Timestamp};
use kube::ResourceExt;
use sluice_crds::{ModelFormat, ModelTask, ModelVersion, ModelVersionStatus};

use super::source_check::{SOURCE_REACHABLE, Verdict};
use sluice_contract::claim::ClaimUri;
use sluice_contract::mlflow;
use sluice_contract::resolve::alias_claims;

use crate::conditions::{self, Desired, IN_REGISTRY, Reason, Status};
pub use crate::conditions::{ALIAS_CONFLICT, READY};
use sluice_contract::labels::{ANNOTATION_REGISTRY_DELETED, LABEL_REGISTRY};

/// The status `mv` should have. `siblings` may include `mv` itself; only versions of the same
/// model in the same namespace are considered.
pub fn evaluate(
    mv: &ModelVersion,
    siblings: &[ModelVersion],
    source: &Verdict,
    now: Timestamp,
) -> ModelVersionStatus {
    let others: Vec<&ModelVersion> = siblings
        .iter()
        .filter(|o| {
            o.name_any() != mv.name_any()
                && o.namespace() == mv.namespace()
                && o.spec.model == mv.spec.model
        })
        .collect();

    // Read once: readiness and the status both show them.
    let flavors = flavors(mv, source);
    let location = resolved_uri(mv, source);
    let ready = readiness(mv, &others, source, flavors.is_some(), location.as_deref());
    let (effective_aliases, conflicts) = alias_claims(mv, &others);
    let mut desired = vec![ready, source_condition(mv, source)];
    desired.push(if conflicts.is_empty() {
        Desired {
            type_: ALIAS_CONFLICT,
            status: Status::False,
            reason: Reason::AliasesUnique,
            message: String::new(),
        }
    } else {
        Desired {
            type_: ALIAS_CONFLICT,
            status: Status::True,
            reason: Reason::AliasClaimedTwice,
            message: conflicts.join("; "),
        }
    });
    if let Some(registry) = mv.labels().get(LABEL_REGISTRY) {
        desired.push(match mv.annotations().get(ANNOTATION_REGISTRY_DELETED) {
            Some(note) => Desired {
                type_: IN_REGISTRY,
                status: Status::False,
                reason: Reason::DeletedInRegistry,
                message: note.clone(),
            },
            None => Desired {
                type_: IN_REGISTRY,
                status: Status::True,
                reason: Reason::Registered,
                message: format!("mirrored from registry {registry}"),
            },
        });
    }
    let previous: &[Condition] = mv
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    ModelVersionStatus {
        observed_generation: mv.metadata.generation,
        conditions: conditions::merge(previous, &desired, mv.metadata.generation, now),
        resolved_uri: location,
        effective_aliases,
        engine: flavors.as_ref().and_then(|f| f.engine),
        flavors: flavors.map(|f| f.names).unwrap_or_default(),
    }
}

/// The `MLmodel` flavors the source check read (and the engine they need): from a finished
/// check, else as the status said for this generation (a check Job removed after it
/// succeeded does not change what the artifact is).
fn flavors(mv: &ModelVersion, source: &Verdict) -> Option<mlflow::Flavors> {
    if let Verdict::Reachable(found) = source {
        return mlflow::Flavors::read(found);
    }
    let status = mv
        .status
        .as_ref()
        .filter(|s| s.observed_generation == mv.metadata.generation)?;
    (!status.flavors.is_empty()).then(|| mlflow::Flavors {
        names: status.flavors.clone(),
        engine: status.engine,
    })
}

/// The location pods fetch: a registry reference's, once the source check resolved it (until
/// then none, and the version is not Ready); any other source as it is.
fn resolved_uri(mv: &ModelVersion, source: &Verdict) -> Option<String> {
    let uri = &mv.spec.source.uri;
    if !mlflow::is_reference(uri) {
        return Some(uri.clone());
    }
    match source {
        Verdict::Reachable(found) => mlflow::resolved_location(found).map(str::to_string),
        _ => None,
    }
}

/// Why `uri` is a source the API accepts but this version's fetch step cannot read.
fn unsupported_source(uri: &str) -> Option<String> {
    if uri.starts_with("mlflow://") {
        return Some(format!(
            "spec.source.uri {uri}: mlflow:// references are not resolved by this version of \
             Sluice; name the version as models:/<model>/<version> (or @<alias>) with \
             spec.source.trackingUri, or register the artifact's own location (s3://, gs://, \
             az://, https://, pvc://)"
        ));
    }
    if uri.starts_with("file://") {
        return Some(format!(
            "spec.source.uri {uri}: file:// names a path inside the fetch container, whose image \
             holds no models; put the artifact on a PersistentVolumeClaim (pvc://<claim>/<path>) \
             or an object store"
        ));
    }
    None
}

/// Whether a source check Job is worth running: the version names a source the fetch step
/// can read (a refused scheme or claim name is reported without one).
pub fn checkable(mv: &ModelVersion) -> bool {
    unsupported_source(&mv.spec.source.uri).is_none()
        && ClaimUri::of(&mv.spec.source.uri)
            .and_then(|c| c.problem())
            .is_none()
}

/// The source check's verdict as a condition.
fn source_condition(mv: &ModelVersion, source: &Verdict) -> Desired {
    let (status, reason, message) = match source {
        Verdict::Checking => (
            Status::Unknown,
            Reason::Checking,
            format!("a Job checks {}", mv.spec.source.uri),
        ),
        Verdict::Reachable(found) => (Status::True, Reason::Reachable, found.clone()),
        Verdict::Unreachable(error) => (Status::False, Reason::Unreachable, error.clone()),
        Verdict::Unknown(why) => (Status::Unknown, Reason::CheckIncomplete, why.clone()),
        Verdict::SecretMissing(why) => (Status::Unknown, Reason::SecretNotFound, why.clone()),
    };
    Desired {
        type_: SOURCE_REACHABLE,
        status,
        reason,
        message,
    }
}

/// The Ready condition; `has_flavors` and `location` are what [`flavors`] and [`resolved_uri`]
/// found.
fn readiness(
    mv: &ModelVersion,
    others: &[&ModelVersion],
    source: &Verdict,
    has_flavors: bool,
    location: Option<&str>,
) -> Desired {
    let not_ready = |reason, message: String| Desired {
        type_: READY,
        status: Status::False,
        reason,
        message,
    };
    if let Some(message) = format_task_mismatch(mv.spec.format, mv.spec.task) {
        return not_ready(Reason::UnsupportedTask, message);
    }
    if let Some(message) = unsupported_source(&mv.spec.source.uri) {
        return not_ready(Reason::UnsupportedSource, message);
    }
    if let Some(problem) = ClaimUri::of(&mv.spec.source.uri).and_then(|c| c.problem()) {
        return not_ready(
            Reason::InvalidSource,
            format!("spec.source.uri {}: {problem}", mv.spec.source.uri),
        );
    }
    if let Some(first) = others
        .iter()
        .find(|o| o.spec.version == mv.spec.version && is_older(o, mv))
    {
        return not_ready(
            Reason::DuplicateVersion,
            format!(
                "version {} of model {} is already registered by ModelVersion {}",
                mv.spec.version,
                mv.spec.model,
                first.name_any()
            ),
        );
    }
    if let Verdict::SecretMissing(kubelet) = source {
        let name = mv
            .spec
            .source
            .secret_ref
            .as_ref()
            .map(|s| s.name.as_str())
            .unwrap_or_default();
        return not_ready(
            Reason::SecretNotFound,
            format!(
                "Secret {name} named by spec.source.secretRef does not exist (the source \
                 check waits for it: {kubelet})"
            ),
        );
    }
    if let Verdict::Unreachable(error) = source {
        return not_ready(
            Reason::SourceUnreachable,
            format!("the source check failed: {error}"),
        );
    }
    let inspecting = mv.spec.format == ModelFormat::Mlflow
        && checkable(mv)
        && matches!(source, Verdict::Checking)
        && !has_flavors;
    if inspecting && !mlflow::is_reference(&mv.spec.source.uri) {
        // The runtime of an entity that names none follows the MLmodel's flavors.
        return Desired {
            type_: READY,
            status: Status::Unknown,
            reason: Reason::Inspecting,
            message: format!(
                "the source check reads the MLmodel flavors of {}",
                mv.spec.source.uri
            ),
        };
    }
    let Some(location) = location else {
        // A reference is served only once resolved: pods fetch the location it named then,
        // not whatever it names when each pod starts.
        return Desired {
            type_: READY,
            status: Status::Unknown,
            reason: Reason::Resolving,
            message: format!(
                "the source check resolves {} through the MLflow tracking server",
                mv.spec.source.uri
            ),
        };
    };
    let shown = if location == mv.spec.source.uri {
        location.to_string()
    } else {
        format!("{location} ({})", mv.spec.source.uri)
    };
    Desired {
        type_: READY,
        status: Status::True,
        reason: Reason::Checked,
        message: format!("{} artifact at {shown}", format_name(mv.spec.format)),
    }
}

/// Which tasks each format can serve; `None` when the pair is fine.
fn format_task_mismatch(format: ModelFormat, task: Option<ModelTask>) -> Option<String> {
    let task = task.unwrap_or(ModelTask::Predict);
    let ok = match format {
        ModelFormat::Mlflow | ModelFormat::Custom => true,
        ModelFormat::Onnx => task == ModelTask::Predict,
        ModelFormat::Safetensors => task != ModelTask::Predict,
        ModelFormat::Gguf | ModelFormat::Prompt => {
            matches!(task, ModelTask::Chat | ModelTask::Completions)
        }
    };
    (!ok).then(|| {
        format!(
            "format {} cannot serve task {}",
            format_name(format),
            task_name(task)
        )
    })
}

fn format_name(format: ModelFormat) -> &'static str {
    match format {
        ModelFormat::Mlflow => "mlflow",
        ModelFormat::Onnx => "onnx",
        ModelFormat::Safetensors => "safetensors",
        ModelFormat::Gguf => "gguf",
        ModelFormat::Prompt => "prompt",
        ModelFormat::Custom => "custom",
    }
}

fn task_name(task: ModelTask) -> &'static str {
    match task {
        ModelTask::Chat => "llm/v1/chat",
        ModelTask::Completions => "llm/v1/completions",
        ModelTask::Embeddings => "llm/v1/embeddings",
        ModelTask::Predict => "predict",
    }
}

/// Creation order, ties broken by name, so exactly one of two duplicates wins.
fn is_older(a: &ModelVersion, b: &ModelVersion) -> bool {
    let key = |m: &ModelVersion| {
        (
            m.metadata.creation_timestamp.clone().map(|t| t.0),
            m.name_any(),
        )
    };
    key(a) < key(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(yaml: &str) -> ModelVersion {
        serde_norway::from_str(yaml).expect("fixture")
    }

    fn version(name: &str, v: i64, aliases: &str) -> ModelVersion {
        mv(&format!(
            "apiVersion: serving.sluice.dev/v1alpha1\nkind: ModelVersion\nmetadata: {{name: {name}, namespace: ns, generation: 1}}\n\
             spec: {{model: churn, version: {v}, aliases: [{aliases}], source: {{uri: 's3://b/churn/{v}'}}, format: onnx}}"
        ))
    }

    fn condition<'a>(s: &'a ModelVersionStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition present")
    }

    #[test]
    fn a_mirrored_version_deleted_in_its_registry_stays_ready_and_says_so() {
        let mut mirrored = version("iris-2", 2, "");
        mirrored
            .labels_mut()
            .insert(LABEL_REGISTRY.into(), "prod".into());
        let status = evaluate(
            &mirrored,
            &[],
            &Verdict::Reachable("readable".into()),
            Timestamp::now(),
        );
        assert_eq!(condition(&status, IN_REGISTRY).status, "True");
        mirrored.annotations_mut().insert(
            ANNOTATION_REGISTRY_DELETED.into(),
            "version 2 of iris is no longer in registry prod".into(),
        );
        let status = evaluate(
            &mirrored,
            &[],
            &Verdict::Reachable("readable".into()),
            Timestamp::now(),
        );
        let deleted = condition(&status, IN_REGISTRY);
        assert_eq!(
            (deleted.status.as_str(), deleted.reason.as_str()),
            ("False", Reason::DeletedInRegistry.as_str())
        );
        assert!(deleted.message.contains("no longer in registry prod"));
        assert_eq!(condition(&status, READY).status, "True");
    }

    #[test]
    fn an_mlflow_model_waits_for_its_flavors_which_name_its_engine() {
        let mut pickled = version("churn-3", 3, "");
        pickled.spec.format = ModelFormat::Mlflow;
        let s = evaluate(&pickled, &[], &Verdict::Checking, Timestamp::UNIX_EPOCH);
        assert_eq!(
            (
                condition(&s, READY).status.as_str(),
                condition(&s, READY).reason.as_str()
            ),
            ("Unknown", "Inspecting")
        );
        let flavors = mlflow::Flavors::new(vec!["python_function".into(), "sklearn".into()], false);
        let found = format!(
            "s3://b/churn/3: readable, 2 objects, 1 KiB{}",
            flavors.note()
        );
        let s = evaluate(
            &pickled,
            &[],
            &Verdict::Reachable(found),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(condition(&s, READY).status, "True");
        assert_eq!(
            (s.flavors.as_slice(), s.engine),
            (
                ["python_function".to_string(), "sklearn".to_string()].as_slice(),
                Some(sluice_crds::Engine::Mlflow)
            )
        );
        // The check Job gone (garbage-collected): the flavors of this generation stay.
        pickled.status = Some(s.clone());
        let again = evaluate(&pickled, &[], &Verdict::Checking, Timestamp::UNIX_EPOCH);
        assert_eq!(
            (again.engine, condition(&again, READY).status.as_str()),
            (s.engine, "True")
        );
        // A new generation (another source) is inspected again.
        pickled.metadata.generation = Some(2);
        let changed = evaluate(&pickled, &[], &Verdict::Checking, Timestamp::UNIX_EPOCH);
        assert_eq!((changed.engine, changed.flavors.len()), (None, 0));
        // An onnx model without an MLmodel needs nothing inspected.
        let onnx = version("churn-4", 4, "");
        let s = evaluate(&onnx, &[], &Verdict::Checking, Timestamp::UNIX_EPOCH);
        assert_eq!(
            (condition(&s, READY).status.as_str(), s.engine),
            ("True", None)
        );
    }

    #[test]
    fn a_lone_version_is_ready_with_its_aliases() {
        let a = version("churn-7", 7, "champion");
        let s = evaluate(
            &a,
            std::slice::from_ref(&a),
            &Verdict::Checking,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(condition(&s, READY).status, "True");
        assert_eq!(condition(&s, ALIAS_CONFLICT).status, "False");
        assert_eq!(s.effective_aliases, ["champion"]);
        assert_eq!(s.resolved_uri.as_deref(), Some("s3://b/churn/7"));
        assert_eq!(s.observed_generation, Some(1));
    }

    #[test]
    fn an_alias_claimed_twice_is_reported_on_both_and_held_by_neither() {
        let a = version("churn-7", 7, "champion");
        let b = version("churn-8", 8, "champion, challenger");
        let all = [a.clone(), b.clone()];
        for (me, other) in [(&a, "churn-8"), (&b, "churn-7")] {
            let s = evaluate(me, &all, &Verdict::Checking, Timestamp::UNIX_EPOCH);
            let c = condition(&s, ALIAS_CONFLICT);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("True", "AliasClaimedTwice")
            );
            assert!(c.message.contains(other), "{}", c.message);
            assert!(!s.effective_aliases.contains(&"champion".to_string()));
        }
        let s = evaluate(&b, &all, &Verdict::Checking, Timestamp::UNIX_EPOCH);
        assert_eq!(s.effective_aliases, ["challenger"]);
    }

    #[test]
    fn a_duplicate_version_number_is_not_ready_for_the_younger_object() {
        let a = version("churn-a", 7, "x");
        let b = version("churn-b", 7, "y");
        let all = [a.clone(), b.clone()];
        let sa = evaluate(&a, &all, &Verdict::Checking, Timestamp::UNIX_EPOCH);
        let sb = evaluate(&b, &all, &Verdict::Checking, Timestamp::UNIX_EPOCH);
        assert_eq!(condition(&sa, READY).status, "True");
        assert_eq!(condition(&sb, READY).reason, "DuplicateVersion");
    }

    #[test]
    fn format_and_task_must_fit_and_the_secret_must_exist() {
        let mut onnx_chat = version("churn-9", 9, "z");
        onnx_chat.spec.task = Some(ModelTask::Chat);
        let s = evaluate(&onnx_chat, &[], &Verdict::Checking, Timestamp::UNIX_EPOCH);
        assert_eq!(
            condition(&s, READY).message,
            "format onnx cannot serve task llm/v1/chat"
        );

        let a = version("churn-7", 7, "champion");
        let s = evaluate(
            &a,
            &[],
            &Verdict::SecretMissing("secret \"s3\" not found".into()),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(condition(&s, READY).reason, "SecretNotFound");
    }

    #[test]
    fn a_pvc_source_must_name_a_valid_claim() {
        let mut on_claim = version("churn-5", 5, "");
        on_claim.spec.source.uri = "pvc://models/churn/5".into();
        let s = evaluate(&on_claim, &[], &Verdict::Checking, Timestamp::UNIX_EPOCH);
        assert_eq!(condition(&s, READY).status, "True");

        on_claim.spec.source.uri = format!("pvc://{}/churn/5", "m".repeat(254));
        let s = evaluate(&on_claim, &[], &Verdict::Checking, Timestamp::UNIX_EPOCH);
        let ready = condition(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidSource")
        );
        assert!(
            ready
                .message
                .contains("not a valid PersistentVolumeClaim name"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn sources_the_fetch_step_cannot_read_are_not_ready() {
        for uri in ["mlflow://registry/fraud/3", "file:///models/fraud"] {
            let mut mv = version("fraud-3", 3, "");
            mv.spec.source.uri = uri.into();
            let s = evaluate(&mv, &[], &Verdict::Checking, Timestamp::UNIX_EPOCH);
            let ready = condition(&s, READY);
            assert_eq!(
                (ready.status.as_str(), ready.reason.as_str()),
                ("False", "UnsupportedSource"),
                "{uri}"
            );
            assert!(ready.message.contains(uri), "{}", ready.message);
        }
    }

    #[test]
    fn a_registry_reference_is_ready_once_resolved_and_serves_the_location() {
        let mut mv = version("fraud-3", 3, "");
        mv.spec.source.uri = "models:/fraud@champion".into();
        let s = evaluate(&mv, &[], &Verdict::Checking, Timestamp::UNIX_EPOCH);
        let ready = condition(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("Unknown", "Resolving")
        );
        assert_eq!(
            s.resolved_uri, None,
            "nothing to fetch before it is resolved"
        );
        let found = sluice_contract::mlflow::resolved_summary(
            "models:/fraud@champion",
            "mlflow-artifacts:/1/r/artifacts/model",
            "readable, 2 objects, 3 KiB",
        );
        let s = evaluate(&mv, &[], &Verdict::Reachable(found), Timestamp::UNIX_EPOCH);
        let ready = condition(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Checked")
        );
        assert!(
            ready
                .message
                .contains("mlflow-artifacts:/1/r/artifacts/model (models:/fraud@champion)"),
            "{}",
            ready.message
        );
        assert_eq!(
            s.resolved_uri.as_deref(),
            Some("mlflow-artifacts:/1/r/artifacts/model")
        );
        let failed =
            Verdict::Unreachable("fetching models:/fraud@champion through MLflow: no".into());
        let s = evaluate(&mv, &[], &failed, Timestamp::UNIX_EPOCH);
        assert_eq!(condition(&s, READY).reason, "SourceUnreachable");
    }

    #[test]
    fn a_failed_source_check_keeps_the_version_from_ready_and_a_pending_one_does_not() {
        let mv = version("fraud-3", 3, "");
        let failed = Verdict::Unreachable("fetching s3://m/x: access denied".into());
        let s = evaluate(&mv, &[], &failed, Timestamp::UNIX_EPOCH);
        let ready = condition(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "SourceUnreachable")
        );
        assert!(
            ready.message.ends_with("access denied"),
            "{}",
            ready.message
        );
        assert_eq!(condition(&s, SOURCE_REACHABLE).status, "False");
        let checking = evaluate(&mv, &[], &Verdict::Checking, Timestamp::UNIX_EPOCH);
        assert_eq!(condition(&checking, READY).status, "True");
        assert_eq!(condition(&checking, SOURCE_REACHABLE).status, "Unknown");
    }
}
