//! Startup, readiness and liveness probes as the kubelet runs them: httpGet, tcpSocket and gRPC
//! (as a TCP connect) against the pod's own address, exec inside the running container
//! (`podman exec`); with initial delays, periods, timeouts and success/failure thresholds.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::process::{self, Launch};

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `startupProbe`: holds the other two back until it passes.
    Startup,
    /// `readinessProbe`: drives `ready`.
    Readiness,
    /// `livenessProbe`: restarts the container when it fails.
    Liveness,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Startup, Kind::Readiness, Kind::Liveness];

    fn index(self) -> usize {
        self as usize
    }

    fn of(self, container: &Container) -> Option<&Probe> {
        match self {
            Kind::Startup => container.startup_probe.as_ref(),
            Kind::Readiness => container.readiness_probe.as_ref(),
            Kind::Liveness => container.liveness_probe.as_ref(),
        }
    }
}

/// What a probe result asks of the worker.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Keep,
    /// Restart the container: its liveness or startup probe failed too often.
    Restart(Kind),
}

fn seconds(value: Option<i32>, default: i32, min: i32) -> Duration {
    Duration::from_secs(u64::try_from(value.unwrap_or(default).max(min)).unwrap_or(1))
}

/// Probe state of one container run (reset when the container restarts).
#[derive(Debug)]
pub struct ProbeTracker {
    started: bool,
    ready: bool,
    successes: [i32; 3],
    failures: [i32; 3],
    next: [Option<Instant>; 3],
}

impl ProbeTracker {
    /// A container that started at `now`: each probe first runs after its initial delay.
    pub fn new(container: &Container, now: Instant) -> Self {
        let next = Kind::ALL.map(|kind| {
            kind.of(container)
                .map(|p| now + seconds(p.initial_delay_seconds, 0, 0))
        });
        Self {
            started: container.startup_probe.is_none(),
            ready: false,
            successes: [0; 3],
            failures: [0; 3],
            next,
        }
    }

    /// Passed its startup probe (or has none).
    pub fn started(&self) -> bool {
        self.started
    }

    /// Ready: started, and passing its readiness probe (or has none).
    pub fn ready(&self, container: &Container) -> bool {
        self.started && (container.readiness_probe.is_none() || self.ready)
    }

    /// The probes due at `now`.
    pub fn due(&self, container: &Container, now: Instant) -> Vec<(Kind, Probe)> {
        Kind::ALL
            .into_iter()
            .filter(|kind| (*kind == Kind::Startup) != self.started)
            .filter(|kind| self.next[kind.index()].is_some_and(|t| t <= now))
            .filter_map(|kind| Some((kind, kind.of(container)?.clone())))
            .collect()
    }

    /// Records one result at `now` and schedules the next run.
    pub fn record(&mut self, kind: Kind, probe: &Probe, ok: bool, now: Instant) -> Verdict {
        let i = kind.index();
        self.next[i] = Some(now + seconds(probe.period_seconds, 10, 1));
        if ok {
            self.successes[i] += 1;
            self.failures[i] = 0;
        } else {
            self.failures[i] += 1;
            self.successes[i] = 0;
        }
        let failed = self.failures[i] >= probe.failure_threshold.unwrap_or(3).max(1);
        match kind {
            Kind::Startup if ok => {
                self.started = true;
                Verdict::Keep
            }
            Kind::Readiness => {
                if self.successes[i] >= probe.success_threshold.unwrap_or(1).max(1) {
                    self.ready = true;
                } else if failed {
                    self.ready = false;
                }
                Verdict::Keep
            }
            Kind::Startup | Kind::Liveness if failed => Verdict::Restart(kind),
            Kind::Startup | Kind::Liveness => Verdict::Keep,
        }
    }
}

