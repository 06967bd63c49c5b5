//! MLflow rules shared by the operator and the data plane.
//!
//! - AI Gateway names: MLflow endpoint names may hold `_`, `.` and capitals, Kubernetes object
//!   names may not. One rule maps the first to the second, used by the importer that writes
//!   ServingEndpoints from an MLflow config and by the gateway's
//!   `/endpoints/{name}/invocations`, so an MLflow client keeps calling the names it knows.
//! - Registry references (`models:/`, `runs:/`): the source check (`fetch --check`) says what
//!   a reference resolved to ([`resolved_summary`]), and the operator reads it back
//!   ([`resolved_location`]) into the ModelVersion's `status.resolvedUri`.

/// Whether `uri` is a registry reference the source check resolves.
pub fn is_reference(uri: &str) -> bool {
    uri.starts_with("models:/") || uri.starts_with("runs:/")
}

const RESOLVED_TO: &str = " resolved to ";

/// The source check's summary of a reference: `<reference> resolved to <location>: <found>`.
pub fn resolved_summary(reference: &str, location: &str, found: &str) -> String {
    format!("{reference}{RESOLVED_TO}{location}: {found}")
}

/// The location in a summary [`resolved_summary`] wrote.
pub fn resolved_location(summary: &str) -> Option<&str> {
    let (_, rest) = summary.split_once(RESOLVED_TO)?;
    let location = rest.split_once(": ").map_or(rest, |(location, _)| location);
    (!location.is_empty() && !location.contains(char::is_whitespace)).then_some(location)
}

/// Annotation holding the MLflow name an imported ServingEndpoint was made from.
pub const NAME_ANNOTATION: &str = "serving.sluice.dev/mlflow-name";

/// The ServingEndpoint name of MLflow endpoint `name`: lowercase, `_` and `.` as `-`; `None`
/// when that is no DNS-1035 label (starts with a letter, at most 63 characters, ends with a
/// letter or digit).
pub fn endpoint_name(name: &str) -> Option<String> {
    let out: String = name
        .chars()
        .map(|c| match c {
            '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    let valid = (1..=63).contains(&out.len())
        && out.starts_with(|c: char| c.is_ascii_lowercase())
        && out.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && out
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    valid.then_some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_resolved_location_reads_back() {
        let summary = super::resolved_summary(
            "models:/iris@champion",
            "mlflow-artifacts:/1/abc/artifacts/model",
            "readable, 3 objects, 1.2 KiB",
        );
        assert_eq!(
            super::resolved_location(&summary),
            Some("mlflow-artifacts:/1/abc/artifacts/model")
        );
        assert_eq!(
            super::resolved_location("s3://b/k: readable, 1 object"),
            None
        );
        assert!(super::is_reference("runs:/r/model") && !super::is_reference("s3://b/k"));
    }

    use super::*;

    #[test]
    fn mlflow_names_map_onto_kubernetes_names() {
        assert_eq!(endpoint_name("chat").as_deref(), Some("chat"));
        assert_eq!(
            endpoint_name("Azure_Chat.v2").as_deref(),
            Some("azure-chat-v2")
        );
        for bad in ["", "9lives", "trailing_", "spa ce", &"x".repeat(64)] {
            assert_eq!(endpoint_name(bad), None, "{bad:?}");
        }
    }
}
