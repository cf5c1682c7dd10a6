//! What a write does to an object, as pure functions over JSON: the metadata the server owns
//! (uid, creationTimestamp, generation, deletion fields), the status/spec split of the `status`
//! subresource, and the checks every object passes.

use serde_json::{Map, Value, json};

use crate::resources::ResourceType;
use crate::status::{ApiError, ApiResult, Cause};

/// Characters of a `generateName` suffix, as the apiserver draws them.
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A new object from a create request's body: apiVersion and kind checked, the namespace the
/// path's, the name given or generated, status cleared where it is a subresource, and the
/// server's metadata set.
pub fn prepare_create(rtype: &ResourceType, namespace: Option<&str>, mut body: Value, now: &str) -> ApiResult<Value> {
    check_type(rtype, &body)?;
    let metadata = metadata_of(&mut body)?;
    if metadata.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
        let prefix = metadata.get("generateName").and_then(Value::as_str).unwrap_or_default().to_owned();
        if prefix.is_empty() {
            return Err(ApiError::invalid(
                &rtype.group,
                &rtype.kind,
                "",
                vec![Cause {
                    reason: "FieldValueRequired",
                    message: "Required value: name or generateName is required".into(),
                    field: "metadata.name".into(),
                }],
            ));
        }
        metadata.insert("name".into(), Value::String(format!("{prefix}{}", random_suffix())));
    }
    set_namespace(rtype, metadata, namespace)?;
    metadata.insert("uid".into(), Value::String(uid()));
    metadata.insert("creationTimestamp".into(), Value::String(now.to_owned()));
    metadata.insert("generation".into(), json!(1));
    for server_owned in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
        metadata.remove(server_owned);
    }
    if rtype.status
        && let Some(object) = body.as_object_mut()
    {
        // A built-in kind's status is a struct, written `{}` until its controller fills it in.
        match rtype.builtin {
            true => object.insert("status".into(), json!({})),
            false => object.remove("status"),
        };
    }
    validate_name(rtype, &body)?;
    Ok(body)
}

/// The object an update (PUT, or the result of a patch) stores over `stored`. On the main
/// resource the stored status is kept; on `/status` only the status is taken. The server's
/// metadata always comes from `stored`, and `generation` goes up when anything but metadata and
/// status changed.
pub fn prepare_update(rtype: &ResourceType, stored: &Value, mut body: Value, status_only: bool) -> ApiResult<Value> {
    check_type(rtype, &body)?;
    let name = stored["metadata"]["name"].as_str().unwrap_or_default();
    if let Some(given) = body["metadata"]["name"].as_str()
        && given != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({given}) does not match the name on the URL ({name})"
        )));
    }
    if status_only {
        let mut updated = stored.clone();
        updated["status"] = body.get("status").cloned().unwrap_or(Value::Null);
        if updated["status"].is_null()
            && let Some(object) = updated.as_object_mut()
        {
            object.remove("status");
        }
        // Metadata that a status write may change: labels, annotations, finalizers, owners.
        for field in ["labels", "annotations", "finalizers", "ownerReferences"] {
            copy_field(&body["metadata"], &mut updated["metadata"], field);
        }
        return Ok(updated);
    }
    if rtype.status {
        match stored.get("status") {
            Some(status) => body["status"] = status.clone(),
            None => {
                if let Some(object) = body.as_object_mut() {
                    object.remove("status");
                }
            }
        }
    }
    let metadata = metadata_of(&mut body)?;
    for owned in
        ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "namespace", "generation"]
    {
        match stored["metadata"].get(owned) {
            Some(value) => metadata.insert(owned.to_owned(), value.clone()),
            None => metadata.remove(owned),
        };
    }
    metadata.insert("name".into(), Value::String(name.to_owned()));
    if spec_of(stored) != spec_of(&body) {
        let generation = stored["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        body["metadata"]["generation"] = json!(generation);
    }
    Ok(body)
}

/// Everything but metadata and status: what `generation` counts changes of.
fn spec_of(object: &Value) -> Map<String, Value> {
    let mut rest = object.as_object().cloned().unwrap_or_default();
    for ignored in ["metadata", "status", "apiVersion", "kind"] {
        rest.remove(ignored);
    }
    rest
}

fn copy_field(from: &Value, to: &mut Value, field: &str) {
    match from.get(field) {
        Some(value) => to[field] = value.clone(),
        None => {
            if let Some(object) = to.as_object_mut() {
                object.remove(field);
            }
        }
    }
}

/// The body must be an object of this type (apiVersion and kind may be left out).
fn check_type(rtype: &ResourceType, body: &Value) -> ApiResult<()> {
    if !body.is_object() {
        return Err(ApiError::bad_request("the request body is not a JSON object"));
    }
    let kind = body.get("kind").and_then(Value::as_str).unwrap_or(&rtype.kind);
    let api_version = body.get("apiVersion").and_then(Value::as_str).map(str::to_owned).unwrap_or(rtype.api_version());
    if kind != rtype.kind || api_version != rtype.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({}), or the kind ({kind}) is not {}",
            rtype.api_version(),
            rtype.kind
        )));
    }
    Ok(())
}

