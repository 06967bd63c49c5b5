//! Header names the gateway, the capture sidecar and the model server agree on, and the one
//! filter of connection-level (hop-by-hop) headers both proxies apply.

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// The request id: read from the client or assigned by the first proxy, passed on to the pod,
/// recorded in the inference table and always answered.
pub const REQUEST_ID: &str = "x-request-id";
/// The entity that answered, on every gateway answer.
pub const SERVED_MODEL_NAME: &str = "served-model-name";
/// The `configVersion` of the endpoint config that routed the request.
pub const CONFIG_VERSION: &str = "x-sluice-config-version";
/// The gateway's mark on mirrored (shadow) requests, recorded in `request_metadata`.
pub const SHADOW: &str = "x-sluice-shadow";
/// The caller's identity as the gateway verified it (the user name, or an API key's principal).
pub const REQUESTER: &str = "x-sluice-requester";
/// The verified caller's groups, comma-separated.
pub const GROUPS: &str = "x-sluice-groups";
/// The id of the API key the caller presented, when it used one.
pub const KEY_ID: &str = "x-sluice-key-id";
/// What the gateway's input guardrails did to the request (`input=pass`,
/// `input=masked:EMAIL_ADDRESS,…`), recorded by the capture sidecar.
pub const GUARDRAILS: &str = "x-sluice-guardrails";
/// Set (`mask`) on requests of an endpoint whose output guardrails act on personal data: the
/// capture sidecar then masks personal data in the answer it records (the caller got it masked
/// or refused; the inference table holds it masked too), after a stream is reassembled, so a
/// finding split across events is caught.
pub const PII_IN_ANSWERS: &str = "x-sluice-pii-in-answers";
/// Headers that carry the client's own request id, first match wins (a JSON body's
/// `client_request_id` is used when none is present).
pub const CLIENT_REQUEST_ID: &[&str] = &["x-client-request-id", "client-request-id"];
/// Identity headers of common auth proxies. The gateway removes them, with every `x-sluice-*`
/// header a client sent, before it writes the verified identity: what reaches a pod about the
/// caller is never the caller's own claim.
pub const CLIENT_IDENTITY: &[&str] = &[
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-remote-user",
    "x-remote-group",
    "remote-user",
];

/// A fresh request id: 32 random hex digits, written without the formatting machinery (the
/// gateway and the capture sidecar make one per request that comes without).
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    for (half, random) in id
        .chunks_exact_mut(16)
        .zip([fastrand::u64(..), fastrand::u64(..)])
    {
        for (i, digit) in half.iter_mut().enumerate() {
            *digit = HEX[((random >> (60 - 4 * i)) & 0xf) as usize];
        }
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The names above as [`HeaderName`]s, made at compile time: a name given as `&str` is parsed
/// and hashed on every insert or lookup, on every request.
pub mod names {
    use http::HeaderName;

    /// [`super::REQUEST_ID`].
    pub const REQUEST_ID: HeaderName = HeaderName::from_static(super::REQUEST_ID);
    /// [`super::SERVED_MODEL_NAME`].
    pub const SERVED_MODEL_NAME: HeaderName = HeaderName::from_static(super::SERVED_MODEL_NAME);
    /// [`super::CONFIG_VERSION`].
    pub const CONFIG_VERSION: HeaderName = HeaderName::from_static(super::CONFIG_VERSION);
    /// [`super::SHADOW`].
    pub const SHADOW: HeaderName = HeaderName::from_static(super::SHADOW);
    /// [`super::REQUESTER`].
    pub const REQUESTER: HeaderName = HeaderName::from_static(super::REQUESTER);
    /// [`super::GROUPS`].
    pub const GROUPS: HeaderName = HeaderName::from_static(super::GROUPS);
    /// [`super::KEY_ID`].
    pub const KEY_ID: HeaderName = HeaderName::from_static(super::KEY_ID);
    /// [`super::GUARDRAILS`].
    pub const GUARDRAILS: HeaderName = HeaderName::from_static(super::GUARDRAILS);
    /// [`super::PII_IN_ANSWERS`].
    pub const PII_IN_ANSWERS: HeaderName = HeaderName::from_static(super::PII_IN_ANSWERS);
    /// [`super::CLIENT_REQUEST_ID`], in the same order.
    pub const CLIENT_REQUEST_ID: [HeaderName; 2] = [
        HeaderName::from_static(super::CLIENT_REQUEST_ID[0]),
        HeaderName::from_static(super::CLIENT_REQUEST_ID[1]),
    ];
    /// The client addresses a proxy appends to (de facto standard; not in `http::header`).
    pub const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
}

/// Connection-level headers that never cross a proxy (RFC 9110 §7.6.1), besides those the
/// `Connection` header names.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers of `headers`: the fixed set, `Keep-Alive`, and every header
/// the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one look at the names before any removal (a removal
    // hashes its name). Without `Connection` no other header can be named by it.
    let hop_by_hop = |name: &HeaderName| HOP_BY_HOP.contains(name) || name == KEEP_ALIVE;
    if !headers.keys().any(hop_by_hop) {
        return;
    }
    // `Connection: keep-alive` (what most HTTP/1.1 peers send) and `close` are options, not
    // header names: only other tokens are parsed as names.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| {
            !token.eq_ignore_ascii_case("keep-alive") && !token.eq_ignore_ascii_case("close")
        })
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    let present: Vec<HeaderName> = headers.keys().filter(|n| hop_by_hop(n)).cloned().collect();
    for name in present.iter().chain(&named) {
        headers.remove(name);
    }
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_lowercase_hex_digits_and_differ() {
        let id = new_request_id();
        let id = id.to_str().expect("ascii");
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "close, x-private"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "h2c"),
            ("te", "trailers"),
            ("x-private", "1"),
            ("content-type", "application/json"),
            ("authorization", "Bearer t"),
            (REQUEST_ID, "abc"),
        ] {
            headers.insert(HeaderName::from_static(name), value.parse().expect("value"));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-type", REQUEST_ID]);
    }
}
