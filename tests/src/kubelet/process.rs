//! Containers as real OCI containers: each container of a pod runs with podman and runc from
//! its image (pulled from the registry it names), the pod's command and args, environment,
//! volumes as bind mounts and its security context as podman flags:
//!
//! ```text
//! podman --runtime /usr/sbin/runc run --replace --name k8s_<container>_<pod>_<ns>_<uid> \
//!     --network host --pidfile … --mount type=bind,… --env … <security flags> \
//!     [--entrypoint '[…]'] <image> <args…>
//! ```
//!
//! The `podman run` process stays in the foreground as the container's handle: its stdout and
//! stderr are the container's log, its exit code the container's. Signals go to the container
//! itself through `podman kill`, so a container whose podman process died (a killed test) is
//! still reachable by name. Every container carries the label [`OWNER_LABEL`] with the pid of
//! the test process that started it, so a later kubelet removes what a killed one left.

use std::{
    collections::BTreeMap,
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use nix::sys::signal::Signal;
use std::os::unix::{fs::PermissionsExt, process::CommandExt};

use tokio::process::{Child, Command};

use super::{KubeletError, env::Env, io_err};

/// The label every container of a test kubelet carries: the pid of the test process.
pub const OWNER_LABEL: &str = "dev.sluice.test-kubelet-pid";

/// `podman` with the runtime this machine needs (crun cannot use its hybrid cgroups).
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "/usr/sbin/runc"]);
    cmd
}

fn podman_blocking() -> std::process::Command {
    let mut cmd = std::process::Command::new("podman");
    cmd.args(["--runtime", "/usr/sbin/runc"]);
    cmd
}

/// A bind mount into a container.
#[derive(Clone, Debug)]
pub struct Mount {
    /// Folder or file on the host.
    pub host: PathBuf,
    /// Where the container sees it.
    pub path: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Everything needed to start one container.
#[derive(Clone, Debug)]
pub struct Launch {
    /// `namespace/pod/container`, for the table and logs.
    pub key: String,
    /// The podman container name (one per pod container; a restart replaces it).
    pub name: String,
    /// The image reference, as the pod spec names it.
    pub image: String,
    /// The spec's `command` (replaces the image's entrypoint), `$(VAR)`-expanded.
    pub command: Option<Vec<String>>,
    /// The spec's `args` (replace the image's cmd), `$(VAR)`-expanded.
    pub args: Option<Vec<String>>,
    /// The container's environment (the image's own is added by podman underneath).
    pub env: Env,
    /// Its mounts.
    pub mounts: Vec<Mount>,
    /// `workingDir`, when the spec sets one (the image's otherwise).
    pub working_dir: Option<String>,
    /// Security and resource flags (see `security::flags`).
    pub flags: Vec<String>,
    /// Log file (stdout and stderr, appended).
    pub log: PathBuf,
    /// Where podman writes the container's host pid.
    pub pidfile: PathBuf,
    /// The folder `podman run` runs in: conmon leaves a file `oom` there when the kernel's OOM
    /// killer ended the container (podman's own `OOMKilled` stays false on this cgroup v1
    /// machine).
    pub run_dir: PathBuf,
    /// The host file bind-mounted at the container's `terminationMessagePath`, emptied before
    /// each run.
    pub termination_log: PathBuf,
    /// `terminationMessagePolicy: FallbackToLogsOnError`: a failed run with an empty
    /// termination log reports the tail of its log instead.
    pub fallback_to_logs: bool,
}

/// The most of a termination message the kubelet keeps (its limit for the file).
const MESSAGE_FILE_LIMIT: usize = 4096;
/// What `FallbackToLogsOnError` keeps of the log: the last lines, at most this many bytes.
const MESSAGE_LOG_LINES: usize = 80;
const MESSAGE_LOG_LIMIT: usize = 2048;

/// How a container run ended, beyond its exit code.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ended {
    /// The kernel's OOM killer ended it.
    pub oom: bool,
    /// Its termination message: the termination log's contents, or the tail of its log for a
    /// failed run under `FallbackToLogsOnError`.
    pub message: Option<String>,
}

