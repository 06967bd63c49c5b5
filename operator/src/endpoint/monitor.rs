//! Monitoring: the pure step that renders an endpoint's monitoring CronJob (and a one-off Job
//! when the refresh annotation asks for one), reads the newest finished refresh from its pods'
//! termination messages, and turns the refresh's alerts into the `Drifting` and
//! `QualityDegraded` conditions with their Warning events.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec},
        core::v1::{
            Container, EnvFromSource, Pod, PodSpec, PodTemplateSpec, SecretEnvSource, Volume,
            VolumeMount,
        },
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::ResourceExt;
use sluice_contract::claim::{ClaimUri, LAKE_MOUNT_ROOT};
use sluice_contract::labels::MANAGED_BY;
use sluice_crds::{
    AlertState, MonitoringConfig, MonitoringRefresh, MonitoringStatus, ResolvedCapture,
    ServingEndpoint,
};

use super::desired::{BuildContext, empty_dir, pod_security, restricted, sized};
use super::events::{EventReason, PlanEvent};
use crate::conditions::{Desired, Reason, Status};

/// Label of a monitoring CronJob, its Jobs and their pods: the endpoint's name.
pub const LABEL_MONITOR: &str = "serving.sluice.dev/monitor";
/// Annotation that asks for one refresh now: each new value runs one.
pub const ANNOTATION_REFRESH: &str = "serving.sluice.dev/refresh-monitoring";
/// Condition type: an alert on a drift value fires.
pub const DRIFTING: &str = "Drifting";
/// Condition type: an alert on a quality value fires.
pub const QUALITY_DEGRADED: &str = "QualityDegraded";
/// The schedule when the spec sets none: hourly, off the hour.
pub const DEFAULT_SCHEDULE: &str = "17 * * * *";
/// Memory the monitor's queries hold before they spill, below its container's limit.
const MEMORY_LIMIT_MIB: u32 = 512;
/// Longest one refresh may run.
const DEADLINE_SECONDS: i64 = 3600;
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// The CronJob's name.
pub fn cronjob_name(endpoint: &str) -> String {
    format!("{endpoint}-monitor")
}

/// What the controller does about monitoring.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MonitorPlan {
    /// The CronJob to apply.
    pub cronjob: Option<CronJob>,
    /// A CronJob to delete (monitoring was turned off).
    pub delete: Option<String>,
    /// A one-off refresh to create.
    pub manual: Option<Job>,
    /// `status.monitoring`.
    pub status: Option<MonitoringStatus>,
    /// `Drifting` and `QualityDegraded`, while monitoring is on.
    pub conditions: Vec<Desired>,
    /// Warning events: alerts that began firing, a refresh that failed.
    pub events: Vec<PlanEvent>,
}

fn labels(endpoint: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
        (
            "app.kubernetes.io/name".to_string(),
            "sluice-monitor".to_string(),
        ),
        (LABEL_MONITOR.to_string(), endpoint.to_string()),
    ])
}

/// The refresh container and its volumes: the lake's claim for a `pvc://` table (read-write:
/// the output tables are written beside it), a `/tmp` for staged rows and spilled sorts.
fn container(
    ctx: &BuildContext<'_>,
    capture: &ResolvedCapture,
    monitoring: &MonitoringConfig,
) -> (Container, Vec<Volume>) {
    let mut volumes = vec![empty_dir("tmp")];
    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }];
    let table = match ClaimUri::of(&capture.table_uri) {
        Some(lake) => {
            volumes.push(lake.volume("lake", false));
            mounts.push(lake.mount("lake", LAKE_MOUNT_ROOT, false));
            lake.file_uri()
        }
        None => capture.table_uri.clone(),
    };
    let config = serde_json::to_string(monitoring).unwrap_or_default();
    let mut args: Vec<String> = [
        "monitor",
        "--table",
        &table,
        "--config",
        &config,
        "--work-dir",
        "/tmp",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    // The feedback table sits beside the payload table, on the same claim when it is one.
    let feedback = sluice_contract::resolve::feedback_table(capture);
    let feedback = ClaimUri::of(&feedback).map_or(feedback, |lake| lake.file_uri());
    args.extend(["--feedback-table".into(), feedback]);
    args.extend(["--memory-limit-mib".into(), MEMORY_LIMIT_MIB.to_string()]);
    args.extend(["--summary-file".into(), "/dev/termination-log".into()]);
    for (key, value) in &capture.store_options {
        args.extend(["--table-option".to_string(), format!("{key}={value}")]);
    }
    let container = Container {
        name: "monitor".into(),
        image: Some(ctx.data_plane_image.into()),
        args: Some(args),
        // The lake's credentials, as the capture sidecars get them.
        env_from: capture.secret_name.as_ref().map(|name| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }]
        }),
        volume_mounts: Some(mounts),
        resources: Some(sized("250m", "256Mi", "1Gi")),
        security_context: Some(restricted()),
        // The summary is the termination message; a crash leaves the log's tail instead.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    (container, volumes)
}

