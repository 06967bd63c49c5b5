//! The pure step of a registry mirror: from what the registry holds and the ModelVersions of
//! the namespace, the ModelVersions to apply. Present versions are made with the registry's
//! aliases; a mirrored version the registry no longer holds loses its aliases (as it did in
//! MLflow) and is marked deleted, never removed: endpoints may still serve it.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use sluice_contract::config::RegistryMirror;
use sluice_contract::labels::{
    ANNOTATION_REGISTERED_NAME, ANNOTATION_REGISTRY_DELETED, LABEL_REGISTRY, MANAGED_BY,
};
use sluice_contract::mlflow;
use sluice_crds::common::SecretRef;
use sluice_crds::{ModelFormat, ModelSource, ModelVersion, ModelVersionSpec};

use super::mlflow::RegisteredModel;

/// What one sync does.
#[derive(Debug, Default)]
pub struct Plan {
    /// ModelVersions to apply, those that gain an alias first (so an alias moved in the
    /// registry is held twice for a moment, which endpoints ride out on the version they
    /// serve, rather than by none).
    pub apply: Vec<ModelVersion>,
    /// What could not be mirrored, each naming the version and why.
    pub problems: Vec<String>,
    /// Versions the registry holds that are mirrored (made now or before).
    pub mirrored: usize,
    /// Mirrored versions the registry no longer holds.
    pub deleted: usize,
}

const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

fn mirrored_by<'a>(mv: &'a ModelVersion, mirror: &str) -> Option<&'a str> {
    (mv.labels().get(LABEL_REGISTRY).map(String::as_str) == Some(mirror))
        .then(|| {
            mv.annotations()
                .get(ANNOTATION_REGISTERED_NAME)
                .map(String::as_str)
        })
        .flatten()
}

/// The ModelVersion mirroring version `version` of registered model `registered` (its Sluice
/// name `model`), holding `aliases`.
fn desired(
    mirror: &RegistryMirror,
    labels: &BTreeMap<String, String>,
    registered: &str,
    model: &str,
    version: i64,
    aliases: Vec<String>,
) -> ModelVersion {
    let mut mv = ModelVersion::new(
        &mlflow::version_object_name(model, version),
        ModelVersionSpec {
            model: model.to_string(),
            version,
            aliases,
            source: ModelSource {
                uri: format!("models:/{registered}/{version}"),
                tracking_uri: Some(mirror.tracking_uri.clone()),
                secret_ref: mirror.secret_name.clone().map(|name| SecretRef { name }),
                sha256: None,
            },
            format: mirror.format.unwrap_or(ModelFormat::Mlflow),
            task: None,
            signature: None,
        },
    );
    mv.metadata.namespace = Some(mirror.namespace.clone());
    let mut all = labels.clone();
    all.insert(LABEL_REGISTRY.into(), mirror.name.clone());
    all.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    mv.metadata.labels = Some(all);
    mv.metadata.annotations = Some(BTreeMap::from([(
        ANNOTATION_REGISTERED_NAME.to_string(),
        registered.to_string(),
    )]));
    mv
}

/// Whether applying `want` over `have` would change what the mirror owns.
fn differs(have: &ModelVersion, want: &ModelVersion) -> bool {
    let sorted = |a: &[String]| a.iter().cloned().collect::<BTreeSet<_>>();
    let owned = |mv: &ModelVersion| mv.annotations().get(ANNOTATION_REGISTRY_DELETED).cloned();
    sorted(&have.spec.aliases) != sorted(&want.spec.aliases)
        || owned(have) != owned(want)
        || want
            .labels()
            .iter()
            .any(|(k, v)| have.labels().get(k) != Some(v))
}

