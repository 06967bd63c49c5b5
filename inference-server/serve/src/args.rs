//! Command-line flags of `inference-server serve`, each also read from a `SLUICE_*` variable.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use sluice_protocol::units::{parse_bytes, parse_duration};

use super::model_dir::{Declared, ModelFormat, ModelSignature, ModelTask};

/// `inference-server serve`: flags, with the environment variable each can come from.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// The model directory: an MLflow `MLmodel` or a `sluice-model.yaml` plus the files it
    /// names, or a bare folder that `--declared-format` describes.
    #[arg(long, env = "SLUICE_MODEL_DIR")]
    pub model_dir: PathBuf,
    /// The ModelVersion's `format` (onnx, safetensors, gguf, mlflow, prompt, custom). Without
    /// a manifest it says how to serve the folder; with one it must agree with it.
    #[arg(long, env = "SLUICE_MODEL_FORMAT", value_parser = parse_serde_name::<ModelFormat>)]
    pub declared_format: Option<ModelFormat>,
    /// The ModelVersion's `task` (predict, llm/v1/chat, llm/v1/completions,
    /// llm/v1/embeddings). Without a manifest it picks the runtime; a manifest's task wins.
    #[arg(long, env = "SLUICE_MODEL_TASK", value_parser = parse_serde_name::<ModelTask>)]
    pub declared_task: Option<ModelTask>,
    /// The ModelVersion's `signature` as JSON (camelCase, as the CRD writes it): requests are
    /// checked against it unless the manifest has a signature of its own.
    #[arg(long, env = "SLUICE_MODEL_SIGNATURE", value_parser = parse_signature)]
    pub declared_signature: Option<ModelSignature>,
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

impl ServeArgs {
    /// What the ModelVersion declares about the model, for [`super::model_dir::read`].
    pub fn declared(&self) -> Declared {
        Declared {
            format: self.declared_format,
            task: self.declared_task,
            signature: self.declared_signature.clone(),
        }
    }
}

/// Parses a unit enum value by its serde name (`onnx`, `llm/v1/chat`), so the flags spell
/// values exactly as the CRD does. serde's error lists the accepted names.
fn parse_serde_name<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(text.trim().to_string()))
        .map_err(|error| error.to_string())
}

/// Parses a ModelSignature written as JSON.
fn parse_signature(text: &str) -> Result<ModelSignature, String> {
    serde_json::from_str(text).map_err(|error| {
        format!(
            "not a ModelSignature as JSON ({error}); expected e.g. \
             {{\"inputs\": [{{\"name\": \"x\", \"type\": \"double\"}}]}}"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_values_use_the_crd_spelling() {
        use clap::Parser;

        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let cli = Cli::try_parse_from([
            "serve",
            "--model-dir",
            "/m",
            "--declared-format",
            "gguf",
            "--declared-task",
            "llm/v1/completions",
            "--declared-signature",
            r#"{"inputs": [{"name": "x", "type": "double", "required": false}], "params": [{"name": "k", "type": "long", "default": "3"}]}"#,
        ])
        .unwrap();
        let declared = cli.serve.declared();
        assert_eq!(declared.format, Some(ModelFormat::Gguf));
        assert_eq!(declared.task, Some(ModelTask::Completions));
        let signature = declared.signature.unwrap();
        assert_eq!(signature.inputs[0].required, Some(false));
        assert_eq!(signature.params[0].default.as_deref(), Some("3"));

        let bad =
            Cli::try_parse_from(["serve", "--model-dir", "/m", "--declared-format", "pickle"])
                .unwrap_err()
                .to_string();
        assert!(bad.contains("--declared-format"), "{bad}");
        assert!(bad.contains("`onnx`") && bad.contains("`custom`"), "{bad}");
        let bad = Cli::try_parse_from(["serve", "--model-dir", "/m", "--declared-task", "chat"])
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("--declared-task") && bad.contains("`llm/v1/chat`"),
            "{bad}"
        );
        let bad = Cli::try_parse_from(["serve", "--model-dir", "/m", "--declared-signature", "{"])
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("--declared-signature") && bad.contains("ModelSignature"),
            "{bad}"
        );
    }
}
