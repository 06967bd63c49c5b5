//! The Kubernetes side of the checks: TokenReview (who does this token belong to?) and
//! SubjectAccessReview (may they `query` this ServingEndpoint, or `create` one?), as the API
//! server decides them.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::{Api, Client, api::PostParams};

use super::Identity;

/// The RBAC verb that lets a subject call an endpoint through the gateway.
pub const VERB: &str = Verb::Query.as_str();

/// What a caller asks to do with `servingendpoints`: call one through the gateway, or manage
/// them through the management API (the Kubernetes verbs the API server would check).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// Call the endpoint (the gateway's own verb).
    Query,
    /// Read one endpoint.
    Get,
    /// List the endpoints of a namespace.
    List,
    /// Create an endpoint.
    Create,
    /// Change an endpoint.
    Update,
    /// Delete an endpoint.
    Delete,
}

impl Verb {
    /// The RBAC verb.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Get => "get",
            Self::List => "list",
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}
/// The API group of ServingEndpoints.
pub const GROUP: &str = "serving.sluice.dev";
/// The resource.
pub const RESOURCE: &str = "servingendpoints";

/// The identity the API server gives `token`, or why it refused it.
pub async fn token(client: &Client, token: &str) -> Result<Result<Identity, String>, kube::Error> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: None,
        },
        ..TokenReview::default()
    };
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    let status = reviewed.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Ok(Err(status
            .error
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "the token was not accepted".into())));
    }
    let user = status.user.unwrap_or_default();
    Ok(Ok(Identity {
        user: user.username.unwrap_or_default(),
        groups: user.groups.unwrap_or_default(),
        uid: user.uid,
        key: None,
    }))
}

/// Whether `who` may do `verb` to the endpoint `name` of `namespace` (to any endpoint there
/// when `name` is empty: `list`, `create`); the API server's reason when not.
pub async fn may(
    client: &Client,
    who: &Identity,
    verb: Verb,
    namespace: &str,
    name: &str,
) -> Result<Result<(), String>, kube::Error> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(who.user.clone()),
            groups: Some(who.groups.clone()),
            uid: who.uid.clone(),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_string()),
                verb: Some(verb.as_str().into()),
                group: Some(GROUP.into()),
                resource: Some(RESOURCE.into()),
                name: (!name.is_empty()).then(|| name.to_string()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let reviewed = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    let status = reviewed.status.unwrap_or_default();
    if status.allowed {
        Ok(Ok(()))
    } else {
        Ok(Err(status
            .reason
            .filter(|r| !r.is_empty())
            .or(status.evaluation_error.filter(|e| !e.is_empty()))
            .unwrap_or_else(|| "no RBAC rule allows it".into())))
    }
}
