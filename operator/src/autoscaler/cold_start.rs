//! One cold start followed from the first held request to the first byte answered, split into
//! its phases. Pure: the caller feeds it what it observed and when.
//!
//! | phase        | from                                   | to                                  |
//! |--------------|----------------------------------------|-------------------------------------|
//! | `detect`     | the first request held at a gateway    | the autoscaler decides to wake      |
//! | `scale`      | the decision                           | `spec.replicas` written             |
//! | `schedule`   | replicas written                       | a new pod bound to a node           |
//! | `start`      | pod bound                              | its containers running              |
//! | `model_load` | containers running                     | the model answers: the pod Ready, or the first byte if that came first |
//! | `first_byte` | pod Ready                              | a held request's first byte answered|
//!
//! Gateways probe a waking entity's running pods themselves and route to the first that
//! answers, so the first byte often comes before the kubelet's Ready: then `model_load` ends
//! at the first byte and `first_byte` is zero.
//!
//! Gateways report ages ("held for 120 ms", "answered 40 ms ago"), not wall times, so the
//! phases need no clock agreement between machines; pod stages are stamped when the
//! autoscaler's watch sees them.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

/// A phase of a cold start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// First held request → wake decision.
    Detect,
    /// Decision → replicas written.
    Scale,
    /// Replicas written → pod bound to a node.
    Schedule,
    /// Pod bound → containers running.
    Start,
    /// Containers running → pod Ready.
    ModelLoad,
    /// Pod Ready → first byte of a held request.
    FirstByte,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Self; 6] = [
        Self::Detect,
        Self::Scale,
        Self::Schedule,
        Self::Start,
        Self::ModelLoad,
        Self::FirstByte,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Detect => "detect",
            Self::Scale => "scale",
            Self::Schedule => "schedule",
            Self::Start => "start",
            Self::ModelLoad => "model_load",
            Self::FirstByte => "first_byte",
        }
    }
}

/// How far a pod has come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodProgress {
    /// Bound to a node.
    pub scheduled: bool,
    /// Every container running (or, for init containers, done).
    pub started: bool,
    /// Ready.
    pub ready: bool,
}

impl PodProgress {
    /// What `pod` shows; a terminating pod counts as nothing (it is on its way out).
    pub fn of(pod: &Pod) -> Self {
        if pod.metadata.deletion_timestamp.is_some() {
            return Self::default();
        }
        let scheduled = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
        let status = pod.status.as_ref();
        let containers = status.and_then(|s| s.container_statuses.as_ref());
        let started = containers.is_some_and(|list| {
            !list.is_empty()
                && list
                    .iter()
                    .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        });
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        Self {
            scheduled,
            started: started || ready,
            ready,
        }
    }
}

/// A cold start being followed.
#[derive(Clone, Debug)]
pub struct ColdStart {
    marks: [Option<Instant>; 7],
}

/// A cold start older than this is given up (the pod never became ready, or no request waited
/// for it): it is dropped, not recorded.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(600);

impl ColdStart {
    /// A wake decided at `decided`, the oldest request then held for `held_for`.
    pub fn new(decided: Instant, held_for: Duration) -> Self {
        let first_held = decided.checked_sub(held_for).unwrap_or(decided);
        let mut marks = [None; 7];
        marks[0] = Some(first_held);
        marks[1] = Some(decided);
        Self { marks }
    }

    /// Replicas were written at `at`.
    pub fn scaled(&mut self, at: Instant) {
        self.mark(2, at);
    }

    /// A pod of the entity showed `progress` at `at`. A stage seen for the first time also
    /// closes the stages before it that were never seen apart (a watch can skip states).
    pub fn pod(&mut self, progress: PodProgress, at: Instant) {
        if self.marks[2].is_none() {
            return; // pods from before the replicas were written are not this cold start's
        }
        let reached = [progress.scheduled, progress.started, progress.ready];
        for (stage, seen) in reached.iter().enumerate().rev() {
            if *seen {
                for earlier in 3..=3 + stage {
                    self.mark(earlier, at);
                }
                break;
            }
        }
    }

    /// A held request got its first byte at `at`; only answers after the wake decision count
    /// (an older one belongs to an earlier cold start).
    pub fn answered(&mut self, at: Instant) {
        if self.marks[1].is_some_and(|decided| at >= decided) && self.marks[6].is_none() {
            self.marks[6] = Some(at);
        }
    }