#[derive(Clone, Debug)]
struct Entry {
    /// The foreground `podman run`.
    podman_pid: u32,
    /// The container name.
    name: String,
    pidfile: PathBuf,
}

#[derive(Default)]
struct Containers {
    stopping: bool,
    by_key: BTreeMap<String, Entry>,
}

/// Running containers, by key.
#[derive(Clone, Default)]
pub struct ProcessTable(Arc<Mutex<Containers>>);

impl ProcessTable {
    fn lock(&self) -> MutexGuard<'_, Containers> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets a container that exited.
    pub fn exited(&self, key: &str, podman_pid: u32) {
        let mut containers = self.lock();
        if containers
            .by_key
            .get(key)
            .is_some_and(|e| e.podman_pid == podman_pid)
        {
            containers.by_key.remove(key);
        }
    }

    /// `(key, pid)` of every running container: its main process as the host sees it (the
    /// `podman run` process until the container's pid is known).
    pub fn running(&self) -> Vec<(String, u32)> {
        self.lock()
            .by_key
            .iter()
            .map(|(k, e)| {
                let pid = std::fs::read_to_string(&e.pidfile)
                    .ok()
                    .and_then(|p| p.trim().parse().ok())
                    .unwrap_or(e.podman_pid);
                (k.clone(), pid)
            })
            .collect()
    }

    fn names(&self) -> Vec<String> {
        self.lock()
            .by_key
            .values()
            .map(|e| e.name.clone())
            .collect()
    }

    /// Refuses new containers from now on and removes every one at once (the drop path: no
    /// grace period, but it waits until podman has removed them).
    pub fn kill_all(&self) {
        let names = {
            let mut containers = self.lock();
            containers.stopping = true;
            containers
                .by_key
                .values()
                .map(|e| e.name.clone())
                .collect::<Vec<_>>()
        };
        if !names.is_empty() {
            let _ = podman_blocking()
                .args(["rm", "--force", "--time", "0", "--ignore"])
                .args(&names)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Refuses new containers, stops every one (SIGTERM, SIGKILL after `grace`) and removes
    /// them.
    pub async fn terminate_all(&self, grace: Duration) {
        self.lock().stopping = true;
        let names = self.names();
        if !names.is_empty() {
            let _ = podman()
                .args(["stop", "--ignore", "--time"])
                .arg(grace.as_secs().to_string())
                .args(&names)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
        }
        self.kill_all();
    }

    /// Starts a container and records it, unless the kubelet is stopping.
    pub fn spawn(&self, launch: &Launch) -> Result<Child, KubeletError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .map_err(io_err(format!("opening log {}", launch.log.display())))?;
        let err_log = log
            .try_clone()
            .map_err(io_err("duplicating the log handle"))?;
        let _ = std::fs::remove_file(&launch.pidfile);
        std::fs::create_dir_all(&launch.run_dir)
            .map_err(io_err(format!("creating {}", launch.run_dir.display())))?;
        let _ = std::fs::remove_file(launch.run_dir.join("oom"));
        // Any user of the container may write its termination message, as on a kubelet.
        std::fs::write(&launch.termination_log, b"")
            .and_then(|()| {
                std::fs::set_permissions(
                    &launch.termination_log,
                    std::fs::Permissions::from_mode(0o666),
                )
            })
            .map_err(io_err(format!(
                "creating {}",
                launch.termination_log.display()
            )))?;
        let mut containers = self.lock();
        if containers.stopping {
            return Err(KubeletError::Stopping);
        }
        let child = run_command(launch)
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(io_err(format!(
                "starting podman for {} ({})",
                launch.key, launch.image
            )))?;
        if let Some(pid) = child.id() {
            containers.by_key.insert(
                launch.key.clone(),
                Entry {
                    podman_pid: pid,
                    name: launch.name.clone(),
                    pidfile: launch.pidfile.clone(),
                },
            );
        }
        Ok(child)
    }
}

/// The `podman run` command line of a container.
fn run_command(launch: &Launch) -> Command {
    let mut cmd = podman();
    cmd.args(run_args(launch))
        .current_dir(&launch.run_dir)
        .stdin(Stdio::null())
        .kill_on_drop(false)
        .process_group(0);
    cmd
}

/// The arguments after `podman --runtime …`: pure, so the mapping is unit-tested.
pub fn run_args(launch: &Launch) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--replace",
        "--pull=never",
        "--network=host",
        "--log-driver=none",
        "--sig-proxy=false",
        // The default rlimits are refused here ("error setting rlimit … operation not
        // permitted"): these are within what conmon itself may hold on this machine.
        "--ulimit=nofile=16384:16384",
        "--ulimit=nproc=16384:16384",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    args.push(format!("--name={}", launch.name));
    args.push(format!("--label={OWNER_LABEL}={}", std::process::id()));
    args.push(format!("--pidfile={}", launch.pidfile.display()));
    for (k, v) in &launch.env {
        args.push(format!("--env={k}={v}"));
    }
    for m in &launch.mounts {
        let mut spec = format!(
            "--mount=type=bind,source={},destination={}",
            m.host.display(),
            m.path
        );
        if m.read_only {
            spec.push_str(",ro=true");
        }
        args.push(spec);
    }
    if let Some(dir) = &launch.working_dir {
        args.push(format!("--workdir={dir}"));
    }
    args.extend(launch.flags.iter().cloned());
    if let Some(command) = &launch.command {
        args.push(format!(
            "--entrypoint={}",
            serde_json::to_string(command).unwrap_or_default()
        ));
    }
    args.push(launch.image.clone());
    args.extend(launch.args.iter().flatten().cloned());
    args
}

