//! Command-line flags of `inference-server serve`, each also read from a `SLUICE_*` variable.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `inference-server serve`: flags, with the environment variable each can come from.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// The model directory: an MLflow `MLmodel` or a `sluice-model.yaml` plus the files it names.
    #[arg(long, env = "SLUICE_MODEL_DIR")]
    pub model_dir: PathBuf,
    /// Address to listen on (the pod IP in a pod).
    #[arg(long, env = "SLUICE_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on.
    #[arg(long, env = "SLUICE_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Largest request body accepted (e.g. `16MiB`, `512KiB`, `1000000`); larger gets 413.
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", default_value = "16MiB", value_parser = parse_bytes)]
    pub max_body_bytes: usize,
    /// Deadline of one request (e.g. `60s`, `500ms`, `2m`); past it the answer is 504.
    #[arg(long, env = "SLUICE_REQUEST_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// After SIGTERM, how long new requests are still accepted and answered while `/health`
    /// answers 503 (e.g. `2s`): the time the routing layer (the gateway's pod watch, kube-proxy)
    /// needs to stop sending before the listener closes. 0 closes it at once.
    #[arg(long, env = "SLUICE_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,
    /// After SIGTERM (and the drain delay), how long in-flight requests (streams included) may
    /// take to finish before the process exits anyway.
    #[arg(long, env = "SLUICE_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// How long a batch of concurrent ONNX or embedding requests waits to fill, in ms. With 0
    /// (the default) a batch is whatever waits when the model is free: requests that arrive
    /// during a model call form the next one, which adds no latency on a CPU the model already
    /// keeps busy.
    #[arg(long, env = "SLUICE_BATCH_WINDOW_MS", default_value_t = 0)]
    pub batch_window_ms: u64,
    /// Most items (rows or texts) in one model call; for a language model, most sequences
    /// generated side by side.
    #[arg(long, env = "SLUICE_MAX_BATCH", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch: u32,
    /// Shut down (gracefully) when the process with this pid is no longer the parent: the
    /// standalone gateway passes its own, so its local entities never outlive it, even when it
    /// is killed without a chance to stop them.
    #[arg(long, hide = true)]
    pub parent_pid: Option<u32>,
}

/// Parses a byte size: a plain number, or one with a `B`, `KB`/`KiB`, `MB`/`MiB` or `GB`/`GiB`
/// suffix (decimal and binary units).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 16MiB or 1048576"))?;
    let multiplier: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` in `{text}`")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses a duration such as `60s`, `500ms`, `2m` or `1h`; a plain number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 60s or 500ms"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(number)),
        "" | "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        "h" => Ok(Duration::from_secs(number * 3600)),
        other => Err(format!(
            "unknown duration unit `{other}` in `{text}` (use ms, s, m or h)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_bytes("16MiB"), Ok(16 << 20));
        assert_eq!(parse_bytes("1kb"), Ok(1000));
        assert_eq!(parse_bytes("42"), Ok(42));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("1parsec").is_err());
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
    }
}
