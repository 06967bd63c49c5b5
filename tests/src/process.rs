//! Processes of ours, started on port 0: each announces the address it bound with one line on
//! stdout (`sluice_protocol::process`), which the harness reads back from the file that stdout
//! goes to. No test guesses a free port for a server of ours.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sluice_protocol::process::parse_listening_line;

/// The addresses the process writing `output` announced for each of `names`, in that order,
/// once all are there. Past `timeout`, fails the test with the output's tail.
pub async fn announced(output: &Path, names: &[&str], timeout: Duration) -> Vec<SocketAddr> {
    crate::wait::eventually(
        &format!("{} to announce {names:?}", output.display()),
        timeout,
        || crate::log_tail(output, 40),
        || async {
            let text = std::fs::read_to_string(output).ok()?;
            let found: Vec<(String, SocketAddr)> = text
                .lines()
                .filter_map(parse_listening_line)
                .map(|(name, address)| (name.to_string(), address))
                .collect();
            names
                .iter()
                .map(|name| found.iter().find(|(n, _)| n == name).map(|(_, a)| *a))
                .collect::<Option<Vec<_>>>()
        },
    )
    .await
}

/// A port of `ip` nothing listens on at the time of the call (bound, read, released). Only for
/// what cannot announce its own port (moto, Azurite, fake-gcs-server, a Python upstream, a
/// container's published port) and for addresses that must refuse connections or come up
/// later: the port may be taken by then.
pub fn unused_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("finding an unused port on {ip}: {e}"))
}

/// [`unused_port`] on 127.0.0.1.
pub fn unused_loopback_port() -> u16 {
    unused_port("127.0.0.1")
}

/// A fresh, empty directory under the system temp dir, named after `label`.
pub fn temp_dir(label: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-test-{label}-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}
