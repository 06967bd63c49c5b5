//! The one way `fetch` writes a download to disk, shared by [`super::http`] and
//! [`super::object`]: a stream of chunks appended to a file as they arrive (memory stays at one
//! chunk plus a small write buffer whatever the size), a stall timeout (a download that receives
//! nothing for [`Transfer::stall_timeout`] fails, naming how many bytes of how many arrived), an
//! optional SHA-256 computed while writing, and progress in the log (bytes, total when known,
//! rate) at most every [`Transfer::progress_every`], plus a last line when a file is complete.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Size of the write buffer in front of the file: few enough system calls for a fast link,
/// small enough to keep memory bounded.
pub const WRITE_BUFFER: usize = 256 * 1024;

/// Settings shared by every streamed download (from [`super::FetchArgs`]).
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// A download that receives nothing for this long fails (a read timeout: connecting has its
    /// own short one, and a whole transfer may take hours).
    pub stall_timeout: Duration,
    /// How often a long download logs its progress.
    pub progress_every: Duration,
    /// First pause before retrying a failed HTTP request; doubled on each retry.
    pub retry_delay: Duration,
    /// Whether single files are hashed while written (only when a digest is to be checked).
    pub hash: bool,
}

/// No byte arrived for the stall timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stalled {
    /// Bytes of the file received so far.
    pub received: u64,
    /// The file's size, when known.
    pub total: Option<u64>,
    /// How long nothing arrived.
    pub after: Duration,
}

impl fmt::Display for Stalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no data for {} after {} of ",
            seconds(self.after),
            self.received
        )?;
        match self.total {
            Some(total) => write!(f, "{total} bytes"),
            None => write!(f, "an unknown number of bytes"),
        }
    }
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Why [`copy`] stopped before the end of the stream.
#[derive(Debug, thiserror::Error)]
pub enum CopyError<E: std::error::Error + 'static> {
    /// Nothing arrived for the stall timeout.
    #[error("{0}")]
    Stalled(Stalled),
    /// The stream failed (a broken connection, a store error).
    #[error("{0}")]
    Source(#[source] E),
    /// Writing the file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Progress of one file, possibly over several attempts (a resumed or restarted download keeps
/// reporting on the same line of log).
#[derive(Debug)]
pub struct Progress {
    source: String,
    total: Option<u64>,
    every: Duration,
    started: Instant,
    last_report: Instant,
    /// Bytes received over all attempts (for the rate; a restart discards some of them).
    received: u64,
}

impl Progress {
    /// Starts counting for `source` (a name safe to log: no credentials).
    pub fn new(source: impl Into<String>, total: Option<u64>, every: Duration) -> Self {
        let now = Instant::now();
        Self {
            source: source.into(),
            total,
            every,
            started: now,
            last_report: now,
            received: 0,
        }
    }

    /// The file's size, once a response tells it.
    pub fn set_total(&mut self, total: Option<u64>) {
        self.total = total;
    }

    fn advance(&mut self, chunk: u64, written: u64) {
        self.received += chunk;
        if self.last_report.elapsed() >= self.every {
            self.last_report = Instant::now();
            self.log(written, false);
        }
    }

    /// Logs the final line of a complete file (always written, however short the download).
    pub fn done(&self, written: u64) {
        self.log(written, true);
    }

    fn log(&self, written: u64, complete: bool) {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = format!("{:.1}", self.received as f64 / seconds / 1_048_576.0);
        match self.total {
            Some(total) => tracing::info!(
                source = %self.source,
                bytes = written,
                total,
                mib_per_s = rate,
                complete,
                "download progress"
            ),
            None => tracing::info!(
                source = %self.source,
                bytes = written,
                mib_per_s = rate,
                complete,
                "download progress"
            ),
        }
    }
}

/// Appends every chunk of `stream` to `file` (whose name, for messages, is `path`), counting in
/// `written` (which the caller reads after an error, to resume), feeding `hasher` when given.
/// Fails when no chunk arrives for `stall_timeout`. Flushes `file` before returning, error or
/// not, so that `written` bytes are on disk.
pub async fn copy<S, B, E, W>(
    stream: &mut S,
    file: &mut W,
    path: &Path,
    written: &mut u64,
    stall_timeout: Duration,
    progress: &mut Progress,
    mut hasher: Option<&mut Sha256>,
) -> Result<(), CopyError<E>>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::error::Error + 'static,
    W: AsyncWrite + Unpin,
{
    let write_err = |source| CopyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let outcome = loop {
        let next = match tokio::time::timeout(stall_timeout, stream.next()).await {
            Ok(next) => next,
            Err(_) => {
                break Err(CopyError::Stalled(Stalled {
                    received: *written,
                    total: progress.total,
                    after: stall_timeout,
                }));
            }
        };
        let chunk = match next {
            None => break Ok(()),
            Some(Err(source)) => break Err(CopyError::Source(source)),
            Some(Ok(chunk)) => chunk,
        };
        let chunk = chunk.as_ref();
        if let Err(source) = file.write_all(chunk).await {
            break Err(write_err(source));
        }
        if let Some(hasher) = hasher.as_deref_mut() {
            hasher.update(chunk);
        }
        *written += chunk.len() as u64;
        progress.advance(chunk.len() as u64, *written);
    };
    file.flush().await.map_err(write_err)?;
    outcome
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("broken")]
    struct Broken;

    #[tokio::test]
    async fn chunks_are_written_hashed_and_a_failure_keeps_the_count() {
        let chunks: Vec<Result<&[u8], Broken>> = vec![Ok(b"hello "), Ok(b"world"), Err(Broken)];
        let mut stream = futures::stream::iter(chunks);
        let mut out = Vec::new();
        let mut written = 0;
        let mut hasher = Sha256::new();
        let mut progress = Progress::new("test", Some(20), Duration::from_secs(5));
        let err = copy(
            &mut stream,
            &mut out,
            Path::new("out"),
            &mut written,
            Duration::from_secs(5),
            &mut progress,
            Some(&mut hasher),
        )
        .await
        .expect_err("the stream breaks");
        assert!(matches!(err, CopyError::Source(Broken)));
        assert_eq!(out, b"hello world");
        assert_eq!(written, 11);
        assert_eq!(
            hex(&hasher.finalize()),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
    }

    #[tokio::test]
    async fn a_stream_that_goes_quiet_stalls_naming_the_bytes() {
        let mut stream =
            futures::stream::iter([Ok::<_, Broken>(b"abc")]).chain(futures::stream::pending());
        let mut out = Vec::new();
        let mut written = 0;
        let mut progress = Progress::new("test", Some(10), Duration::from_secs(5));
        let err = copy(
            &mut stream,
            &mut out,
            Path::new("out"),
            &mut written,
            Duration::from_millis(50),
            &mut progress,
            None,
        )
        .await
        .expect_err("stalls");
        assert_eq!(err.to_string(), "no data for 50 ms after 3 of 10 bytes");
    }
}
