//! CEL fragments shared by the ServingEndpoint validation rules.
//!
//! They are macros, not functions, because the rules are string literals assembled at compile
//! time with `concat!`, so the generated CRD is fully deterministic.

/// The effective name of a served entity bound to the CEL variable `$e`: its `name`, else
/// `<model>-<version>` or `<model>-<alias>` (external models must set `name`).
macro_rules! cel_entity_name {
    ($e:literal) => {
        concat!(
            "(has(",
            $e,
            ".name) ? ",
            $e,
            ".name : (has(",
            $e,
            ".model) ? ",
            $e,
            ".model + '-' + (has(",
            $e,
            ".version) ? string(",
            $e,
            ".version) : (has(",
            $e,
            ".alias) ? ",
            $e,
            ".alias : '')) : ''))"
        )
    };
}

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

pub(crate) use {cel_entity_name, cel_route_target};