    /// Whether it started more than [`GIVE_UP_AFTER`] before `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.marks[0].is_some_and(|t| now.duration_since(t) > GIVE_UP_AFTER)
    }

    /// Every phase and the total, once the first byte and the pod's start were seen.
    pub fn phases(&self) -> Option<([(Phase, Duration); 6], Duration)> {
        let first_byte = self.marks[6]?;
        let mut marks = self.marks;
        marks[5] = Some(marks[5].map_or(first_byte, |ready| ready.min(first_byte)));
        let marks: Vec<Instant> = marks.iter().copied().collect::<Option<_>>()?;
        let mut phases = Phase::ALL.map(|p| (p, Duration::ZERO));
        for (i, phase) in phases.iter_mut().enumerate() {
            phase.1 = marks[i + 1].saturating_duration_since(marks[i]);
        }
        Some((phases, marks[6].saturating_duration_since(marks[0])))
    }

    fn mark(&mut self, index: usize, at: Instant) {
        let floor = self.marks[..index].iter().flatten().max().copied();
        let slot = &mut self.marks[index];
        if slot.is_none() {
            *slot = Some(floor.map_or(at, |f| at.max(f)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn phases_follow_the_observations_in_order() {
        let t0 = Instant::now();
        let mut c = ColdStart::new(t0 + ms(100), ms(100));
        c.pod(
            PodProgress {
                scheduled: true,
                ..Default::default()
            },
            t0 + ms(150),
        ); // before the write: ignored
        c.scaled(t0 + ms(130));
        c.pod(
            PodProgress {
                scheduled: true,
                ..Default::default()
            },
            t0 + ms(160),
        );
        c.pod(
            PodProgress {
                scheduled: true,
                started: true,
                ready: false,
            },
            t0 + ms(400),
        );
        assert!(c.phases().is_none(), "not answered yet");
        c.pod(
            PodProgress {
                scheduled: true,
                started: true,
                ready: true,
            },
            t0 + ms(1400),
        );
        c.answered(t0 + ms(1450));
        c.answered(t0 + ms(5000)); // later answers change nothing
        let (phases, total) = c.phases().expect("complete");
        let got: Vec<(&str, u128)> = phases
            .iter()
            .map(|(p, d)| (p.as_str(), d.as_millis()))
            .collect();
        assert_eq!(
            got,
            [
                ("detect", 100),
                ("scale", 30),
                ("schedule", 30),
                ("start", 240),
                ("model_load", 1000),
                ("first_byte", 50)
            ]
        );
        assert_eq!(total, ms(1450));
    }

    #[test]
    fn a_pod_first_seen_ready_closes_the_stages_it_skipped() {
        let t0 = Instant::now();
        let mut c = ColdStart::new(t0, Duration::ZERO);
        c.scaled(t0 + ms(10));
        c.pod(
            PodProgress {
                scheduled: true,
                started: true,
                ready: true,
            },
            t0 + ms(700),
        );
        c.answered(t0 + ms(720));
        let (phases, total) = c.phases().expect("complete");
        assert_eq!(phases[2].1, ms(690));
        assert_eq!(phases[5].1, ms(20));
        assert_eq!(phases[3].1, Duration::ZERO);
        assert_eq!(phases[4].1, Duration::ZERO);
        assert_eq!(total, ms(720));
        assert!(!c.expired(t0 + ms(1000)));
        assert!(c.expired(t0 + GIVE_UP_AFTER + ms(1)));
    }

    #[test]
    fn a_first_byte_before_ready_ends_the_model_load() {
        let t0 = Instant::now();
        let mut c = ColdStart::new(t0 + ms(5), ms(5));
        c.answered(t0); // before the wake: an earlier cold start's
        c.scaled(t0 + ms(20));
        let running = PodProgress {
            scheduled: true,
            started: true,
            ready: false,
        };
        c.pod(running, t0 + ms(300));
        c.answered(t0 + ms(420)); // the gateway's own probe found the model answering
        let (phases, total) = c.phases().expect("complete without Ready");
        assert_eq!(phases[4], (Phase::ModelLoad, ms(120)));
        assert_eq!(phases[5], (Phase::FirstByte, Duration::ZERO));
        assert_eq!(total, ms(420));
    }

    #[test]
    fn terminating_pods_show_no_progress() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "n", "containers": []},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .expect("pod");
        assert_eq!(PodProgress::of(&pod), PodProgress::default());
        let mut live = pod.clone();
        live.metadata.deletion_timestamp = None;
        assert!(PodProgress::of(&live).ready);
    }
}