fn job_spec(
    ctx: &BuildContext<'_>,
    ep: &ServingEndpoint,
    capture: &ResolvedCapture,
    monitoring: &MonitoringConfig,
) -> JobSpec {
    let (container, volumes) = container(ctx, capture, monitoring);
    let service_account = monitoring.service_account_name.clone().or_else(|| {
        ep.spec
            .served_entities
            .iter()
            .find_map(|e| e.service_account_name.clone())
    });
    JobSpec {
        backoff_limit: Some(1),
        active_deadline_seconds: Some(DEADLINE_SECONDS),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels(ctx.endpoint)),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![container],
                volumes: Some(volumes),
                restart_policy: Some("Never".into()),
                security_context: Some(pod_security()),
                service_account_name: service_account,
                automount_service_account_token: Some(false),
                enable_service_links: Some(false),
                ..Default::default()
            }),
        },
        ..Default::default()
    }
}

/// The endpoint's monitoring CronJob.
pub fn cronjob(
    ctx: &BuildContext<'_>,
    ep: &ServingEndpoint,
    capture: &ResolvedCapture,
    monitoring: &MonitoringConfig,
) -> CronJob {
    CronJob {
        metadata: ObjectMeta {
            name: Some(cronjob_name(ctx.endpoint)),
            namespace: Some(ctx.namespace.into()),
            labels: Some(labels(ctx.endpoint)),
            owner_references: Some(vec![ctx.owner.clone()]),
            ..Default::default()
        },
        spec: CronJobSpec {
            schedule: monitoring
                .schedule
                .clone()
                .unwrap_or_else(|| DEFAULT_SCHEDULE.into()),
            time_zone: Some("Etc/UTC".into()),
            // A refresh reads what the last one wrote: never two at once.
            concurrency_policy: Some("Forbid".into()),
            starting_deadline_seconds: Some(600),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(ctx.endpoint)),
                    ..Default::default()
                }),
                spec: Some(job_spec(ctx, ep, capture, monitoring)),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A one-off refresh asked for with annotation value `request`.
fn manual_job(
    ctx: &BuildContext<'_>,
    ep: &ServingEndpoint,
    capture: &ResolvedCapture,
    monitoring: &MonitoringConfig,
    request: &str,
) -> Job {
    let hash = request.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    Job {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}-{:08x}",
                cronjob_name(ctx.endpoint),
                hash & 0xffff_ffff
            )),
            namespace: Some(ctx.namespace.into()),
            labels: Some(labels(ctx.endpoint)),
            owner_references: Some(vec![ctx.owner.clone()]),
            ..Default::default()
        },
        spec: Some(job_spec(ctx, ep, capture, monitoring)),
        ..Default::default()
    }
}

/// The newest finished refresh among `pods` (of this endpoint's monitor): its Job's name and
/// what its termination message says.
pub fn newest_refresh(pods: &[Pod]) -> Option<(String, MonitoringRefresh)> {
    pods.iter()
        .filter_map(|pod| {
            let state = pod
                .status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .iter()
                .find(|c| c.name == "monitor")?
                .state
                .as_ref()?
                .terminated
                .clone()?;
            let job = pod
                .labels()
                .get(JOB_NAME_LABEL)
                .cloned()
                .unwrap_or_else(|| pod.name_any());
            let message = state.message.unwrap_or_default();
            let mut refresh =
                serde_json::from_str::<MonitoringRefresh>(&message).unwrap_or_else(|_| {
                    MonitoringRefresh {
                        error: Some(if message.is_empty() {
                            format!(
                                "the refresh exited with code {} ({})",
                                state.exit_code,
                                state.reason.clone().unwrap_or_default()
                            )
                        } else {
                            message.clone()
                        }),
                        ..Default::default()
                    }
                });
            if refresh.refreshed_at.is_empty() {
                refresh.refreshed_at = state
                    .finished_at
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default();
            }
            if state.exit_code != 0 && refresh.error.is_none() {
                refresh.error = Some(format!("the refresh exited with code {}", state.exit_code));
            }
            Some((state.finished_at.map(|t| t.0), job, refresh))
        })
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)))
        .map(|(_, job, refresh)| (job, refresh))
}

