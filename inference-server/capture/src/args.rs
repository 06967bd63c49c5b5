//! Command-line arguments of `inference-server capture`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use sluice_protocol::units::parse_duration;

use crate::queue::Overflow;

/// The auto-capture sidecar: a reverse proxy in front of the model container that records every
/// request and response into the inference table.
#[derive(Clone, Debug, Args)]
pub struct CaptureArgs {
    /// Address to listen on (the pod's `http` port). A bare IPv6 address with a port
    /// (`fd00::1:8080`, as `$(POD_IP):8080` expands) is accepted.
    #[arg(long, env = "SLUICE_CAPTURE_LISTEN", default_value = "0.0.0.0:8080", value_parser = parse_addr)]
    pub listen: SocketAddr,
    /// The model container: `host:port` or `http://host:port`. Required unless
    /// `--record-only`.
    #[arg(long, env = "SLUICE_CAPTURE_UPSTREAM", value_parser = parse_upstream, required_unless_present = "record_only", conflicts_with = "record_only")]
    pub upstream: Option<SocketAddr>,
    /// Run as a *recorder*: no model behind it; it only writes the exchanges the gateway sends
    /// it as records (calls to an external model's provider, `sluice_contract::record`) and
    /// refuses any other request (404). The operator runs one per external entity of an
    /// endpoint with capture or usage tracking on.
    #[arg(long)]
    pub record_only: bool,
    /// The model container's readiness path; the sidecar's `/health` answers with it.
    #[arg(long, default_value = "/health")]
    pub upstream_health_path: String,
    /// Where the payload table lives: a folder, `file://`, `s3://bucket/prefix`, `gs://…`,
    /// `az://…`. Without it only the usage table is written (`--usage-table` required).
    #[arg(long, env = "SLUICE_CAPTURE_TABLE")]
    pub table: Option<String>,
    /// Where the usage table lives (same forms as `--table`, same store options and format):
    /// one row per request, sampled or not, with the caller, tokens, latency, status and cost.
    #[arg(long, env = "SLUICE_CAPTURE_USAGE_TABLE")]
    pub usage_table: Option<String>,
    /// Where the feedback table lives (same forms as `--table`, same store options and
    /// format): one row per feedback the gateway hands over
    /// (`POST /serving-endpoints/{name}/feedback`).
    #[arg(long, env = "SLUICE_CAPTURE_FEEDBACK_TABLE", requires = "table")]
    pub feedback_table: Option<String>,
    /// The entity's price, for the usage rows' `cost`:
    /// `<currency>:input=<per 1k tokens>,output=<per 1k tokens>,second=<per second>`, each part
    /// optional (`USD:input=0.5,output=1.5`). Needs `--usage-table`.
    #[arg(long, value_parser = sluice_contract::usage::parse_price_arg, requires = "usage_table")]
    pub usage_price: Option<sluice_contract::usage::UsagePrice>,
    /// Store options, `key=value`, repeatable (e.g. `aws_endpoint=http://minio:9000`,
    /// `aws_allow_http=true`); cloud stores also read their usual `AWS_*`, `GOOGLE_*` and
    /// `AZURE_*` environment variables.
    #[arg(long = "table-option", value_parser = parse_option)]
    pub table_options: Vec<(String, String)>,
    /// `parquet`: Hive-partitioned Parquet files only. `delta`: the same files, each spool
    /// segment also committed to a Delta Lake log at the table location (created on first use),
    /// safe for many sidecars appending at once.
    #[arg(long, env = "SLUICE_CAPTURE_TABLE_FORMAT", value_enum, default_value_t = TableFormat::Parquet)]
    pub table_format: TableFormat,
    /// The ServingEndpoint (recorded in every row).
    #[arg(long, default_value = "")]
    pub endpoint: String,
    /// The served entity (recorded in every row).
    #[arg(long, default_value = "")]
    pub entity: String,
    /// The registered model (recorded in every row).
    #[arg(long, default_value = "")]
    pub model: String,
    /// The model version (recorded in every row).
    #[arg(long, default_value = "")]
    pub model_version: String,
    /// Fraction of requests recorded in the payload table, 0 to 1.
    #[arg(long, default_value_t = 1.0, value_parser = parse_fraction)]
    pub sampling_fraction: f64,
    /// Folder of the on-disk spool (survives a sidecar restart when it is a volume). Each
    /// sidecar keeps its rows in its own locked folder under it, so several sidecars may share
    /// it (a persistent claim of the endpoint); folders of sidecars that are gone are adopted.
    #[arg(long, env = "SLUICE_CAPTURE_SPOOL_DIR", default_value = "/spool")]
    pub spool_dir: PathBuf,
    /// How often to look under `--spool-dir` for folders of sidecars that are gone and write
    /// their rows, in seconds (also once at start).
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub spool_adopt_seconds: Duration,
    /// Most bytes the spool may hold; past it the oldest rows are dropped and counted.
    #[arg(long, default_value_t = 1 << 30)]
    pub spool_max_bytes: u64,
    /// Most bytes of finished rows waiting in memory for the spool writer; past it the oldest
    /// are dropped and counted.
    #[arg(long, default_value_t = 64 << 20)]
    pub queue_max_bytes: usize,
    /// What happens when rows come faster than the table takes them, past
    /// `--queue-max-bytes` in memory or `--spool-max-bytes` on disk. `drop-oldest`: the oldest
    /// rows are dropped and counted (`records_dropped_total`); requests never wait for the
    /// table. `block`: no row is dropped; a request whose row would not fit waits for room
    /// (up to `--block-timeout`, then 503 with `Retry-After`, counted in
    /// `requests_refused_total`) before it reaches the model, so the endpoint slows to what
    /// the table takes, for tables that must be complete.
    #[arg(long, env = "SLUICE_CAPTURE_OVERFLOW", value_enum, default_value_t = Overflow::DropOldest)]
    pub overflow: Overflow,
    /// With `--overflow block`: how long a request waits for room for its row before it is
    /// answered 503, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub block_timeout: Duration,
    /// Most bytes of one request or response body copied into a row; the rest streams through
    /// uncopied and the row says `*_PAYLOAD_TRUNCATED`.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_payload_bytes: usize,
    /// Most bytes of body copies held by requests in flight, all together; past it bodies are
    /// not copied and the row says `CAPTURE_MEMORY_LIMIT`.
    #[arg(long, default_value_t = 64 << 20)]
    pub capture_memory_bytes: usize,
    /// A table file is written when its spool segment reaches this size...
    #[arg(long, default_value_t = 8 << 20)]
    pub rotate_bytes: u64,
    /// ...or this age, in seconds.
    #[arg(long, default_value = "60", value_parser = parse_seconds)]
    pub rotate_seconds: Duration,
    /// Longest wait between two attempts to write a table file, in seconds.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    pub retry_max_seconds: Duration,
    /// Longest the model may take to start answering a request, in seconds (then 504).
    #[arg(long, default_value = "600", value_parser = parse_seconds)]
    pub upstream_timeout_seconds: Duration,
    /// After SIGTERM, how long exchanges still open (long streams) may run before they are
    /// cut, e.g. `15s`; each cut one is a row with `SHUTDOWN`. Rows are written to the table
    /// from the signal on, meanwhile. Shorter than `--shutdown-seconds`.
    #[arg(long, env = "SLUICE_CAPTURE_DRAIN_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// After SIGTERM, the longest the sidecar takes to exit, in seconds: exchanges drain for
    /// `--drain-timeout`, rows are written until this runs out; what is left stays in the
    /// spool for the next start (or a sibling sharing it).
    #[arg(long, default_value = "25", value_parser = parse_seconds)]
    pub shutdown_seconds: Duration,
    /// Also serve `/metrics` on this address (it is always served at `/capture/metrics` on
    /// `--listen`).
    #[arg(long, value_parser = parse_addr)]
    pub metrics_listen: Option<SocketAddr>,
}

