//! The ModelVersion controller, run as the real `sluice-operator` process against the local
//! control plane: readiness, alias conflicts reported on both objects, and recovery when the
//! conflict is resolved.

use std::{cell::RefCell, time::Duration};

use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;
use sluice_crds::ModelVersion;
use sluice_tests::{
    cluster::{fresh_namespace, shared},
    wait,
};

fn condition(mv: &ModelVersion, type_: &str) -> Option<(String, String)> {
    mv.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// ModelVersion `name` once `check` accepts it. Past 3 minutes (generous: the first check Job
/// also waits for its image to reach the test kubelet), fails with `what`, the last status read
/// and the control plane's logs.
async fn wait_for(
    api: &Api<ModelVersion>,
    name: &str,
    what: &str,
    check: impl Fn(&ModelVersion) -> bool,
) -> ModelVersion {
    let last_status = RefCell::new("never read".to_string());
    let logs = || {
        let status = last_status.borrow();
        format!("{name}: status is {status}\n{}", shared().dump_logs())
    };
    let what = format!("{name}: {what}");
    wait::eventually(&what, Duration::from_secs(180), logs, || async {
        let mv = api.get(name).await.ok()?;
        if check(&mv) {
            return Some(mv);
        }
        last_status.replace(format!("{:#?}", mv.status));
        None
    })
    .await
}

fn version(name: &str, v: i64, aliases: &[&str]) -> serde_json::Value {
    json!({
        "apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ModelVersion",
        "metadata": {"name": name},
        "spec": {"model": "churn", "version": v, "aliases": aliases, "source": {"uri": format!("s3://models/churn/{v}")}, "format": "onnx"}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn alias_conflicts_are_reported_on_both_versions_and_clear_when_resolved() {
    let cp = shared();
    let client = cp.client().await.expect("client");
    let ns = fresh_namespace(&client, "mv").await;
    let _operator = cp.start_operator();

    let api: Api<ModelVersion> = Api::namespaced(client, &ns);
    let apply = PatchParams::apply("test-user");
    api.patch(
        "churn-7",
        &apply,
        &Patch::Apply(version("churn-7", 7, &["champion"])),
    )
    .await
    .expect("v7");
    let ready = |mv: &ModelVersion| condition(mv, "Ready").is_some_and(|(s, _)| s == "True");
    let v7 = wait_for(&api, "churn-7", "Ready", ready).await;
    assert_eq!(
        v7.status.as_ref().map(|s| s.effective_aliases.clone()),
        Some(vec!["champion".to_string()])
    );

    api.patch(
        "churn-8",
        &apply,
        &Patch::Apply(version("churn-8", 8, &["champion"])),
    )
    .await
    .expect("v8");
    let conflicted =
        |mv: &ModelVersion| condition(mv, "AliasConflict").is_some_and(|(s, _)| s == "True");
    for name in ["churn-7", "churn-8"] {
        let mv = wait_for(&api, name, "AliasConflict=True", conflicted).await;
        assert!(
            ready(&mv),
            "{name}: a conflict does not make the version itself unready"
        );
        assert!(
            mv.status
                .as_ref()
                .is_some_and(|s| s.effective_aliases.is_empty()),
            "{name} must hold no contested alias"
        );
    }

    // Moving the alias away resolves the conflict on both objects.
    api.patch("churn-7", &apply, &Patch::Apply(version("churn-7", 7, &[])))
        .await
        .expect("move alias");
    let clear =
        |mv: &ModelVersion| condition(mv, "AliasConflict").is_some_and(|(s, _)| s == "False");
    wait_for(&api, "churn-7", "AliasConflict=False", clear).await;
    let v8 = wait_for(&api, "churn-8", "AliasConflict=False", clear).await;
    assert_eq!(
        v8.status
            .and_then(|s| s.effective_aliases.first().cloned())
            .as_deref(),
        Some("champion")
    );
}
