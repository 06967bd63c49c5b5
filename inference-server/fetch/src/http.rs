//! Artifacts over `http://` and `https://`: one file, streamed to disk ([`super::stream`]: bounded
//! memory, a stall timeout, progress in the log), named after the URL's last non-empty path
//! segment (so `https://host/models/iris.tar.gz?X-Amz-Signature=…` lands as `iris.tar.gz`, and a
//! lone archive is then unpacked).
//!
//! - Connecting times out after [`CONNECT_TIMEOUT`]; waiting for the response headers, or for the
//!   next bytes of the body, after the stall timeout.
//! - Connection errors, timeouts and stalls, a transfer cut short, `5xx` and `429` are retried
//!   with exponential backoff (the base delay doubled per retry, at most [`MAX_RETRY_DELAY`]; a
//!   `Retry-After` in seconds is honoured up to [`MAX_RETRY_AFTER`]); [`MAX_ATTEMPTS`] attempts
//!   in a row without new bytes give up. `404` ("not found"), `401`/`403` ("access denied") and
//!   any other status fail at once.
//! - A broken transfer resumes with `Range: bytes=N-` when the server announced
//!   `Accept-Ranges: bytes` (or answered `206`); otherwise it starts over. The final size is
//!   checked against `Content-Length` (or the `Content-Range` total) when the server sent one.
//! - Presigned URLs carry credentials in their query string, and a URL may carry a user and
//!   password: messages and log lines show the URL through [`redact`] only (no userinfo, no
//!   query, no fragment), and `reqwest`'s errors lose their URL.

use std::{io::SeekFrom, path::Path, time::Duration};

use reqwest::{StatusCode, header::HeaderMap};
use sha2::{Digest, Sha256};
use tokio::{
    fs::File,
    io::{AsyncSeekExt, BufWriter},
};

use super::{
    FetchError, Staged, io,
    stream::{self, CopyError, Progress, Stalled, Transfer},
};

/// How long opening a connection (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts in a row that bring no new byte before the download gives up.
pub const MAX_ATTEMPTS: u32 = 5;
/// Longest pause between two attempts of the exponential backoff.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// Longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Why a download failed (the URL and the number of attempts are in [`FetchError::Http`]).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URI is not a URL.
    #[error("not a valid URL: {0}")]
    Url(#[source] url::ParseError),
    /// 404.
    #[error("not found (HTTP 404)")]
    NotFound,
    /// 401 or 403.
    #[error(
        "access denied (HTTP {0}): the URL's credentials or signature are missing, wrong or expired"
    )]
    Denied(u16),
    /// Any other status that is not a success (for 5xx and 429, the last of the retries).
    #[error("the server answered HTTP {0}")]
    Status(u16),
    /// Connecting, sending or receiving failed (the text holds the causes, never the URL).
    #[error("{}", chain(.0))]
    Transport(#[source] reqwest::Error),
    /// The response headers did not come within the stall timeout.
    #[error("no response within {} ms", .0.as_millis())]
    NoResponse(Duration),
    /// Nothing arrived for the stall timeout.
    #[error("{0}")]
    Stalled(Stalled),
    /// The body ended before (or after) the announced size.
    #[error("the transfer ended after {received} bytes of {expected}")]
    Size {
        /// Bytes of the file received.
        received: u64,
        /// The size the server announced.
        expected: u64,
    },
    /// A `206` answer to a `Range` request started elsewhere than asked.
    #[error("the server answered a request for bytes {asked}- with {content_range:?}")]
    Range {
        /// The first byte asked for.
        asked: u64,
        /// What the server sent in `Content-Range`.
        content_range: String,
    },
}

/// An error's text followed by its causes: `reqwest` puts the interesting part (connection
/// refused, a TLS failure) in its sources.
fn chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// An `http(s)://` URI without userinfo, query string or fragment: the only form of a URL that
/// `fetch` shows. Other schemes are shown as they are: in `abfss://container@account…` the
/// part before `@` is the container, not a credential.
pub fn redact(uri: &str) -> String {
    if !(uri.starts_with("http://") || uri.starts_with("https://")) {
        return uri.to_string();
    }
    let end = uri.find(['?', '#']).unwrap_or(uri.len());
    let uri = &uri[..end];
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}{path}")
}

/// The name the downloaded file gets: the last non-empty segment of the URL's path (query and
/// fragment ignored), percent-decoded; `model` when there is none or it is not a plain name.
pub fn file_name(uri: &str) -> String {
    let path = redact(uri);
    let path = path.split_once("://").map_or(path.as_str(), |(_, rest)| {
        rest.find('/').map_or("", |start| &rest[start..])
    });
    let name = path
        .rsplit('/')
        .find(|segment| !segment.is_empty())
        .map(percent_decode)
        .unwrap_or_default();
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        "model".to_string()
    } else {
        name
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_string())
}