/// Sends `signal` to the container `name` (its main process), without waiting.
pub fn signal_container(name: &str, signal: Signal) {
    let spawned = podman()
        .args(["kill", "--signal", signal.as_str()])
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Ok(mut child) = spawned {
        // Reaped in the background.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
    }
}

/// After a container's `podman run` exited: whether the kernel's OOM killer ended it, and the
/// container removed.
pub async fn collect(launch: &Launch, failed: bool) -> Ended {
    let name = launch.name.as_str();
    let conmon_saw_oom = launch.run_dir.join("oom").exists();
    let oom = conmon_saw_oom
        || podman()
            .args(["inspect", "--format", "{{.State.OOMKilled}}", name])
            .output()
            .await
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
            .unwrap_or(false);
    let _ = podman()
        .args(["rm", "--force", "--ignore", "--time", "0", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    Ended {
        oom,
        message: termination_message(launch, failed || oom),
    }
}

/// The termination message of a run that just ended, as the kubelet reads it.
fn termination_message(launch: &Launch, failed: bool) -> Option<String> {
    let file = std::fs::read(&launch.termination_log).unwrap_or_default();
    let file = &file[..file.len().min(MESSAGE_FILE_LIMIT)];
    if !file.is_empty() {
        return Some(String::from_utf8_lossy(file).into_owned());
    }
    if !(failed && launch.fallback_to_logs) {
        return None;
    }
    let log = std::fs::read(&launch.log).unwrap_or_default();
    let text = String::from_utf8_lossy(&log);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(MESSAGE_LOG_LINES)..].join("\n");
    let start = tail.len().saturating_sub(MESSAGE_LOG_LIMIT);
    let start = (start..=tail.len())
        .find(|i| tail.is_char_boundary(*i))
        .unwrap_or(tail.len());
    let tail = tail[start..].trim();
    (!tail.is_empty()).then(|| tail.to_string())
}

/// Runs a command inside the running container `name` (an exec probe) to completion; its
/// exit code, or `None` after `timeout` or when it cannot start.
pub async fn exec(name: &str, command: &[String], timeout: Duration) -> Option<i32> {
    let mut child = podman()
        .arg("exec")
        .arg(name)
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => Some(exit_code(status)),
        _ => None,
    }
}