/// The plan for `mirror` (whose made objects carry `labels` too, the installation's selector),
/// given the registry's `models` and every ModelVersion of the namespace. `now` dates a
/// deletion first seen.
pub fn plan(
    mirror: &RegistryMirror,
    labels: &BTreeMap<String, String>,
    models: &[RegisteredModel],
    existing: &[ModelVersion],
    now: &str,
) -> Plan {
    let mut plan = Plan::default();
    let by_name: BTreeMap<String, &ModelVersion> =
        existing.iter().map(|mv| (mv.name_any(), mv)).collect();
    let mut gaining = Vec::new();
    let mut rest = Vec::new();
    let mut seen = BTreeSet::new();
    for registered in models {
        let Some(model) = mlflow::model_name(&registered.name) else {
            plan.problems.push(format!(
                "registered model {:?}: its name maps to no Sluice model name (letters, digits, \
                 `-`, `_`, `.`, spaces; at most 63)",
                registered.name
            ));
            continue;
        };
        let mut aliases: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for (alias, version) in &registered.aliases {
            match mlflow::alias_name(alias) {
                Some(alias) => aliases.entry(*version).or_default().push(alias),
                None => plan.problems.push(format!(
                    "{}@{alias}: the alias maps to no ModelVersion alias (a letter first, at most \
                     32 characters); not mirrored",
                    registered.name
                )),
            }
        }
        for &version in &registered.versions {
            let want = desired(
                mirror,
                labels,
                &registered.name,
                &model,
                version,
                aliases.remove(&version).unwrap_or_default(),
            );
            let name = want.name_any();
            seen.insert(name.clone());
            let taken = existing.iter().find(|mv| {
                mirrored_by(mv, &mirror.name) != Some(registered.name.as_str())
                    && (mv.name_any() == name
                        || (mv.spec.model == model && mv.spec.version == version))
            });
            if let Some(other) = taken {
                plan.problems.push(format!(
                    "{}/{version}: ModelVersion {} already holds {model} version {version} and \
                     is not mirrored from registry {}; left as it is",
                    registered.name,
                    other.name_any(),
                    mirror.name
                ));
                continue;
            }
            plan.mirrored += 1;
            match by_name.get(&name) {
                Some(have) if !differs(have, &want) => {}
                Some(have) => {
                    let before: BTreeSet<&String> = have.spec.aliases.iter().collect();
                    if want.spec.aliases.iter().any(|a| !before.contains(a)) {
                        gaining.push(want);
                    } else {
                        rest.push(want);
                    }
                }
                None => gaining.push(want),
            }
        }
    }
    // Mirrored versions the registry no longer holds: reported, aliases dropped, kept.
    let read: BTreeSet<&str> = models.iter().map(|m| m.name.as_str()).collect();
    for mv in existing {
        let Some(registered) = mirrored_by(mv, &mirror.name) else {
            continue;
        };
        let in_scope = read.contains(registered)
            || mirror.models.is_empty()
            || mirror.models.iter().any(|m| m == registered);
        if seen.contains(&mv.name_any()) || !in_scope {
            continue;
        }
        plan.deleted += 1;
        let mut want = desired(
            mirror,
            labels,
            registered,
            &mv.spec.model,
            mv.spec.version,
            Vec::new(),
        );
        want.spec = ModelVersionSpec {
            aliases: Vec::new(),
            ..mv.spec.clone()
        };
        let noted = mv.annotations().get(ANNOTATION_REGISTRY_DELETED).cloned();
        want.annotations_mut().insert(
            ANNOTATION_REGISTRY_DELETED.into(),
            noted.unwrap_or_else(|| {
                format!(
                    "version {} of {registered} is no longer in registry {} (seen {now}); kept \
                     while endpoints may serve it: delete the ModelVersion when none does",
                    mv.spec.version, mirror.name
                )
            }),
        );
        if differs(mv, &want) {
            rest.push(want);
        }
    }
    plan.apply = gaining.into_iter().chain(rest).collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror() -> RegistryMirror {
        RegistryMirror {
            name: "prod".into(),
            tracking_uri: "http://127.0.0.1:5000".into(),
            namespace: "ml".into(),
            models: vec!["Iris_Model".into()],
            secret_name: Some("mlflow".into()),
            ..RegistryMirror::default()
        }
    }

    fn registry(aliases: &[(&str, i64)], versions: &[i64]) -> Vec<RegisteredModel> {
        vec![RegisteredModel {
            name: "Iris_Model".into(),
            aliases: aliases.iter().map(|(a, v)| (a.to_string(), *v)).collect(),
            versions: versions.to_vec(),
        }]
    }

    /// The objects as the API server would hold them after `plan` applied.
    fn applied(existing: &[ModelVersion], plan: &Plan) -> Vec<ModelVersion> {
        let mut all: BTreeMap<String, ModelVersion> =
            existing.iter().map(|m| (m.name_any(), m.clone())).collect();
        for mv in &plan.apply {
            all.insert(mv.name_any(), mv.clone());
        }
        all.into_values().collect()
    }

    #[test]
    fn every_version_is_made_with_its_aliases_and_a_registry_reference() {
        let plan = plan(
            &mirror(),
            &BTreeMap::from([("tier".into(), "gold".into())]),
            &registry(&[("Champion", 1), ("challenger", 2)], &[1, 2]),
            &[],
            "t0",
        );
        assert!(plan.problems.is_empty(), "{:?}", plan.problems);
        let names: Vec<String> = plan.apply.iter().map(|m| m.name_any()).collect();
        assert_eq!(names, ["iris-model-1", "iris-model-2"]);
        let one = &plan.apply[0];
        assert_eq!(one.spec.aliases, ["champion"]);
        assert_eq!(one.spec.source.uri, "models:/Iris_Model/1");
        assert_eq!(one.spec.format, ModelFormat::Mlflow);
        assert_eq!(one.labels()["tier"], "gold");
        assert_eq!(one.labels()[LABEL_REGISTRY], "prod");
        assert_eq!(
            one.spec.source.secret_ref.as_ref().map(|s| s.name.as_str()),
            Some("mlflow")
        );
    }

    #[test]
    fn a_moved_alias_is_given_before_it_is_taken_and_a_second_sync_does_nothing() {
        let first = plan(
            &mirror(),
            &BTreeMap::new(),
            &registry(&[("champion", 1)], &[1, 2]),
            &[],
            "t0",
        );
        let now = applied(&[], &first);
        let moved = plan(
            &mirror(),
            &BTreeMap::new(),
            &registry(&[("champion", 2)], &[1, 2]),
            &now,
            "t1",
        );
        let order: Vec<(String, Vec<String>)> = moved
            .apply
            .iter()
            .map(|m| (m.name_any(), m.spec.aliases.clone()))
            .collect();
        assert_eq!(
            order,
            [
                ("iris-model-2".to_string(), vec!["champion".to_string()]),
                ("iris-model-1".to_string(), vec![])
            ]
        );
        let now = applied(&now, &moved);
        let again = plan(
            &mirror(),
            &BTreeMap::new(),
            &registry(&[("champion", 2)], &[1, 2]),
            &now,
            "t2",
        );
        assert!(again.apply.is_empty(), "{:?}", again.apply);
        assert_eq!(again.mirrored, 2);
    }

    #[test]
    fn a_deleted_version_is_kept_marked_and_stripped_of_its_aliases_once() {
        let first = plan(
            &mirror(),
            &BTreeMap::new(),
            &registry(&[("champion", 2)], &[1, 2]),
            &[],
            "t0",
        );
        let now = applied(&[], &first);
        let gone = plan(
            &mirror(),
            &BTreeMap::new(),
            &registry(&[], &[1]),
            &now,
            "t1",
        );
        assert_eq!(gone.deleted, 1);
        let marked = &gone.apply[0];
        assert_eq!(marked.name_any(), "iris-model-2");
        assert!(marked.spec.aliases.is_empty());
        let note = &marked.annotations()[ANNOTATION_REGISTRY_DELETED];
        assert!(
            note.contains("version 2 of Iris_Model") && note.contains("t1"),
            "{note}"
        );
        let now = applied(&now, &gone);
        let again = plan(
            &mirror(),
            &BTreeMap::new(),
            &registry(&[], &[1]),
            &now,
            "t2",
        );
        assert!(
            again.apply.is_empty(),
            "the note keeps its first time: {:?}",
            again.apply
        );
        assert_eq!(again.deleted, 1);
        // Registered again: the mark goes.
        let back = plan(
            &mirror(),
            &BTreeMap::new(),
            &registry(&[], &[1, 2]),
            &now,
            "t3",
        );
        assert_eq!(back.apply.len(), 1);
        assert!(
            !back.apply[0]
                .annotations()
                .contains_key(ANNOTATION_REGISTRY_DELETED)
        );
    }

    #[test]
    fn a_version_a_user_made_is_left_alone_and_named() {
        let mine = ModelVersion::new(
            "iris-model-1",
            ModelVersionSpec {
                model: "iris-model".into(),
                version: 1,
                aliases: vec![],
                source: ModelSource {
                    uri: "s3://b/k".into(),
                    ..ModelSource::default()
                },
                format: ModelFormat::Onnx,
                task: None,
                signature: None,
            },
        );
        let plan = plan(
            &mirror(),
            &BTreeMap::new(),
            &registry(&[], &[1]),
            &[mine],
            "t0",
        );
        assert!(plan.apply.is_empty());
        assert!(
            plan.problems[0].contains("not mirrored from registry prod"),
            "{:?}",
            plan.problems
        );
    }
}
