//! The Kubernetes side of the checks: TokenReview (who does this token belong to?) and
//! SubjectAccessReview (may they `query` this ServingEndpoint?), as the API server decides them.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::{Api, Client, api::PostParams};

use super::Identity;

/// The RBAC verb that lets a subject call an endpoint through the gateway.
pub const VERB: &str = "query";
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

/// Whether `who` may `query` the endpoint `name` of `namespace`; the API server's reason when
/// not.
pub async fn may_query(
    client: &Client,
    who: &Identity,
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
                verb: Some(VERB.into()),
                group: Some(GROUP.into()),
                resource: Some(RESOURCE.into()),
                name: Some(name.to_string()),
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