/// A container's exit code as Kubernetes reports it: the code, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// Whether `pid` is alive (present and not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// Starts, once per test process, the reaper of its containers: a shell that waits until its
/// stdin (a pipe held in a static) closes — when the test process exits, even killed — and then
/// removes every container labelled with this process's pid. Test binaries keep their kubelet
/// in a static, which is never dropped; this is what stops their containers.
pub fn ensure_reaper() -> Result<(), KubeletError> {
    static REAPER: Mutex<Option<std::process::ChildStdin>> = Mutex::new(None);
    let mut reaper = REAPER.lock().unwrap_or_else(|e| e.into_inner());
    if reaper.is_none() {
        *reaper = Some(start_reaper()?);
    }
    Ok(())
}

fn start_reaper() -> Result<std::process::ChildStdin, KubeletError> {
    let script = format!(
        "cat >/dev/null; podman --runtime /usr/sbin/runc ps --all --quiet \
         --filter label={OWNER_LABEL}={pid} | xargs -r podman --runtime /usr/sbin/runc rm \
         --force --time 0 >/dev/null 2>&1",
        pid = std::process::id()
    );
    let mut child = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(io_err("starting the container reaper"))?;
    child
        .stdin
        .take()
        .ok_or_else(|| KubeletError::Unsupported("the reaper has no stdin".into()))
}

/// Removes containers that kubelets of test processes no longer alive left behind (a killed
/// test run), and checks that podman works.
pub async fn check_machine() -> Result<(), KubeletError> {
    let out = podman()
        .args(["ps", "--all", "--filter"])
        .arg(format!("label={OWNER_LABEL}"))
        .args([
            "--format",
            &format!("{{{{.Names}}}} {{{{index .Labels \"{OWNER_LABEL}\"}}}}"),
        ])
        .output()
        .await
        .map_err(io_err("running podman (apt: podman runc)"))?;
    if !out.status.success() {
        return Err(KubeletError::Unsupported(format!(
            "`podman ps` failed ({}): the test kubelet runs containers with podman and runc",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let stale: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (name, pid) = line.split_once(' ')?;
            let pid: u32 = pid.trim().parse().ok()?;
            (pid != std::process::id() && !alive(pid)).then(|| name.to_string())
        })
        .collect();
    if !stale.is_empty() {
        let _ = podman()
            .args(["rm", "--force", "--ignore", "--time", "0"])
            .args(&stale)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_args_carry_mounts_env_entrypoint_and_args_in_order() {
        let launch = Launch {
            key: "ns/p/c".into(),
            name: "k8s_c_p_ns_u".into(),
            image: "127.0.0.1:5000/x@sha256:ab".into(),
            command: Some(vec!["/bin/sh".into(), "-c".into()]),
            args: Some(vec!["echo hi".into()]),
            env: Env::from([("A".to_string(), "b c".to_string())]),
            mounts: vec![Mount {
                host: "/state/v".into(),
                path: "/etc/cfg".into(),
                read_only: true,
            }],
            working_dir: Some("/w".into()),
            flags: vec!["--read-only".into()],
            log: "/dev/null".into(),
            pidfile: "/tmp/pid".into(),
            run_dir: "/tmp".into(),
            termination_log: "/tmp/termination-log".into(),
            fallback_to_logs: false,
        };
        let args = run_args(&launch);
        assert!(args.contains(&"--env=A=b c".to_string()));
        assert!(args.contains(
            &"--mount=type=bind,source=/state/v,destination=/etc/cfg,ro=true".to_string()
        ));
        assert!(args.contains(&r#"--entrypoint=["/bin/sh","-c"]"#.to_string()));
        let image = args.iter().position(|a| a == &launch.image).unwrap();
        assert_eq!(&args[image + 1..], ["echo hi"]);
        assert!(args.iter().position(|a| a == "--read-only").unwrap() < image);
    }

    #[test]
    fn exit_codes_follow_kubernetes() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }
}