fn metadata_of(body: &mut Value) -> ApiResult<&mut Map<String, Value>> {
    let object = body.as_object_mut().ok_or_else(|| ApiError::bad_request("the request body is not a JSON object"))?;
    let metadata = object.entry("metadata").or_insert_with(|| json!({}));
    metadata.as_object_mut().ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

fn set_namespace(rtype: &ResourceType, metadata: &mut Map<String, Value>, namespace: Option<&str>) -> ApiResult<()> {
    match (rtype.namespaced, namespace) {
        (true, Some(namespace)) => {
            if let Some(given) = metadata.get("namespace").and_then(Value::as_str)
                && !given.is_empty()
                && given != namespace
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            metadata.insert("namespace".into(), Value::String(namespace.to_owned()));
        }
        (true, None) => return Err(ApiError::bad_request(format!("{} must be created in a namespace", rtype.plural))),
        (false, _) => {
            metadata.remove("namespace");
        }
    }
    Ok(())
}

/// Names are DNS subdomains (lowercase alphanumerics, `-` and `.`, at most 253 characters);
/// namespaces and services are DNS labels.
fn validate_name(rtype: &ResourceType, object: &Value) -> ApiResult<()> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let label = matches!(rtype.plural.as_str(), "namespaces" | "services");
    let (limit, allowed_dot) = if label { (63, false) } else { (253, true) };
    let valid_chars =
        name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (allowed_dot && c == '.'));
    let edges =
        name.starts_with(|c: char| c.is_ascii_alphanumeric()) && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid_chars && edges && name.len() <= limit {
        return Ok(());
    }
    let shape = match label {
        true => {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        }
        false => {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        }
    };
    Err(ApiError::invalid(
        &rtype.group,
        &rtype.kind,
        name,
        vec![Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {name:?}: {shape} (at most {limit} characters)"),
            field: "metadata.name".into(),
        }],
    ))
}

fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..5).map(|_| char::from(SUFFIX_ALPHABET[rng.random_range(0..SUFFIX_ALPHABET.len())])).collect()
}

/// A random (version 4) UUID.
pub fn uid() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// Now, as metadata timestamps are written (RFC 3339, whole seconds, UTC).
pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The object's finalizers.
pub fn finalizers(object: &Value) -> Vec<String> {
    object["metadata"]["finalizers"]
        .as_array()
        .map(|list| list.iter().filter_map(|f| f.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Sets the apiVersion and kind the type is served as.
pub fn with_type(rtype: &ResourceType, mut object: Value) -> Value {
    object["apiVersion"] = Value::String(rtype.api_version());
    object["kind"] = Value::String(rtype.kind.clone());
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    fn configmaps() -> ResourceType {
        Registry::new().find("", "v1", "configmaps").unwrap()
    }

    fn pods() -> ResourceType {
        Registry::new().find("", "v1", "pods").unwrap()
    }

    #[test]
    fn a_create_gets_the_server_metadata_and_a_generated_name() {
        let body = json!({"metadata": {"generateName": "web-", "uid": "mine"}, "data": {"a": "1"}});
        let created = prepare_create(&configmaps(), Some("default"), body, "2026-01-01T00:00:00Z").unwrap();
        let name = created["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        assert_eq!(created["metadata"]["namespace"], "default");
        assert_ne!(created["metadata"]["uid"], "mine");
        assert_eq!(created["metadata"]["generation"], 1);
        let other_namespace = json!({"metadata": {"name": "x", "namespace": "other"}});
        assert_eq!(prepare_create(&configmaps(), Some("default"), other_namespace, "t").unwrap_err().code, 400);
        let nameless = prepare_create(&configmaps(), Some("default"), json!({}), "t").unwrap_err();
        assert_eq!((nameless.code.as_u16(), nameless.reason), (422, "Invalid"));
        let bad_name = prepare_create(&configmaps(), Some("default"), json!({"metadata": {"name": "Bad_Name"}}), "t");
        assert!(bad_name.unwrap_err().message.contains("RFC 1123"));
        let wrong_kind = json!({"kind": "Secret", "metadata": {"name": "x"}});
        assert_eq!(prepare_create(&configmaps(), Some("default"), wrong_kind, "t").unwrap_err().code, 400);
    }

    #[test]
    fn the_status_subresource_splits_writes() {
        let stored = json!({
            "metadata": {"name": "p", "uid": "u", "generation": 1, "resourceVersion": "5"},
            "spec": {"containers": []},
            "status": {"phase": "Running"},
        });
        let spec_change =
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Failed"}});
        let updated = prepare_update(&pods(), &stored, spec_change.clone(), false).unwrap();
        assert_eq!(updated["status"]["phase"], "Running", "the main resource keeps the stored status");
        assert_eq!(
            (updated["metadata"]["uid"].as_str(), updated["metadata"]["generation"].as_i64()),
            (Some("u"), Some(2))
        );
        let status = prepare_update(&pods(), &stored, spec_change, true).unwrap();
        assert_eq!(
            (status["status"]["phase"].as_str(), status["spec"]["containers"].as_array().unwrap().len()),
            (Some("Failed"), 0)
        );
        let relabel = json!({"metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {"containers": []}});
        assert_eq!(prepare_update(&pods(), &stored, relabel, false).unwrap()["metadata"]["generation"], 1);
        let renamed = json!({"metadata": {"name": "q"}});
        assert_eq!(prepare_update(&pods(), &stored, renamed, false).unwrap_err().code, 400);
    }
}
