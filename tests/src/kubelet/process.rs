//! Container processes. Each runs as its own process group inside its own mount namespace:
//!
//! ```text
//! setpriv --pdeathsig KILL -- unshare --mount --propagation private -- \
//!     /bin/sh -c 'mkdir -p <mountPath>; mount --bind <host dir> <mountPath>; …; cd <dir>; exec "$@"' \
//!     sh <binary> <args…>
//! ```
//!
//! so it sees its volumes at the spec's `mountPath` and dies with the kubelet's thread even
//! when a test process is killed. Every group is recorded in a [`ProcessTable`], so shutdown,
//! and even a panicking test's drop, kills all of them.

use std::{
    collections::BTreeMap,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::process::{Child, Command};

use super::{KubeletError, env::Env, io_err};

/// A bind mount into a container's mount namespace.
#[derive(Clone, Debug)]
pub struct Mount {
    /// Folder or file on the host.
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
    /// The program (a path, or a name looked up in `PATH`).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: Env,
    /// Its mounts.
    pub mounts: Vec<Mount>,
    /// Working directory inside the mount namespace (created when missing).
    pub working_dir: String,
    /// Log file (stdout and stderr, appended).
    pub log: PathBuf,
}

#[derive(Default)]
struct Groups {
    stopping: bool,
    by_key: BTreeMap<String, u32>,
}

/// Process groups of running containers, by key.
#[derive(Clone, Default)]
pub struct ProcessTable(Arc<Mutex<Groups>>);

impl ProcessTable {
    fn lock(&self) -> MutexGuard<'_, Groups> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets a container whose process exited, killing what is left of its group (as a
    /// container's processes all die with it).
    pub fn exited(&self, key: &str, pid: u32) {
        signal_group(pid, Signal::SIGKILL);
        let mut groups = self.lock();
        if groups.by_key.get(key) == Some(&pid) {
            groups.by_key.remove(key);
        }
    }

    /// `(key, pid)` of every running process.
    pub fn running(&self) -> Vec<(String, u32)> {
        self.lock()
            .by_key
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Refuses new processes from now on and SIGKILLs every group (the drop path: no waiting).
    pub fn kill_all(&self) {
        let mut groups = self.lock();
        groups.stopping = true;
        for pid in groups.by_key.values() {
            signal_group(*pid, Signal::SIGKILL);
        }
    }

    /// Refuses new processes, SIGTERMs every group, and SIGKILLs what is left after `grace`.
    pub async fn terminate_all(&self, grace: Duration) {
        let pids: Vec<u32> = {
            let mut groups = self.lock();
            groups.stopping = true;
            groups.by_key.values().copied().collect()
        };
        for pid in &pids {
            signal_group(*pid, Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline && pids.iter().any(|pid| alive(*pid)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill_all();
    }

    /// Starts a container process and records its group, unless the kubelet is stopping.
    pub fn spawn(&self, launch: &Launch) -> Result<Child, KubeletError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .map_err(io_err(format!("opening log {}", launch.log.display())))?;
        let err_log = log
            .try_clone()
            .map_err(io_err("duplicating the log handle"))?;
        let mut groups = self.lock();
        if groups.stopping {
            return Err(KubeletError::Stopping);
        }
        let child = command(launch)
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(io_err(format!(
                "starting {} for {}",
                launch.program.display(),
                launch.key
            )))?;
        if let Some(pid) = child.id() {
            groups.by_key.insert(launch.key.clone(), pid);
        }
        Ok(child)
    }
}

/// Runs `launch` (an exec probe) to completion; its exit code, or `None` after `timeout`
/// (its group is then killed) or when it cannot start.
pub async fn run_once(launch: &Launch, timeout: Duration) -> Option<i32> {
    let mut child = command(launch)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => Some(exit_code(status)),
        _ => {
            if let Some(pid) = pid {
                signal_group(pid, Signal::SIGKILL);
            }
            None
        }
    }
}

/// A container's exit code as Kubernetes reports it: the code, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// Sends `signal` to a process group; a group that is gone already is fine.
pub fn signal_group(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 1
    {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
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

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The shell script that sets up a container's mount namespace and then execs its program.
fn setup_script(launch: &Launch) -> String {
    let mut script = String::from("set -e\n");
    for m in &launch.mounts {
        let (host, path) = (quote(&m.host.to_string_lossy()), quote(&m.path));
        if m.host.is_dir() {
            script.push_str(&format!("mkdir -p {path}\n"));
        } else {
            script.push_str(&format!(
                "mkdir -p \"$(dirname {path})\"; [ -e {path} ] || : > {path}\n"
            ));
        }
        script.push_str(&format!("mount --bind {host} {path}\n"));
        if m.read_only {
            script.push_str(&format!("mount -o remount,bind,ro {path}\n"));
        }
    }
    let dir = quote(&launch.working_dir);
    script.push_str(&format!("mkdir -p {dir}; cd {dir}\nexec \"$@\"\n"));
    script
}

/// `setpriv` arguments that give a process a parent-death signal and a private mount
/// namespace (`unshare`); the program and its arguments follow a `--`.
const ISOLATE: [&str; 7] = [
    "--pdeathsig",
    "KILL",
    "--",
    "unshare",
    "--mount",
    "--propagation",
    "private",
];

/// The command line of a container process: its own group, mount namespace and a
/// parent-death signal.
fn command(launch: &Launch) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(ISOLATE)
        .args(["--", "/bin/sh", "-c"])
        .arg(setup_script(launch))
        .arg("sh")
        .arg(&launch.program)
        .args(&launch.args)
        .env_clear()
        .envs(&launch.env)
        .stdin(Stdio::null())
        .process_group(0);
    cmd
}

/// Checks once that containers can be started here: `setpriv` and `unshare` (util-linux) must
/// exist, and a private mount namespace with a bind mount must work (it needs root).
pub async fn check_machine(scratch: &Path) -> Result<(), KubeletError> {
    let dir = scratch.to_string_lossy();
    let out = Command::new("setpriv")
        .args(ISOLATE)
        .args([
            "--",
            "/bin/sh",
            "-c",
            "mount --bind \"$1\" \"$1\"",
            "sh",
            &dir,
        ])
        .output()
        .await
        .map_err(io_err("running `setpriv … unshare --mount` (util-linux)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(KubeletError::Unsupported(format!(
            "`unshare --mount` with a bind mount failed ({}): the test kubelet needs root and \
             util-linux to give containers their volume mounts",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setup_script_mounts_quotes_and_execs() {
        let launch = Launch {
            key: "ns/p/c".into(),
            program: "/bin/true".into(),
            args: vec![],
            env: Env::new(),
            mounts: vec![Mount {
                host: "/nonexistent/it's".into(),
                path: "/etc/cfg".into(),
                read_only: true,
            }],
            working_dir: "/".into(),
            log: "/dev/null".into(),
        };
        let script = setup_script(&launch);
        assert!(script.contains(r"mount --bind '/nonexistent/it'\''s' '/etc/cfg'"));
        assert!(script.contains("mount -o remount,bind,ro '/etc/cfg'"));
        assert!(script.ends_with("exec \"$@\"\n"));
    }

    #[test]
    fn exit_codes_follow_kubernetes() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }
}
