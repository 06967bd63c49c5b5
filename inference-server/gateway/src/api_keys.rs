//! `inference-server api-key`: mint, list and revoke Sluice API keys. In a cluster a key is a
//! Secret in the gateway's namespace (see [`crate::auth::keys`]); with `--file` it is a record
//! of the keys file a standalone gateway reads (`--api-keys-file`). The key itself is printed
//! once, at creation, and stored nowhere.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use sluice_protocol::units::parse_duration;

use crate::auth::keys::{self, KeyFileError, KeyRecord};

/// The flags of `inference-server api-key`.
#[derive(Debug, clap::Args)]
pub struct ApiKeyArgs {
    #[command(subcommand)]
    command: ApiKeyCommand,
    /// Namespace of the key Secrets: the gateway's (the release namespace); default: the
    /// kubeconfig's namespace.
    #[arg(long, global = true, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// A standalone gateway's keys file (`gateway --api-keys-file`) instead of the cluster.
    #[arg(long, global = true)]
    file: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum ApiKeyCommand {
    /// Make a key and print it (once: only its salted hash is stored).
    Create {
        /// Who the key acts as: the requester recorded for its calls.
        #[arg(long)]
        principal: String,
        /// A group of that principal (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// An endpoint the key may call, `name` or `namespace/name` (repeatable); every
        /// endpoint when none is given.
        #[arg(long = "endpoint")]
        endpoints: Vec<String>,
        /// How long the key works (e.g. `90d`, `12h`); forever when unset.
        #[arg(long, value_parser = parse_days)]
        expires_in: Option<Duration>,
    },
    /// List the keys: id, principal, groups, endpoints, expiry (never a secret).
    List,
    /// Revoke a key by id: its Secret (or record) is deleted, and the gateway refuses it.
    Revoke {
        /// The key id (the 12 hex digits after `sluice_`).
        id: String,
    },
}

/// Why an `api-key` command failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    /// No Kubernetes client.
    #[error("cannot reach the Kubernetes API (set KUBECONFIG, or use --file): {0}")]
    Client(#[source] Box<kube::Error>),
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The cause.
        source: Box<kube::Error>,
    },
    /// The keys file could not be read or written.
    #[error("keys file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: KeyFileError,
    },
    /// No key with that id.
    #[error("no API key {0}")]
    NoSuchKey(String),
    /// No random bytes.
    #[error(transparent)]
    Random(#[from] keys::NoRandom),
    /// The expiry does not fit a timestamp.
    #[error("--expires-in is too far in the future")]
    Expiry,
}

/// `90d`, `12h`, `30m`: [`parse_duration`] plus days.
fn parse_days(text: &str) -> Result<Duration, String> {
    match text.strip_suffix('d') {
        Some(days) => days
            .parse::<u64>()
            .map(|d| Duration::from_secs(d * 86_400))
            .map_err(|e| format!("`{text}`: {e}")),
        None => parse_duration(text),
    }
}

/// Runs one `api-key` command, printing its result on stdout.
pub async fn run(args: ApiKeyArgs) -> Result<(), ApiKeyError> {
    match args.file {
        Some(path) => run_on_file(args.command, &path),
        None => {
            let client = Client::try_default()
                .await
                .map_err(|e| ApiKeyError::Client(Box::new(e)))?;
            let namespace = args
                .namespace
                .unwrap_or_else(|| client.default_namespace().to_string());
            run_on_cluster(args.command, client, &namespace).await
        }
    }
}

fn create(
    principal: String,
    groups: Vec<String>,
    endpoints: Vec<String>,
    expires_in: Option<Duration>,
) -> Result<keys::Minted, ApiKeyError> {
    let expires = expires_in
        .map(|d| {
            SignedDuration::try_from(d)
                .ok()
                .and_then(|d| Timestamp::now().checked_add(d).ok())
                .ok_or(ApiKeyError::Expiry)
        })
        .transpose()?;
    Ok(keys::mint(&principal, groups, endpoints, expires)?)
}

