//! How endpoints follow ModelVersions, with real pods on the test kubelet: an alias conflict and
//! a missing version are reported as conditions while the endpoint keeps serving what it
//! resolved before; moving an alias rolls every endpoint that follows it.

mod operator_support;

use operator_support::{Scene, condition, endpoint, engine_entity, model_version, served_versions};
use serde_json::json;

fn alias_endpoint(name: &str, alias: &str) -> serde_json::Value {
    endpoint(
        name,
        vec![engine_entity(
            "main",
            "churn",
            json!({"alias": alias}),
            json!({}),
        )],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conflict_and_a_missing_version_are_conditions_and_the_endpoint_keeps_serving() {
    let scene = Scene::new("conflict", true).await;
    scene
        .apply(model_version("churn-1", "churn", 1, &["champion"]))
        .await;
    scene.apply(alias_endpoint("churn", "champion")).await;
    let serving = scene
        .settled("churn", "READY on version 1", |s| {
            served_versions(s) == [("main".to_string(), Some(1))]
        })
        .await;

    // A second version claims the same alias: both versions report it, nobody holds it.
    scene
        .apply(model_version("churn-2", "churn", 2, &["champion"]))
        .await;
    for name in ["churn-1", "churn-2"] {
        let versions = scene.versions();
        scene
            .eventually(&format!("AliasConflict=True on {name}"), || {
                let versions = versions.clone();
                async move {
                    let mv = versions.get(name).await.ok()?;
                    let (status, _) = condition(&mv.status?.conditions, "AliasConflict")?;
                    (status == "True").then_some(())
                }
            })
            .await;
    }
    // The endpoint still serves version 1, with the same pods and config, and says why.
    let after = scene
        .settled("churn", "still READY, AliasConflict=True", |s| {
            condition(&s.conditions, "AliasConflict").is_some_and(|c| c.0 == "True")
        })
        .await;
    let message = after
        .conditions
        .iter()
        .find(|c| c.type_ == "AliasConflict")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("churn-1, churn-2") && message.contains("keeping version 1"),
        "{message}"
    );
    assert_eq!(served_versions(&after), served_versions(&serving));
    assert_eq!(
        after.config.as_ref().map(|c| c.config_version),
        serving.config.as_ref().map(|c| c.config_version)
    );
    assert!(after.pending_config.is_none());

    // A version that does not exist: a Resolved=False condition and UPDATE_FAILED, while the
    // active config keeps serving.
    scene
        .apply(endpoint(
            "churn",
            vec![engine_entity(
                "main",
                "churn",
                json!({"version": 99}),
                json!({}),
            )],
            &[],
        ))
        .await;
    let api = scene.endpoints();
    let failed = scene
        .eventually("UPDATE_FAILED with Resolved=False", || {
            let api = api.clone();
            async move {
                let s = api.get("churn").await.ok()?.status?;
                let update = format!("{:?}", s.state.as_ref()?.config_update);
                let resolved = condition(&s.conditions, "Resolved")?;
                (update == "UPDATE_FAILED" && resolved.0 == "False").then_some(s)
            }
        })
        .await;
    assert_eq!(
        condition(&failed.conditions, "Resolved")
            .map(|c| c.1)
            .as_deref(),
        Some("ResolveFailed")
    );
    assert_eq!(served_versions(&failed), served_versions(&serving));
    assert_eq!(
        format!("{:?}", failed.state.as_ref().map(|s| s.ready)),
        "Some(READY)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn moving_an_alias_rolls_every_endpoint_that_follows_it() {
    let scene = Scene::new("alias", true).await;
    scene
        .apply(model_version("churn-1", "churn", 1, &["champion"]))
        .await;
    scene.apply(model_version("churn-2", "churn", 2, &[])).await;
    for name in ["east", "west"] {
        scene.apply(alias_endpoint(name, "champion")).await;
    }
    let on = |v: i64| {
        move |s: &sluice_crds::ServingEndpointStatus| {
            served_versions(s) == [("main".to_string(), Some(v))]
        }
    };
    let mut first_children = Vec::new();
    for name in ["east", "west"] {
        let s = scene
            .settled(name, &format!("{name} READY on 1"), on(1))
            .await;
        first_children.push(
            s.config
                .and_then(|c| c.served_entities[0].deployment_name.clone()),
        );
    }

    // The alias moves: version 2 takes it, version 1 lets go.
    scene.apply(model_version("churn-1", "churn", 1, &[])).await;
    scene
        .apply(model_version("churn-2", "churn", 2, &["champion"]))
        .await;
    for (name, old_child) in ["east", "west"].into_iter().zip(first_children) {
        let s = scene
            .settled(name, &format!("{name} READY on 2"), on(2))
            .await;
        let entity = &s.config.as_ref().expect("config").served_entities[0];
        assert_eq!(entity.alias.as_deref(), Some("champion"));
        assert_ne!(
            entity.deployment_name, old_child,
            "{name}: a new revision serves"
        );
        // The old revision is pruned once the new one serves.
        let deployments = scene.deployments();
        let endpoint = name.to_string();
        scene
            .eventually(&format!("{name}'s version 1 revision pruned"), || {
                let deployments = deployments.clone();
                let endpoint = endpoint.clone();
                async move {
                    let list = deployments
                        .list(
                            &kube::api::ListParams::default()
                                .labels(&format!("serving.sluice.dev/endpoint={endpoint}")),
                        )
                        .await
                        .ok()?;
                    (list.items.len() == 1).then_some(())
                }
            })
            .await;
    }
}
