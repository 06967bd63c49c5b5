//! The laptop quickstart: `gateway --standalone examples/quickstart.yaml` fetches the model,
//! starts a local `serve`, and prints a curl that gets predictions.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{BINARY, free_port, temp_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_quickstart_prints_a_curl_that_answers() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart.yaml");
    let port = free_port();
    let mut child = Command::new(BINARY)
        .args(["gateway", "--standalone"])
        .arg(&manifest)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--work-dir")
        .arg(temp_dir("quickstart"))
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("gateway starts");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .next()
            .expect("a line")
            .expect("text")
    })
    .await
    .expect("read");
    let _kill = Kill(child);
    assert!(line.starts_with("READY iris curl -s "), "{line}");
    let curl = line.trim_start_matches("READY iris ");
    let output = Command::new("sh")
        .args(["-c", curl])
        .output()
        .expect("curl runs");
    let body: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&output.stdout)));
    assert!(body["predictions"][0]["label"].is_i64(), "{body}");
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
