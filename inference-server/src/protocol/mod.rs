//! Request and response formats shared by every subcommand of the data plane; they live in the
//! `sluice-protocol` crate (so that the fuzz targets can link them) and keep their paths here.

pub use sluice_protocol::{ApiError, ErrorKind, error, openai, scoring};
