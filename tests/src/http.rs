//! Minimal HTTP/1.1 requests over loopback for tests that only need a status code and body.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// `GET http://{ip}:{port}{path}`; the status code and body, or `None` when nothing answers
/// within two seconds. Refuses any address outside 127.0.0.0/8.
pub async fn get(ip: &str, port: u16, path: &str) -> Option<(u16, String)> {
    exchange(
        ip,
        port,
        format!("GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// `POST` of a JSON body; as [`get`].
pub async fn post_json(ip: &str, port: u16, path: &str, body: &str) -> Option<(u16, String)> {
    post_json_with(ip, port, path, body, &[]).await
}

/// As [`post_json`], with extra request headers (e.g. `Authorization`).
pub async fn post_json_with(
    ip: &str,
    port: u16,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    exchange(ip, port, head + body).await
}

async fn exchange(ip: &str, port: u16, request: String) -> Option<(u16, String)> {
    let addr: std::net::Ipv4Addr = ip.parse().ok()?;
    assert!(addr.is_loopback(), "tests dial loopback only, not {ip}");
    let exchange = async {
        let mut stream = TcpStream::connect((ip, port)).await.ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}
