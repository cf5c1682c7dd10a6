//! The self reviews clients ask before acting (`kubectl auth can-i`, `kubectl auth whoami`, the
//! Python client's `create_self_subject_access_review`): `SelfSubjectAccessReview`,
//! `SelfSubjectRulesReview` and `SelfSubjectReview`, answered as a cluster that authorizes every
//! request answers them — the devcluster authenticates no one and allows everything. Nothing is
//! stored: a review is a question, and the answer is the request with its `status` filled in.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::status::{ApiError, ApiResult};

/// The user every request is made as: the kubeconfig's user, in the groups a cluster admin has.
const USER: &str = "lantern-devcluster";

/// Which review `group`/`version`/`rest` names, if any.
pub fn kind(group: &str, version: &str, rest: &[&str]) -> Option<&'static str> {
    match (group, version, rest) {
        ("authorization.k8s.io", "v1", ["selfsubjectaccessreviews"]) => Some("SelfSubjectAccessReview"),
        ("authorization.k8s.io", "v1", ["selfsubjectrulesreviews"]) => Some("SelfSubjectRulesReview"),
        ("authentication.k8s.io", "v1", ["selfsubjectreviews"]) => Some("SelfSubjectReview"),
        _ => None,
    }
}

/// Answers a review of `kind` in `group` (created with POST), the request's `body` parsed —
/// `None` for a protobuf body (kubectl sends its reviews so), whose question changes nothing of
/// the answer.
pub fn answer(group: &str, kind: &str, method: &Method, body: Option<ApiResult<Value>>) -> ApiResult<Response> {
    if method != Method::POST {
        return Err(ApiError::method_not_allowed(format!("{method} is not supported on {kind}; create one")));
    }
    let mut review = match body {
        Some(body) => body?,
        None => json!({"apiVersion": format!("{group}/v1"), "kind": kind, "spec": {}}),
    };
    if !review.is_object() {
        return Err(ApiError::bad_request(format!("a {kind} is an object")));
    }
    review["status"] = status(kind);
    review["metadata"]["creationTimestamp"] = Value::Null;
    Ok((StatusCode::CREATED, Json(review)).into_response())
}

/// What a cluster that allows everything says.
fn status(kind: &str) -> Value {
    match kind {
        "SelfSubjectAccessReview" => json!({"allowed": true, "reason": "the devcluster authorizes every request"}),
        "SelfSubjectRulesReview" => json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": false,
        }),
        _ => json!({"userInfo": {"username": USER, "groups": ["system:masters", "system:authenticated"]}}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reviews_are_named_by_path_and_answered_as_allowed() {
        assert_eq!(kind("authorization.k8s.io", "v1", &["selfsubjectaccessreviews"]), Some("SelfSubjectAccessReview"));
        assert_eq!(kind("authentication.k8s.io", "v1", &["selfsubjectreviews"]), Some("SelfSubjectReview"));
        assert_eq!(kind("apps", "v1", &["deployments"]), None);
        assert_eq!(status("SelfSubjectAccessReview")["allowed"], true);
        assert_eq!(status("SelfSubjectReview")["userInfo"]["username"], USER);
        assert!(answer("authorization.k8s.io", "SelfSubjectAccessReview", &Method::GET, None).is_err());
    }
}