/// Resolves a probe port (number or container port name).
fn port(container: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// One HTTP GET; true on a status of 200–399.
async fn http_get(host: &str, port: u16, path: &str, headers: &[(String, String)]) -> Option<bool> {
    let mut stream = TcpStream::connect((host, port)).await.ok()?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((200..400).contains(&code))
}

/// Runs `probe` once against the container at `ip`; true on success. `exec` runs the command
/// inside the running container `exec_launch` started (`podman exec`).
pub async fn check(
    probe: &Probe,
    container: &Container,
    ip: &str,
    exec_launch: Option<&Launch>,
) -> bool {
    let timeout = seconds(probe.timeout_seconds, 1, 1);
    let attempt = async {
        if let Some(h) = &probe.http_get {
            let port = port(container, &h.port)?;
            let host = h
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| ip.into());
            let path = h
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into());
            let headers: Vec<(String, String)> = h
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect();
            http_get(&host, port, &path, &headers).await
        } else if let Some(t) = &probe.tcp_socket {
            let port = port(container, &t.port)?;
            let host = t
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| ip.into());
            Some(TcpStream::connect((host.as_str(), port)).await.is_ok())
        } else if let Some(g) = &probe.grpc {
            let port = u16::try_from(g.port).ok()?;
            Some(TcpStream::connect((ip, port)).await.is_ok())
        } else if let Some(e) = &probe.exec {
            let command = e.command.clone().unwrap_or_default();
            if command.is_empty() {
                return Some(false);
            }
            Some(process::exec(&exec_launch?.name, &command, timeout).await == Some(0))
        } else {
            Some(false)
        }
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::HTTPGetAction;

    use super::*;

    fn http_probe(failure_threshold: i32) -> Probe {
        Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::Int(8080),
                ..Default::default()
            }),
            failure_threshold: Some(failure_threshold),
            period_seconds: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn startup_holds_back_readiness_and_liveness() {
        let container = Container {
            startup_probe: Some(http_probe(2)),
            readiness_probe: Some(http_probe(3)),
            liveness_probe: Some(http_probe(1)),
            ..Default::default()
        };
        let now = Instant::now();
        let mut t = ProbeTracker::new(&container, now);
        let due: Vec<Kind> = t.due(&container, now).into_iter().map(|d| d.0).collect();
        assert_eq!(due, [Kind::Startup]);
        let startup = http_probe(2);
        assert_eq!(t.record(Kind::Startup, &startup, false, now), Verdict::Keep);
        assert_eq!(
            t.record(Kind::Startup, &startup, false, now),
            Verdict::Restart(Kind::Startup)
        );
        let mut t = ProbeTracker::new(&container, now);
        t.record(Kind::Startup, &startup, true, now);
        assert!(t.started() && !t.ready(&container));
        let later = now + Duration::from_secs(2);
        let due: Vec<Kind> = t.due(&container, later).into_iter().map(|d| d.0).collect();
        assert_eq!(due, [Kind::Readiness, Kind::Liveness]);
        t.record(Kind::Readiness, &http_probe(3), true, later);
        assert!(t.ready(&container));
        assert_eq!(
            t.record(Kind::Liveness, &http_probe(1), false, later),
            Verdict::Restart(Kind::Liveness)
        );
    }

    #[test]
    fn readiness_needs_consecutive_failures_to_drop() {
        let container = Container {
            readiness_probe: Some(http_probe(2)),
            ..Default::default()
        };
        let probe = http_probe(2);
        let now = Instant::now();
        let mut t = ProbeTracker::new(&container, now);
        t.record(Kind::Readiness, &probe, true, now);
        t.record(Kind::Readiness, &probe, false, now);
        assert!(t.ready(&container));
        t.record(Kind::Readiness, &probe, false, now);
        assert!(!t.ready(&container));
    }

    #[test]
    fn without_probes_a_started_container_is_ready() {
        let container = Container::default();
        let t = ProbeTracker::new(&container, Instant::now());
        assert!(t.ready(&container));
        assert!(t.due(&container, Instant::now()).is_empty());
    }
}
