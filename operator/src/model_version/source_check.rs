//! The source check: before any endpoint's pod fetches a version's artifact, a Job in the
//! version's namespace runs `inference-server fetch --check` with the version's Secret — the
//! same image, security context, volumes and network as the fetch step of an entity pod, so a
//! wrong key, a missing object or an unreachable store shows on the ModelVersion (condition
//! `SourceReachable`) instead of in a crash-looping pod. The operator never reads the
//! Secret's contents.
//!
//! Pure parts here: the Job to run ([`job`]) and what its state says ([`verdict`]). A check
//! that fails makes the version `Ready=False` (endpoints keep serving what they served); one
//! that has not finished says `Unknown` and holds nothing up. A failed check is run again
//! after [`RECHECK_AFTER`], and at once when the Secret changes (its `resourceVersion` is part
//! of the Job's name).

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{Pod, PodSpec, PodTemplateSpec, ResourceRequirements},
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use kube::{Resource, ResourceExt};
use sluice_crds::ModelVersion;

use crate::endpoint::desired::{MANAGED_BY, empty_dir, fetch_step, pod_security};

/// Condition type: the source check's verdict.
pub const SOURCE_REACHABLE: &str = "SourceReachable";
/// Label on a check Job and its pod: the ModelVersion it checks.
pub const LABEL_MODEL_VERSION: &str = "serving.sluice.dev/modelversion";
/// A failed check is run again after this long.
pub const RECHECK_AFTER: Duration = Duration::from_secs(60);
/// A check that has not finished by then is given up (`Unknown`, holding nothing up).
const CHECK_DEADLINE_SECONDS: i64 = 600;

/// What the check says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not run yet, or running.
    Checking,
    /// The source exists and is readable: what was found.
    Reachable(String),
    /// The check failed: its error.
    Unreachable(String),
    /// The check could not say (it did not finish in time).
    Unknown(String),
    /// The check cannot start: the Secret its pod takes variables from does not exist (the
    /// kubelet's `CreateContainerConfigError` message). It starts once the Secret exists.
    SecretMissing(String),
}

/// The Job's name: the version's, and a hash of what the check depends on (the URI, the
/// Secret's name and the tracking server). The operator never reads Secrets, not even their metadata, so a Secret
/// changed under the same name is picked up by the next run of a failed check
/// ([`RECHECK_AFTER`]); a check waiting for a missing Secret runs once the Secret exists.
pub fn job_name(mv: &ModelVersion) -> String {
    let mut key = format!(
        "{}|{:?}",
        mv.spec.source.uri,
        mv.spec.source.secret_ref.as_ref().map(|s| &s.name),
    );
    // Only when set: the names of existing checks stay as they were.
    if let Some(tracking) = &mv.spec.source.tracking_uri {
        key.push('|');
        key.push_str(tracking);
    }
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let base: String = mv.name_any().chars().take(46).collect();
    format!(
        "{}-source-{:06x}",
        base.trim_end_matches('-'),
        hash & 0xff_ffff
    )
}

