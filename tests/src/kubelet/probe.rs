//! HTTP and TCP probes against the pod's own address, as the kubelet runs them.

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

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

/// Runs `probe` once against `ip`; true on success (HTTP 200–399, or a TCP connect).
pub async fn check(probe: &Probe, container: &Container, ip: &str) -> bool {
    let timeout = Duration::from_secs(
        u64::try_from(probe.timeout_seconds.unwrap_or(1))
            .unwrap_or(1)
            .max(1),
    );
    let attempt = async {
        if let Some(h) = &probe.http_get {
            let port = port(container, &h.port)?;
            let host = h.host.clone().unwrap_or_else(|| ip.to_string());
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            let mut stream = TcpStream::connect((host.as_str(), port)).await.ok()?;
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.37\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut head = [0u8; 16];
            let n = stream.read(&mut head).await.ok()?;
            let line = String::from_utf8_lossy(&head[..n]);
            let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some((200..400).contains(&code))
        } else if let Some(t) = &probe.tcp_socket {
            let port = port(container, &t.port)?;
            Some(TcpStream::connect((ip, port)).await.is_ok())
        } else {
            // exec and gRPC probes are not supported: treated as passing.
            Some(true)
        }
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}
