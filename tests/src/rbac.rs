//! Callers with exactly the RBAC a test gives them: a ServiceAccount, a Role of the rules the
//! test names bound to it, and a token of it from the TokenRequest API, as a user's workload
//! would hold one. The gateway checks these tokens with the real API server.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// A Role `name` in `ns` with `rules`, bound to `subject` (a RoleBinding of the same name).
pub async fn grant(client: &Client, ns: &str, name: &str, rules: Value, subject: Value) {
    let apply = PatchParams::apply("test-user");
    Api::<Role>::namespaced(client.clone(), ns)
        .patch(
            name,
            &apply,
            &Patch::Apply(
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": name}, "rules": rules}),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("Role {name}: {e}"));
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .patch(
            name,
            &apply,
            &Patch::Apply(
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [subject]}),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("RoleBinding {name}: {e}"));
}

/// The RBAC subject of ServiceAccount `account` of `ns`.
pub fn service_account(ns: &str, account: &str) -> Value {
    json!({"kind": "ServiceAccount", "name": account, "namespace": ns})
}

/// Rules of `verbs` on `servingendpoints` (only those named `names`, when given).
pub fn on_endpoints(verbs: &[&str], names: &[&str]) -> Value {
    let mut rule = json!({"apiGroups": ["serving.sluice.dev"], "resources": ["servingendpoints"],
                          "verbs": verbs});
    if !names.is_empty() {
        rule["resourceNames"] = json!(names);
    }
    json!([rule])
}

/// ServiceAccount `account` of `ns` (made when missing) with a Role of `rules`, and an
/// hour-long token of it.
pub async fn account_token(client: &Client, ns: &str, account: &str, rules: Value) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    accounts
        .patch(
            account,
            &PatchParams::apply("test-user"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": account}})),
        )
        .await
        .unwrap_or_else(|e| panic!("ServiceAccount {account}: {e}"));
    grant(client, ns, account, rules, service_account(ns, account)).await;
    accounts
        .create_token_request(
            account,
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {account}: {e}"))
        .status
        .and_then(|s| s.token)
        .unwrap_or_else(|| panic!("no token for {account}"))
}