/// Reads `ip:port`, also a bare IPv6 address followed by `:port`.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not an address (ip:port)"))?;
    let ip: IpAddr = host
        .trim_matches(['[', ']'])
        .parse()
        .map_err(|_| format!("{text:?} is not an address (ip:port)"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{text:?} has no valid port"))?;
    Ok(SocketAddr::new(ip, port))
}

fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    let bare = text
        .strip_prefix("http://")
        .unwrap_or(text)
        .trim_end_matches('/');
    parse_addr(bare)
}

fn parse_option(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not key=value"))?;
    Ok((key.trim().to_string(), value.to_string()))
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not between 0 and 1"))
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(value).map_err(|error| format!("{text:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_the_operator_renders_them() {
        assert_eq!(
            parse_addr("10.0.0.7:8080").unwrap(),
            "10.0.0.7:8080".parse().unwrap()
        );
        assert_eq!(
            parse_addr("fd00::7:8080").unwrap(),
            "[fd00::7]:8080".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("http://127.0.0.1:8081/").unwrap(),
            "127.0.0.1:8081".parse().unwrap()
        );
        assert!(parse_addr("pod:8080").is_err());
    }

    #[test]
    fn fractions_and_options_are_checked() {
        assert!(parse_fraction("1.5").is_err());
        assert_eq!(parse_fraction("0.25").unwrap(), 0.25);
        assert_eq!(
            parse_option("aws_endpoint=http://a:9000").unwrap(),
            ("aws_endpoint".into(), "http://a:9000".into())
        );
        assert!(parse_seconds("-1").is_err());
    }
}

/// How the table is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TableFormat {
    /// Hive-partitioned Parquet files.
    Parquet,
    /// The same files with a Delta Lake transaction log.
    Delta,
}
