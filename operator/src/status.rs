//! What every controller's status writing shares (pure): conditions that keep their transition
//! times, and the merge patch that writes a status whole.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::Serialize;

/// The JSON merge patch that turns the stored status into `next`: a field `next` no longer has
/// is set to null (a merge patch leaves omitted fields as they were).
pub fn merge_patch<S: Serialize>(previous: Option<&S>, next: &S) -> serde_json::Value {
    let mut status = serde_json::to_value(next).unwrap_or_default();
    let before = previous.map(serde_json::to_value).and_then(Result::ok).unwrap_or_default();
    if let (Some(fields), Some(old)) = (status.as_object_mut(), before.as_object()) {
        for key in old.keys() {
            fields.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    serde_json::json!({"status": status})
}

/// Condition `type_` with `status`, keeping its `lastTransitionTime` while its status stays
/// the same.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let before = previous.iter().find(|c| c.type_ == type_);
    let since = match before {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: since,
        observed_generation: generation,
    }
}
