//! The model slot: loading, loaded or failed, shared by the loader task and the routes.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sluice_protocol::{ApiError, ErrorKind};

use super::runtime::Runtime;

/// Where the model stands.
enum LoadState {
    Loading { since: Instant },
    Ready(Arc<Runtime>),
    Failed(String),
}

/// The one model of this server.
pub struct ModelSlot {
    name: String,
    state: RwLock<LoadState>,
}

impl ModelSlot {
    /// A slot whose model starts loading now.
    pub fn loading(name: String) -> Self {
        Self {
            name,
            state: RwLock::new(LoadState::Loading {
                since: Instant::now(),
            }),
        }
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Marks the model loaded.
    pub fn set_ready(&self, runtime: Runtime) {
        *self.write() = LoadState::Ready(Arc::new(runtime));
    }

    /// Marks the load failed, for good.
    pub fn set_failed(&self, reason: String) {
        *self.write() = LoadState::Failed(reason);
    }

    /// The loaded model, or 503 saying why there is none.
    pub fn runtime(&self) -> Result<Arc<Runtime>, ApiError> {
        match &*self.read() {
            LoadState::Ready(runtime) => Ok(Arc::clone(runtime)),
            LoadState::Loading { since } => Err(ApiError::new(
                ErrorKind::Unavailable,
                format!(
                    "model `{}` is still loading ({:.1}s so far)",
                    self.name,
                    since.elapsed().as_secs_f64()
                ),
            )
            .with_retry_after(Duration::from_secs(1))),
            LoadState::Failed(reason) => Err(ApiError::new(
                ErrorKind::Unavailable,
                format!("model `{}` failed to load: {reason}", self.name),
            )),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, LoadState> {
        // A poisoned lock only means a writer panicked mid-assignment of a plain enum.
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, LoadState> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