/// A `Retry-After` given in seconds (an HTTP date is ignored: the backoff applies), capped at
/// [`MAX_RETRY_AFTER`].
pub fn retry_after(value: &str) -> Option<Duration> {
    let seconds: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// The pause before retry number `failures` (1 for the first): `base`, doubled each time, at most
/// [`MAX_RETRY_DELAY`].
pub fn backoff(base: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(MAX_RETRY_DELAY)
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`): the start and the total.
fn content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = range.split_once('/')?;
    let (start, _end) = span.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, total))
}

fn header(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// How one attempt failed.
enum Failure {
    /// Retry (after `after` when the server said so).
    Retry {
        error: HttpError,
        after: Option<Duration>,
    },
    /// Give up now.
    Fatal(HttpError),
    /// A local error (writing the file).
    Local(FetchError),
}

impl Failure {
    fn retry(error: HttpError) -> Self {
        Self::Retry { error, after: None }
    }

    fn transport(error: reqwest::Error) -> Self {
        let error = error.without_url();
        if error.is_builder() || error.is_redirect() {
            Self::Fatal(HttpError::Transport(error))
        } else {
            Self::retry(HttpError::Transport(error))
        }
    }
}

/// The file being downloaded, across attempts.
struct Download<'a> {
    client: reqwest::Client,
    url: reqwest::Url,
    path: &'a Path,
    file: BufWriter<File>,
    transfer: &'a Transfer,
    progress: Progress,
    /// Bytes of the file on disk.
    written: u64,
    /// The file's size, when a response said it.
    total: Option<u64>,
    /// Whether the server takes `Range` requests.
    resumable: bool,
    hasher: Option<Sha256>,
}

/// Downloads `uri` into `staging`.
pub async fn fetch(uri: &str, staging: &Path, transfer: &Transfer) -> Result<Staged, FetchError> {
    fetch_with(uri, staging, transfer, HeaderMap::new()).await
}

/// Downloads `uri` into `staging`, sending `headers` (credentials) with every request.
pub async fn fetch_with(
    uri: &str,
    staging: &Path,
    transfer: &Transfer,
    headers: HeaderMap,
) -> Result<Staged, FetchError> {
    let shown = redact(uri);
    let failed = |attempts, source| FetchError::Http {
        uri: shown.clone(),
        attempts,
        source,
    };
    let url = reqwest::Url::parse(uri).map_err(|e| failed(0, HttpError::Url(e)))?;
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        // The bytes as stored: a `.tar.gz` served with `Content-Encoding: gzip` stays a
        // `.tar.gz`, and `Content-Length` counts what is written.
        .no_gzip()
        .no_brotli()
        .no_deflate()
        .no_zstd()
        .default_headers(headers)
        .build()
        .map_err(|e| failed(0, HttpError::Transport(e.without_url())))?;
    let path = staging.join(file_name(uri));
    let file = File::create(&path).await.map_err(io("creating", &path))?;
    let mut download = Download {
        client,
        url,
        path: &path,
        file: BufWriter::with_capacity(stream::WRITE_BUFFER, file),
        transfer,
        progress: Progress::new(shown.clone(), None, transfer.progress_every),
        written: 0,
        total: None,
        resumable: false,
        hasher: transfer.hash.then(Sha256::new),
    };
    tracing::info!(uri = %shown, file = %path.display(), "downloading");
    let mut attempts = 0;
    let mut failures = 0;
    let mut furthest = 0;
    loop {
        attempts += 1;
        let (error, after) = match download.attempt().await {
            Ok(()) => break,
            Err(Failure::Local(error)) => return Err(error),
            Err(Failure::Fatal(error)) => return Err(failed(attempts, error)),
            Err(Failure::Retry { error, after }) => (error, after),
        };
        // A failure after new bytes starts a new series: a long download over a flaky link
        // goes on as long as it advances.
        if download.written > furthest {
            furthest = download.written;
            failures = 1;
        } else {
            failures += 1;
        }
        if failures >= MAX_ATTEMPTS {
            return Err(failed(attempts, error));
        }
        let delay = after.unwrap_or_else(|| backoff(transfer.retry_delay, failures));
        tracing::warn!(
            uri = %shown,
            attempt = attempts,
            error = %error,
            bytes = download.written,
            retry_in_ms = delay.as_millis() as u64,
            "download failed; retrying"
        );
        tokio::time::sleep(delay).await;
    }
    download.progress.done(download.written);
    Ok(Staged::File {
        path: path.clone(),
        sha256: download.hasher.map(|h| h.finalize().into()),
    })
}

impl Download<'_> {
    /// One request: the whole file, or the rest of it.
    async fn attempt(&mut self) -> Result<(), Failure> {
        let stall = self.transfer.stall_timeout;
        let resume_from = (self.written > 0 && self.resumable).then_some(self.written);
        let mut request = self.client.get(self.url.clone());
        if let Some(from) = resume_from {
            request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        let response = match tokio::time::timeout(stall, request.send()).await {
            Err(_) => return Err(Failure::retry(HttpError::NoResponse(stall))),
            Ok(Err(error)) => return Err(Failure::transport(error)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let headers = response.headers();
        match status {
            StatusCode::OK => {
                if self.written > 0 {
                    tracing::info!(
                        bytes = self.written,
                        "the server sends the whole file again; starting over"
                    );
                    self.restart().await?;
                }
                self.total = header(headers, reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.trim().parse().ok());
                self.resumable = header(headers, reqwest::header::ACCEPT_RANGES)
                    .is_some_and(|v| v.split(',').any(|u| u.trim().eq_ignore_ascii_case("bytes")));
            }
            StatusCode::PARTIAL_CONTENT => {
                let value = header(headers, reqwest::header::CONTENT_RANGE).unwrap_or("");
                match content_range(value) {
                    Some((start, total)) if start == self.written => {
                        self.total = total.or(self.total);
                        self.resumable = true;
                    }
                    _ => {
                        // Start over without `Range` on the next attempt.
                        self.resumable = false;
                        return Err(Failure::retry(HttpError::Range {
                            asked: self.written,
                            content_range: value.to_string(),
                        }));
                    }
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE if resume_from.is_some() => {
                self.resumable = false;
                return Err(Failure::retry(HttpError::Status(status.as_u16())));
            }
            StatusCode::NOT_FOUND => return Err(Failure::Fatal(HttpError::NotFound)),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(Failure::Fatal(HttpError::Denied(status.as_u16())));
            }
            status if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
                return Err(Failure::Retry {
                    error: HttpError::Status(status.as_u16()),
                    after: header(headers, reqwest::header::RETRY_AFTER).and_then(retry_after),
                });
            }
            status => return Err(Failure::Fatal(HttpError::Status(status.as_u16()))),
        }
        self.progress.set_total(self.total);
        let mut body = response.bytes_stream();
        stream::copy(
            &mut body,
            &mut self.file,
            self.path,
            &mut self.written,
            stall,
            &mut self.progress,
            self.hasher.as_mut(),
        )
        .await
        .map_err(|error| match error {
            CopyError::Stalled(stalled) => Failure::retry(HttpError::Stalled(stalled)),
            CopyError::Source(error) => Failure::transport(error),
            CopyError::Write { path, source } => Failure::Local(FetchError::Io {
                action: "writing",
                path,
                source,
            }),
        })?;
        match self.total {
            Some(expected) if self.written != expected => {
                if self.written > expected {
                    self.resumable = false;
                }
                Err(Failure::retry(HttpError::Size {
                    received: self.written,
                    expected,
                }))
            }
            _ => Ok(()),
        }
    }

    /// Empties the file for a download from the first byte.
    async fn restart(&mut self) -> Result<(), Failure> {
        let local = |source| {
            Failure::Local(FetchError::Io {
                action: "truncating",
                path: self.path.to_path_buf(),
                source,
            })
        };
        let file = self.file.get_mut();
        file.set_len(0).await.map_err(local)?;
        file.seek(SeekFrom::Start(0)).await.map_err(local)?;
        self.written = 0;
        self.total = None;
        self.hasher = self.transfer.hash.then(Sha256::new);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_userinfo_and_fragments_never_show() {
        assert_eq!(
            redact("https://user:pw@host.example:8443/models/iris.tar.gz?X-Amz-Signature=abc#x"),
            "https://host.example:8443/models/iris.tar.gz"
        );
        assert_eq!(redact("https://host/a?b"), "https://host/a");
        assert_eq!(redact("https://host?sig=1"), "https://host");
        assert_eq!(redact("s3://bucket/prefix"), "s3://bucket/prefix");
        assert_eq!(
            redact("abfss://models@acct.dfs.core.windows.net/iris"),
            "abfss://models@acct.dfs.core.windows.net/iris",
            "the container stays"
        );
        assert_eq!(redact("http://a@b@host/p@q"), "http://host/p@q");
    }

    #[test]
    fn the_file_is_named_after_the_last_path_segment() {
        assert_eq!(
            file_name("https://host/models/iris.tar.gz?X-Amz-Signature=abc/def"),
            "iris.tar.gz"
        );
        assert_eq!(file_name("https://host/models/iris/"), "iris");
        assert_eq!(file_name("https://host/my%20model.onnx"), "my model.onnx");
        assert_eq!(file_name("https://host/"), "model");
        assert_eq!(file_name("https://host"), "model");
        assert_eq!(file_name("https://host/a/%2e%2e"), "model");
        assert_eq!(file_name("https://host/a/..%2fetc"), "model");
        assert_eq!(file_name("https://host/x%zz"), "x%zz");
    }

    #[test]
    fn retry_after_in_seconds_is_capped_and_dates_are_ignored() {
        assert_eq!(retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(retry_after("86400"), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(retry_after("-1"), None);
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        let base = Duration::from_secs(1);
        let delays: Vec<_> = (1..=7).map(|n| backoff(base, n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff(base, 100), MAX_RETRY_DELAY);
    }

    #[test]
    fn content_ranges_are_read() {
        assert_eq!(content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(content_range("items 1-2/3"), None);
        assert_eq!(content_range(""), None);
    }
}