fn alert_condition(type_: &'static str, alerts: &[&AlertState]) -> Desired {
    let firing: Vec<String> = alerts
        .iter()
        .filter(|a| a.firing)
        .map(|a| {
            let on = a
                .column
                .as_deref()
                .map(|c| format!(" of {c}"))
                .unwrap_or_default();
            let metric = serde_json::to_value(a.metric)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            format!(
                "{metric}{on} is {:.4} in the window of {} (threshold {})",
                a.value, a.window, a.threshold
            )
        })
        .collect();
    if firing.is_empty() {
        Desired {
            type_,
            status: Status::False,
            reason: if type_ == DRIFTING {
                Reason::NoDrift
            } else {
                Reason::QualityHolds
            },
            message: format!("{} alert(s) within their thresholds", alerts.len()),
        }
    } else {
        Desired {
            type_,
            status: Status::True,
            reason: if type_ == DRIFTING {
                Reason::DriftDetected
            } else {
                Reason::QualityBelowThreshold
            },
            message: firing.join("; "),
        }
    }
}

/// What to do about `ep`'s monitoring, given the resolved capture settings and the pods of
/// its refreshes.
pub fn plan(
    ep: &ServingEndpoint,
    ctx: &BuildContext<'_>,
    capture: Option<&ResolvedCapture>,
    pods: &[Pod],
) -> MonitorPlan {
    let previous = ep.status.as_ref().and_then(|s| s.monitoring.clone());
    let (Some(monitoring), Some(capture)) = (ep.spec.monitoring.as_ref(), capture) else {
        // Off (the API server refuses monitoring without capture): remove what was made.
        return MonitorPlan {
            delete: previous.and_then(|p| p.cron_job),
            ..Default::default()
        };
    };
    let mut status = previous.clone().unwrap_or_default();
    status.cron_job = Some(cronjob_name(ctx.endpoint));
    let requested = ep.annotations().get(ANNOTATION_REFRESH).cloned();
    let manual = match &requested {
        Some(request) if status.refresh_requested.as_ref() != Some(request) => {
            status.refresh_requested = Some(request.clone());
            Some(manual_job(ctx, ep, capture, monitoring, request))
        }
        _ => None,
    };
    let mut events = Vec::new();
    if let Some((job, refresh)) = newest_refresh(pods) {
        let new = status.last_job.as_ref() != Some(&job)
            || status.last_refresh.as_ref() != Some(&refresh);
        if new && let Some(error) = &refresh.error {
            events.push(PlanEvent::new(
                EventReason::MonitoringFailed,
                format!("refresh {job} failed: {error}"),
            ));
        }
        status.last_job = Some(job);
        status.last_refresh = Some(refresh);
    }
    let alerts: Vec<&AlertState> = status
        .last_refresh
        .iter()
        .flat_map(|r| r.alerts.iter())
        .collect();
    let previous_conditions = ep
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let mut conditions = Vec::new();
    for type_ in [DRIFTING, QUALITY_DEGRADED] {
        let mine: Vec<&AlertState> = alerts
            .iter()
            .copied()
            .filter(|a| a.metric.condition() == type_)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let condition = alert_condition(type_, &mine);
        let was_true = previous_conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True");
        if condition.status == Status::True && !was_true {
            let reason = if type_ == DRIFTING {
                EventReason::DriftDetected
            } else {
                EventReason::QualityDegraded
            };
            events.push(PlanEvent::new(reason, condition.message.clone()));
        }
        conditions.push(condition);
    }
    MonitorPlan {
        cronjob: Some(cronjob(ctx, ep, capture, monitoring)),
        delete: None,
        manual,
        status: Some(status),
        conditions,
        events,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;
    use sluice_crds::{AlertMetric, ServingEndpointStatus};

    use super::*;

    fn capture(table_uri: &str) -> ResolvedCapture {
        ResolvedCapture {
            table_uri: table_uri.into(),
            sampling_fraction: 1.0,
            secret_name: Some("lake-keys".into()),
            store_options: BTreeMap::from([(
                "aws_endpoint".to_string(),
                "http://minio:9000".to_string(),
            )]),
            ..Default::default()
        }
    }

    fn ctx() -> BuildContext<'static> {
        crate::endpoint::desired::tests::ctx(None)
    }

    fn endpoint(
        monitoring: serde_json::Value,
        annotations: serde_json::Value,
        status: Option<ServingEndpointStatus>,
    ) -> ServingEndpoint {
        let mut ep: ServingEndpoint = serde_json::from_value(json!({
            "apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ServingEndpoint",
            "metadata": {"name": "fraud", "namespace": "ns", "uid": "u1", "annotations": annotations},
            "spec": {
                "servedEntities": [{"name": "a", "entityName": "fraud", "entityVersion": "1", "serviceAccountName": "fraud-sa"}],
                "autoCapture": {"enabled": true, "uri": "pvc://lake/fraud"},
                "monitoring": monitoring,
            }
        }))
        .expect("endpoint");
        ep.status = status;
        ep
    }

    fn pod(name: &str, job: &str, finished: &str, exit_code: i32, message: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {LABEL_MONITOR: "fraud", JOB_NAME_LABEL: job}},
            "status": {"containerStatuses": [{
                "name": "monitor", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code, "finishedAt": finished, "message": message}}
            }]}
        }))
        .expect("pod")
    }

    #[test]
    fn the_cronjob_reads_the_table_as_the_capture_sidecars_do() {
        let ep = endpoint(
            json!({"schedule": "*/5 * * * *", "features": [{"name": "amount"}]}),
            json!({}),
            None,
        );
        let plan = plan(
            &ep,
            &ctx(),
            Some(&capture("pvc://lake/fraud/fraud_payload")),
            &[],
        );
        let cronjob = plan.cronjob.expect("a CronJob");
        assert_eq!(cronjob.metadata.name.as_deref(), Some("fraud-monitor"));
        assert_eq!(cronjob.spec.schedule, "*/5 * * * *");
        assert_eq!(cronjob.spec.concurrency_policy.as_deref(), Some("Forbid"));
        let pod = cronjob
            .spec
            .job_template
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("fraud-sa"));
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let container = &pod.containers[0];
        let args = container.args.clone().unwrap().join(" ");
        assert!(
            args.starts_with(
                "monitor --table file:///mnt/lake/lake/fraud/fraud_payload --config {"
            ),
            "{args}"
        );
        assert!(
            args.contains("--summary-file /dev/termination-log"),
            "{args}"
        );
        assert!(
            args.contains("--table-option aws_endpoint=http://minio:9000"),
            "{args}"
        );
        // The config without the fields the API server defaulted: exactly the spec's section.
        assert!(
            args.contains(r#"--config {"schedule":"*/5 * * * *","features":[{"name":"amount"}]}"#),
            "{args}"
        );
        let security = container.security_context.clone().unwrap();
        assert_eq!(
            (security.run_as_non_root, security.read_only_root_filesystem),
            (Some(true), Some(true))
        );
        assert_eq!(
            container.env_from.as_ref().unwrap()[0]
                .secret_ref
                .as_ref()
                .unwrap()
                .name,
            "lake-keys"
        );
        let claims: Vec<String> = pod
            .volumes
            .unwrap()
            .iter()
            .filter_map(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .map(|c| c.claim_name.clone())
            })
            .collect();
        assert_eq!(claims, ["lake"]);
        assert!(plan.manual.is_none() && plan.delete.is_none());
        assert_eq!(
            plan.status.unwrap().cron_job.as_deref(),
            Some("fraud-monitor")
        );
    }

    #[test]
    fn a_new_annotation_value_runs_one_refresh() {
        let ep = endpoint(
            json!({"features": [{"name": "amount"}]}),
            json!({ANNOTATION_REFRESH: "now-1"}),
            None,
        );
        let first = plan(&ep, &ctx(), Some(&capture("s3://lake/t")), &[]);
        let job = first.manual.expect("a Job");
        assert!(job.metadata.name.unwrap().starts_with("fraud-monitor-"));
        let status = first.status.unwrap();
        assert_eq!(status.refresh_requested.as_deref(), Some("now-1"));
        // Once acted on, the same value asks for nothing more.
        let ep = endpoint(
            json!({"features": [{"name": "amount"}]}),
            json!({ANNOTATION_REFRESH: "now-1"}),
            Some(ServingEndpointStatus {
                monitoring: Some(status),
                ..Default::default()
            }),
        );
        assert!(
            plan(&ep, &ctx(), Some(&capture("s3://lake/t")), &[])
                .manual
                .is_none()
        );
    }

    #[test]
    fn turning_monitoring_off_deletes_the_cronjob() {
        let mut ep = endpoint(json!({"features": [{"name": "amount"}]}), json!({}), None);
        ep.spec.monitoring = None;
        assert_eq!(
            plan(&ep, &ctx(), Some(&capture("s3://lake/t")), &[]),
            MonitorPlan::default()
        );
        ep.status = Some(ServingEndpointStatus {
            monitoring: Some(MonitoringStatus {
                cron_job: Some("fraud-monitor".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let plan = plan(&ep, &ctx(), Some(&capture("s3://lake/t")), &[]);
        assert_eq!(plan.delete.as_deref(), Some("fraud-monitor"));
        assert!(plan.status.is_none() && plan.cronjob.is_none());
    }

    #[test]
    fn the_newest_refresh_sets_status_conditions_and_events() {
        let refresh = |firing: bool| {
            serde_json::to_string(&MonitoringRefresh {
                refreshed_at: "2026-12-06T10:17:00Z".into(),
                rows_read: 480,
                alerts: vec![AlertState {
                    metric: AlertMetric::JsDistance,
                    column: Some("merchant".into()),
                    window: "2026-12-06T09:00:00Z".into(),
                    value: if firing { 0.41 } else { 0.05 },
                    threshold: 0.2,
                    firing,
                }],
                ..Default::default()
            })
            .unwrap()
        };
        let pods = [
            pod(
                "a",
                "fraud-monitor-1",
                "2026-12-06T09:17:00Z",
                0,
                &refresh(false),
            ),
            pod(
                "b",
                "fraud-monitor-2",
                "2026-12-06T10:17:00Z",
                0,
                &refresh(true),
            ),
        ];
        let ep = endpoint(json!({"features": [{"name": "merchant"}]}), json!({}), None);
        let plan = plan(&ep, &ctx(), Some(&capture("s3://lake/t")), &pods);
        let status = plan.status.unwrap();
        assert_eq!(status.last_job.as_deref(), Some("fraud-monitor-2"));
        assert_eq!(status.last_refresh.unwrap().rows_read, 480);
        assert_eq!(plan.conditions.len(), 1);
        let drifting = &plan.conditions[0];
        assert_eq!(
            (drifting.type_, drifting.status, drifting.reason),
            (DRIFTING, Status::True, Reason::DriftDetected)
        );
        assert!(
            drifting
                .message
                .contains("jsDistance of merchant is 0.4100"),
            "{}",
            drifting.message
        );
        assert_eq!(plan.events.len(), 1);
        assert!(plan.events[0].reason.is_warning());
    }

    #[test]
    fn a_failed_refresh_is_reported_with_its_log() {
        let pods = [pod(
            "a",
            "fraud-monitor-1",
            "2026-12-06T09:17:00Z",
            1,
            "inference-server: table schema: no `request` column",
        )];
        let (job, refresh) = newest_refresh(&pods).expect("a refresh");
        assert_eq!(job, "fraud-monitor-1");
        assert_eq!(
            refresh.error.as_deref(),
            Some("inference-server: table schema: no `request` column")
        );
        let ep = endpoint(json!({"features": [{"name": "amount"}]}), json!({}), None);
        let plan = plan(&ep, &ctx(), Some(&capture("s3://lake/t")), &pods);
        assert_eq!(plan.events[0].reason, EventReason::MonitoringFailed);
        // No alerts yet: no conditions.
        assert!(plan.conditions.is_empty());
    }
}
