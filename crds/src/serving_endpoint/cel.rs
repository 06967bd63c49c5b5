//! CEL fragments shared by the ServingEndpoint validation rules.
//!
//! They are macros, not functions, because the rules are string literals assembled at compile
//! time with `concat!`, so the generated CRD is fully deterministic.

/// The entity a route bound to `$r` points at: `servedEntityName`, or the upstream spelling
/// `servedModelName`.
macro_rules! cel_route_target {
    ($r:literal) => {
        concat!(
            "(has(",
            $r,
            ".servedEntityName) ? ",
            $r,
            ".servedEntityName : (has(",
            $r,
            ".servedModelName) ? ",
            $r,
            ".servedModelName : ''))"
        )
    };
}

pub(crate) use cel_route_target;
