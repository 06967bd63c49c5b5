//! The `request_metadata` keys of an inference-table row that more than one part knows: the
//! capture sidecar writes them, the monitor's operational profile reads them.

/// Milliseconds from the request to the answer's first byte (a stream's first token), for
/// answers that passed through the sidecar.
pub const TIME_TO_FIRST_BYTE_MS: &str = "time_to_first_byte_ms";
/// The gateway's input guardrail verdict: `input=pass`, `input=masked:<KIND>,…` or
/// [`INPUT_REFUSED`].
pub const GUARDRAILS: &str = "guardrails";
/// The verdict of a request the input guardrail refused (recorded by the gateway, see
/// [`crate::record::RecordOrigin::Guardrail`]).
pub const INPUT_REFUSED: &str = "input=refused";
/// What the request cost at the entity's price (a decimal number), when usage is tracked
/// with a price: the usage row's `cost`, beside the payload so the monitor needs no join.
pub const COST: &str = "cost";
/// The currency of [`COST`].
pub const CURRENCY: &str = "currency";
