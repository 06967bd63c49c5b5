//! Container processes: spawned in their own process group and mount namespace, tracked in a
//! table so shutdown, and even a panicking test's drop, kills every one of them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::process::{Child, Command};

use super::{KubeletError, io_err};

/// A bind mount into a container's mount namespace.
#[derive(Clone, Debug)]
pub struct Mount {
    /// Directory or file on the host.
    pub host: PathBuf,
    /// Where the container sees it.
    pub path: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Everything needed to start one container process.
#[derive(Clone, Debug)]
pub struct Launch {
    /// `namespace/pod/container`, for the table and logs.
    pub key: String,
    /// The binary.
    pub binary: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: BTreeMap<String, String>,
    /// Its mounts.
    pub mounts: Vec<Mount>,
    /// Working directory inside the mount namespace.
    pub working_dir: Option<String>,
    /// Log file (stdout and stderr, appended).
    pub log: PathBuf,
}

/// Process groups of running containers, by key.
#[derive(Clone, Default)]
pub struct ProcessTable(Arc<Mutex<BTreeMap<String, u32>>>);

impl ProcessTable {
    fn insert(&self, key: &str, pid: u32) {
        if let Ok(mut t) = self.0.lock() {
            t.insert(key.to_string(), pid);
        }
    }

    /// Forgets a process that exited.
    pub fn remove(&self, key: &str) {
        if let Ok(mut t) = self.0.lock() {
            t.remove(key);
        }
    }

    /// `(key, pid)` of every running process.
    pub fn running(&self) -> Vec<(String, u32)> {
        self.0
            .lock()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs every process group at once (drop path: no waiting possible).
    pub fn kill_all(&self) {
        for (_, pid) in self.running() {
            signal_group(pid, Signal::SIGKILL);
        }
    }

    /// SIGTERM to all, then SIGKILL to what is left after `grace`.
    pub async fn terminate_all(&self, grace: Duration) {
        for (_, pid) in self.running() {
            signal_group(pid, Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline
            && self.running().iter().any(|(_, pid)| alive(*pid))
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill_all();
    }
}

/// Sends `signal` to a process group; a group that is gone already is fine.
pub fn signal_group(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Checks once that containers can be started: `unshare --mount` must work (it needs root).
pub async fn check_machine() -> Result<(), KubeletError> {
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "true"])
        .output()
        .await
        .map_err(io_err("running `unshare` (util-linux)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(KubeletError::Unsupported(format!(
            "`unshare --mount` failed ({}); the test kubelet needs root to give containers their volume mounts",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Starts a container process and records it in `table`.
pub fn spawn(table: &ProcessTable, launch: &Launch) -> Result<Child, KubeletError> {
    let mut script = String::from("set -e; ");
    for m in &launch.mounts {
        let (host, path) = (quote(&m.host.to_string_lossy()), quote(&m.path));
        if m.host.is_dir() {
            script.push_str(&format!("mkdir -p {path}; "));
        } else {
            script.push_str(&format!(
                "mkdir -p \"$(dirname {path})\"; [ -e {path} ] || : > {path}; "
            ));
        }
        script.push_str(&format!("mount --bind {host} {path}; "));
        if m.read_only {
            script.push_str(&format!("mount -o remount,bind,ro {path}; "));
        }
    }
    if let Some(dir) = &launch.working_dir {
        script.push_str(&format!("cd {}; ", quote(dir)));
    }
    script.push_str("exec \"$@\"");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)
        .map_err(io_err(format!("opening log {}", launch.log.display())))?;
    let err_log = log
        .try_clone()
        .map_err(io_err("duplicating the log handle"))?;
    // setpriv: the container dies with the kubelet's process, even when a test is killed.
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--pdeathsig",
        "KILL",
        "--",
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
    ])
    .arg(&script)
    .arg("sh")
    .arg(&launch.binary)
    .args(&launch.args)
    .env_clear()
    .envs(&launch.env)
    .stdin(Stdio::null())
    .stdout(log)
    .stderr(err_log)
    .process_group(0);
    let child = cmd.spawn().map_err(io_err(format!(
        "starting {} for {}",
        launch.binary.display(),
        launch.key
    )))?;
    if let Some(pid) = child.id() {
        table.insert(&launch.key, pid);
    }
    Ok(child)
}
