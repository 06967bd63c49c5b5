//! Errors of the reconcilers, with a bounded category for events and metric labels.

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("{action}: {source}")]
    Kube {
        /// What the operator was doing.
        action: String,
        /// Underlying error.
        #[source]
        source: kube::Error,
    },
    /// An object lacked a field the API server always sets (name, namespace).
    #[error("object is missing {0}")]
    MissingField(&'static str),
    /// A watch's store was dropped before it synced (the controller is stopping).
    #[error("a watch store stopped before it synced: {0}")]
    StoreStopped(#[from] sluice_watch::StoreStopped),
    /// A status could not be serialised.
    #[error("serialising status: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    /// Every value [`Error::category`] returns.
    pub const CATEGORIES: &'static [&'static str] =
        &["kube_api", "invalid_object", "store_stopped", "serialize"];

    /// A small, fixed set of labels: safe for metrics and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_api",
            Error::MissingField(_) => "invalid_object",
            Error::StoreStopped(_) => "store_stopped",
            Error::Serialize(_) => "serialize",
        }
    }
}

/// Wraps a kube error with what was being done.
pub fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}