fn describe(record: &KeyRecord) -> String {
    let or = |list: &[String], none: &str| {
        if list.is_empty() {
            none.to_string()
        } else {
            list.join(",")
        }
    };
    format!(
        "{}\t{}\tgroups={}\tendpoints={}\texpires={}",
        record.id,
        record.principal,
        or(&record.groups, "-"),
        or(&record.endpoints, "*"),
        record
            .expires
            .map_or_else(|| "never".to_string(), |t| t.to_string())
    )
}

fn announce(minted: &keys::Minted, where_: &str) {
    eprintln!(
        "created API key {} for {} in {where_}; it is shown once, keep it now:",
        minted.record.id, minted.record.principal
    );
    println!("{}", minted.key);
}

async fn run_on_cluster(
    command: ApiKeyCommand,
    client: Client,
    namespace: &str,
) -> Result<(), ApiKeyError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let api = |what: String| {
        move |e: kube::Error| ApiKeyError::Api {
            what,
            source: Box::new(e),
        }
    };
    match command {
        ApiKeyCommand::Create {
            principal,
            groups,
            endpoints,
            expires_in,
        } => {
            let minted = create(principal, groups, endpoints, expires_in)?;
            let secret = keys::to_secret(&minted.record, namespace);
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .map_err(api(format!(
                    "creating Secret {}/{}",
                    namespace,
                    keys::secret_name(&minted.record.id)
                )))?;
            announce(&minted, &format!("namespace {namespace}"));
        }
        ApiKeyCommand::List => {
            let list = secrets
                .list(&ListParams::default().labels(keys::LABEL))
                .await
                .map_err(api(format!("listing API key Secrets in {namespace}")))?;
            for secret in &list.items {
                match keys::from_secret(secret) {
                    Ok(record) => println!("{}", describe(&record)),
                    Err(why) => println!(
                        "{}\tunreadable: {why}",
                        secret.metadata.name.as_deref().unwrap_or("?")
                    ),
                }
            }
        }
        ApiKeyCommand::Revoke { id } => {
            let name = keys::secret_name(&id);
            match secrets.delete(&name, &DeleteParams::default()).await {
                Ok(_) => eprintln!("revoked API key {id} (deleted Secret {namespace}/{name})"),
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    return Err(ApiKeyError::NoSuchKey(id));
                }
                Err(e) => return Err(api(format!("deleting Secret {namespace}/{name}"))(e)),
            }
        }
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<KeyRecord>, ApiKeyError> {
    keys::read_records(path).map_err(|source| ApiKeyError::File {
        path: path.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, records: &[KeyRecord]) -> Result<(), ApiKeyError> {
    let file = |source: KeyFileError| ApiKeyError::File {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_norway::to_string(records).map_err(|e| file(KeyFileError::Yaml(e)))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| file(KeyFileError::Io(e)))?;
    std::fs::rename(&tmp, path).map_err(|e| file(KeyFileError::Io(e)))
}

fn run_on_file(command: ApiKeyCommand, path: &Path) -> Result<(), ApiKeyError> {
    let mut records = read_file(path)?;
    match command {
        ApiKeyCommand::Create {
            principal,
            groups,
            endpoints,
            expires_in,
        } => {
            let minted = create(principal, groups, endpoints, expires_in)?;
            records.push(minted.record.clone());
            write_file(path, &records)?;
            announce(&minted, &path.display().to_string());
        }
        ApiKeyCommand::List => {
            for record in &records {
                println!("{}", describe(record));
            }
        }
        ApiKeyCommand::Revoke { id } => {
            let before = records.len();
            records.retain(|r| r.id != id);
            if records.len() == before {
                return Err(ApiKeyError::NoSuchKey(id));
            }
            write_file(path, &records)?;
            eprintln!("revoked API key {id} (removed from {})", path.display());
        }
    }
    Ok(())
}
