//! The laptop quickstart: `gateway --standalone examples/quickstart.yaml` fetches the model,
//! starts a local `serve`, and prints a curl that gets predictions.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{BINARY, temp_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_quickstart_prints_a_curl_that_answers() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart.yaml");
    let mut child = Command::new(BINARY)
        .args(["gateway", "--standalone"])
        .arg(&manifest)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--work-dir")
        .arg(temp_dir("quickstart"))
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("gateway starts");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        // The listening announcements come first; the READY line follows.
        BufReader::new(stdout)
            .lines()
            .map(|line| line.expect("text"))
            .find(|line| line.starts_with("READY "))
            .expect("a READY line")
    })
    .await
    .expect("read");
    let gateway_pid = child.id();
    let mut kill = Kill(child);
    assert!(line.starts_with("READY iris curl -s "), "{line}");
    let curl = line.trim_start_matches("READY iris ");
    let output = Command::new("sh")
        .args(["-c", curl])
        .output()
        .expect("curl runs");
    let body: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&output.stdout)));
    assert!(body["predictions"][0]["label"].is_i64(), "{body}");

    // Killed without a chance to stop its children, the gateway still leaves no `serve`
    // behind: each notices its parent is gone and exits.
    let children = children_of(gateway_pid);
    assert!(
        !children.is_empty(),
        "the local serve is a child of the gateway"
    );
    let _ = kill.0.kill();
    let _ = kill.0.wait();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while children.iter().any(|pid| alive(*pid)) {
        assert!(
            std::time::Instant::now() < deadline,
            "serve processes {children:?} outlived the killed gateway"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Pids whose parent is `parent` (from /proc).
fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces, so split after the `)`.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// Whether `pid` runs (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
        .unwrap_or(false)
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