/// The check Job for `mv`, named `name`, running `image`.
pub fn job(mv: &ModelVersion, name: &str, image: &str) -> Option<Job> {
    let owner = mv.controller_owner_ref(&())?;
    let labels = BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
        (
            "app.kubernetes.io/name".to_string(),
            "sluice-source-check".to_string(),
        ),
        (LABEL_MODEL_VERSION.to_string(), mv.name_any()),
    ]);
    let secret = mv.spec.source.secret_ref.as_ref().map(|s| s.name.as_str());
    let (mut check, source_volumes) = fetch_step(
        image,
        &mv.spec.source.uri,
        secret,
        None,
        mv.spec.source.tracking_uri.as_deref(),
    );
    check.name = "check".into();
    if let Some(args) = check.args.as_mut() {
        args.push("--check".into());
    }
    // A check downloads nothing: it needs little.
    let small = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])
    };
    check.resources = Some(ResourceRequirements {
        requests: Some(small("10m", "32Mi")),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("256Mi".into()),
        )])),
        ..Default::default()
    });
    let mut volumes = vec![empty_dir("models")];
    volumes.extend(source_volumes);
    Some(Job {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: mv.namespace(),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(CHECK_DEADLINE_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![check],
                    volumes: Some(volumes),
                    restart_policy: Some("Never".into()),
                    security_context: Some(pod_security()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// What `job` (and its pods) say.
pub fn verdict(job: Option<&Job>, pods: &[Pod]) -> Verdict {
    let Some(job) = job else {
        return Verdict::Checking;
    };
    let condition = |type_: &str| {
        job.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == type_ && c.status == "True"))
    };
    let message = pods.iter().find_map(|p| {
        p.status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .iter()
            .find_map(|c| {
                let t = c.state.as_ref()?.terminated.as_ref()?;
                Some((t.exit_code, t.message.clone().unwrap_or_default()))
            })
    });
    let last_line = |text: &str| {
        text.lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or_default()
            .to_string()
    };
    let blocked = pods.iter().find_map(|p| {
        p.status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .iter()
            .find_map(|c| {
                let w = c.state.as_ref()?.waiting.as_ref()?;
                let message = w.message.clone().unwrap_or_default();
                (w.reason.as_deref() == Some("CreateContainerConfigError")
                    && message.contains("secret"))
                .then_some(message)
            })
    });
    if condition("Complete").is_some() {
        let found = message.map(|(_, m)| last_line(&m)).unwrap_or_default();
        return Verdict::Reachable(found);
    }
    if let Some(failed) = condition("Failed") {
        return match message {
            Some((code, text)) if code != 0 => Verdict::Unreachable(last_line(&text)),
            _ => Verdict::Unknown(format!(
                "the source check did not finish: {}",
                failed
                    .message
                    .clone()
                    .or_else(|| failed.reason.clone())
                    .unwrap_or_default()
            )),
        };
    }
    match blocked {
        Some(message) => Verdict::SecretMissing(message),
        None => Verdict::Checking,
    }
}

/// When a finished check may be replaced: a failed one after [`RECHECK_AFTER`].
pub fn stale(job: &Job, verdict: &Verdict, now: k8s_openapi::jiff::Timestamp) -> bool {
    let finished = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Failed" && c.status == "True"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
    matches!(verdict, Verdict::Unreachable(_) | Verdict::Unknown(_))
        && finished
            .is_some_and(|at| now.duration_since(at).as_secs() >= RECHECK_AFTER.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn mv(uri: &str) -> ModelVersion {
        let mut mv = sluice_contract::fixtures::checked_version("fraud", 3, &[], true);
        mv.spec.source.uri = uri.into();
        mv.metadata.uid = Some("u1".into());
        mv
    }

    #[test]
    fn the_check_is_the_fetch_step_with_check_and_the_versions_secret() {
        let mut version = mv("pvc://models/fraud/3");
        version.spec.source.secret_ref = Some(sluice_crds::common::SecretRef {
            name: "store".into(),
        });
        let name = job_name(&version);
        assert!(name.starts_with(&format!("{}-source-", version.name_any())));
        let mut other = version.clone();
        other.spec.source.secret_ref = Some(sluice_crds::common::SecretRef {
            name: "other-store".into(),
        });
        assert_ne!(name, job_name(&other), "another Secret, another check");
        let mut tracked = version.clone();
        tracked.spec.source.uri = "models:/fraud@champion".into();
        tracked.spec.source.tracking_uri = Some("http://127.0.0.1:5000".into());
        let tracked_job = job(&tracked, &job_name(&tracked), "img@sha256:1").expect("job");
        let tracked_pod = tracked_job.spec.expect("spec").template.spec.expect("pod");
        assert!(
            tracked_pod.containers[0]
                .args
                .as_ref()
                .expect("args")
                .join(" ")
                .ends_with("--mlflow-tracking-uri http://127.0.0.1:5000 --check"),
            "the check resolves through the version's tracking server"
        );
        let job = job(&version, &name, "img@sha256:1").expect("job");
        let pod = job.spec.expect("spec").template.spec.expect("pod");
        let check = &pod.containers[0];
        let args = check.args.as_ref().expect("args").join(" ");
        assert_eq!(
            args,
            "fetch --uri pvc://models/fraud/3 --dest /models --pvc-root /mnt/pvc --check"
        );
        assert_eq!(
            check.env_from.as_ref().expect("env")[0]
                .secret_ref
                .as_ref()
                .map(|s| s.name.as_str()),
            Some("store")
        );
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let volumes: Vec<_> = pod
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["models", "source"]);
    }

    fn job_with(condition: &str) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "j"}, "status": {"conditions": [
            {"type": condition, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z",
             "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]}}))
        .expect("job")
    }

    fn ended(code: i32, message: &str) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p"}, "status": {"containerStatuses": [
            {"name": "check", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": code, "message": message}}}]}}),
        )
        .expect("pod")
    }

    #[test]
    fn verdicts_follow_the_job_and_its_termination_message() {
        assert_eq!(verdict(None, &[]), Verdict::Checking);
        assert_eq!(
            verdict(
                Some(&job_with("Complete")),
                &[ended(0, "s3://m/x: readable, 2 objects, 1.0 KiB")]
            ),
            Verdict::Reachable("s3://m/x: readable, 2 objects, 1.0 KiB".into())
        );
        let failed = verdict(
            Some(&job_with("Failed")),
            &[ended(1, "log line\nfetching s3://m/x: access denied\n")],
        );
        assert_eq!(
            failed,
            Verdict::Unreachable("fetching s3://m/x: access denied".into())
        );
        let timed_out = verdict(Some(&job_with("Failed")), &[]);
        assert!(matches!(timed_out, Verdict::Unknown(ref m) if m.contains("deadline")));
        let later = "2026-01-01T00:01:01Z".parse().expect("time");
        assert!(stale(&job_with("Failed"), &failed, later));
        let soon = "2026-01-01T00:00:30Z".parse().expect("time");
        assert!(!stale(&job_with("Failed"), &failed, soon));
    }
}
