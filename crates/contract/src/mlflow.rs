//! MLflow AI Gateway names: MLflow endpoint names may hold `_`, `.` and capitals, Kubernetes
//! object names may not. One rule maps the first to the second, used by the importer that
//! writes ServingEndpoints from an MLflow config and by the gateway's
//! `/endpoints/{name}/invocations`, so an MLflow client keeps calling the names it knows.

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
