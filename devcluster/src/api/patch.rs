//! PATCH: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch (lists of
//! objects merged by their key, as the built-in kinds declare), and server-side apply (create
//! when missing, otherwise merge the applied configuration the strategic way).

use axum::body::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use super::ownership::{fields_v1, merge_key};
use super::{Params, Target, parse_body};
use crate::cluster::Cluster;
use crate::objects::{self, with_type};
use crate::status::{ApiError, ApiResult};
use crate::store::resource_version;

/// The kinds of patch, by content type.
#[derive(Clone, Copy, Debug, PartialEq)]
enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

fn patch_type(headers: &HeaderMap) -> ApiResult<PatchType> {
    let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    match content_type.split(';').next().unwrap_or_default().trim() {
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

/// Applies the request's patch to the target object and stores the result. As the apiserver's
/// guaranteed update does, a patch that names no resourceVersion is applied again to the newer
/// object when another write lands between its read and its write, rather than refused.
pub fn apply(
    cluster: &Cluster,
    target: &Target,
    headers: &HeaderMap,
    body: &Bytes,
    params: &Params,
) -> ApiResult<Value> {
    const ATTEMPTS: usize = 8;
    let mut attempt = 1;
    loop {
        match apply_once(cluster, target, headers, body, params)? {
            Written::Done(object) => return Ok(object),
            Written::Raced(_) if attempt < ATTEMPTS => attempt += 1,
            Written::Raced(error) => return Err(error),
        }
    }
}

enum Written {
    Done(Value),
    /// Another write changed the object after this patch read it.
    Raced(ApiError),
}

fn apply_once(
    cluster: &Cluster,
    target: &Target,
    headers: &HeaderMap,
    body: &Bytes,
    params: &Params,
) -> ApiResult<Written> {
    let kind = patch_type(headers)?;
    let status_only = match target.subresource.as_deref() {
        None => false,
        Some("status") if target.rtype.status => true,
        Some(other) => return Err(ApiError::no_route(&format!("{}/{other}", target.rtype.plural))),
    };
    let Some(stored) = cluster.store.get(&target.key()) else {
        if kind == PatchType::Apply && !status_only {
            let applied = parse_apply(body)?;
            let created =
                objects::prepare_create(&target.rtype, target.namespace.as_deref(), applied.clone(), &objects::now())?;
            let mut created = with_type(&target.rtype, created);
            record_manager(&mut created, &applied, params, "Apply");
            return super::insert(cluster, target, created, params).map(Written::Done);
        }
        return Err(target.not_found());
    };
    let patched = patched(kind, &stored, body, target.rtype.builtin, params)?;
    // A patch may not change these; the stored resourceVersion is checked only when the patch
    // names one.
    let expected = match patched["metadata"]["resourceVersion"].as_str() {
        Some(rv) if rv != stored["metadata"]["resourceVersion"].as_str().unwrap_or_default() => {
            return Err(super::store_error(
                target,
                target.name.as_deref().unwrap_or_default(),
                crate::store::StoreError::Conflict { stored: resource_version(&stored) },
            ));
        }
        _ => resource_version(&stored),
    };
    let updated = with_type(&target.rtype, objects::prepare_update(&target.rtype, &stored, patched, status_only)?);
    if super::dry_run(params) {
        return Ok(Written::Done(updated));
    }
    match super::store_update(cluster, target, updated, Some(expected), params) {
        // A patch naming an older resourceVersion than the newer object fails above on retry.
        Err(error) if error.code == StatusCode::CONFLICT => Ok(Written::Raced(error)),
        written => written.map(Written::Done),
    }
}

/// `original` with the request's patch applied. Strategic merge is refused where `strategic` is
/// false (custom resources); server-side apply merges the applied configuration the strategic
/// way and records its manager.
fn patched(kind: PatchType, original: &Value, body: &[u8], strategic: bool, params: &Params) -> ApiResult<Value> {
    match kind {
        PatchType::Merge => {
            let patch: Value = parse_body(&HeaderMap::new(), body)?;
            let mut object = original.clone();
            json_patch::merge(&mut object, &patch);
            Ok(object)
        }
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("the JSON patch is malformed: {e}")))?;
            let mut object = original.clone();
            json_patch::patch(&mut object, &patch)
                .map_err(|e| ApiError::unprocessable(format!("the JSON patch could not be applied: {e}")))?;
            Ok(object)
        }
        PatchType::Strategic if !strategic => Err(ApiError::unsupported_media_type(
            "application/strategic-merge-patch+json (strategic merge patch is not supported for custom resources)",
        )),
        PatchType::Strategic => Ok(strategic_merge(original, &parse_body(&HeaderMap::new(), body)?)),
        PatchType::Apply => {
            let applied = parse_apply(body)?;
            let manager = params.field_manager.as_deref().unwrap_or("unknown");
            let conflicts = super::ownership::conflicts(original, &applied, manager);
            if !conflicts.is_empty() && params.force != Some(true) {
                let shown: Vec<(String, String)> =
                    conflicts.iter().map(|(owner, path)| (owner.clone(), super::ownership::display(path))).collect();
                return Err(ApiError::apply_conflicts(&shown));
            }
            let mut merged = strategic_merge(original, &applied);
            super::ownership::take_over(&mut merged, &conflicts);
            record_manager(&mut merged, &applied, params, "Apply");
            Ok(merged)
        }
    }
}

/// A PATCH of a `scale` subresource: the request's patch applied to the current Scale.
pub fn patch_scale(headers: &HeaderMap, scale: &Value, body: &[u8], params: &Params) -> ApiResult<Value> {
    patched(patch_type(headers)?, scale, body, true, params)
}

fn parse_apply(body: &[u8]) -> ApiResult<Value> {
    let value: Value = serde_saphyr::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the applied configuration is not valid YAML or JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the applied configuration is not an object"));
    }
    Ok(value)
}

/// Records `manager` in `metadata.managedFields` as owning the fields of `applied` (one entry per
/// manager and operation, replacing its previous one).
fn record_manager(object: &mut Value, applied: &Value, params: &Params, operation: &str) {
    let manager = params.field_manager.clone().unwrap_or_else(|| "unknown".to_owned());
    let entry = serde_json::json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": object["apiVersion"].clone(),
        "time": objects::now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields_v1(applied, None),
    });
    let mut managed: Vec<Value> = object["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
    managed.retain(|m| !(m["manager"] == manager && m["operation"] == operation));
    managed.push(entry);
    object["metadata"]["managedFields"] = Value::Array(managed);
}

/// A strategic merge of `patch` into `original`: maps merge key by key, `null` deletes, lists of
/// objects with a merge key merge element by element (an element `{"$patch": "delete", key: …}`
/// removes one), `$patch: replace` replaces, and other lists are replaced whole.
pub fn strategic_merge(original: &Value, patch: &Value) -> Value {
    merge_value(original, patch, None)
}

fn merge_value(original: &Value, patch: &Value, field: Option<&str>) -> Value {
    match (original, patch) {
        (Value::Object(original), Value::Object(patch)) => Value::Object(merge_map(original, patch)),
        (Value::Array(original), Value::Array(patch)) => match field.and_then(|f| merge_key(f, patch)) {
            Some(key) => Value::Array(merge_list(original, patch, key)),
            None => Value::Array(patch.iter().filter(|v| !is_directive(v)).cloned().collect()),
        },
        (_, patch) => strip_directives(patch),
    }
}

fn merge_map(original: &Map<String, Value>, patch: &Map<String, Value>) -> Map<String, Value> {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        return strip_directives(&Value::Object(patch.clone())).as_object().cloned().unwrap_or_default();
    }
    let mut merged = original.clone();
    for (name, value) in patch {
        if name.starts_with('$') {
            continue;
        }
        match (value, merged.get(name)) {
            (Value::Null, _) => {
                merged.remove(name);
            }
            (value, Some(existing)) => {
                let value = merge_value(existing, value, Some(name));
                merged.insert(name.clone(), value);
            }
            (value, None) => {
                merged.insert(name.clone(), strip_directives(value));
            }
        }
    }
    merged
}

fn merge_list(original: &[Value], patch: &[Value], key: &str) -> Vec<Value> {
    let mut merged: Vec<Value> = original.to_vec();
    for element in patch {
        let Some(id) = element.get(key) else {
            merged.push(strip_directives(element));
            continue;
        };
        let position = merged.iter().position(|e| e.get(key) == Some(id));
        let delete = element.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                merged.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => merged[i] = merge_value(&merged[i], element, None),
            (None, false) => merged.push(strip_directives(element)),
        }
    }
    merged
}

fn is_directive(value: &Value) -> bool {
    value.as_object().is_some_and(|o| o.keys().any(|k| k.starts_with('$')))
}

fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip_directives(v))).collect(),
        ),
        Value::Array(list) => Value::Array(list.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_by_name_and_replaces_plain_lists() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "image": "one", "args": ["x"]},
            {"name": "b", "image": "two"},
        ]}, "metadata": {"labels": {"keep": "1", "drop": "2"}}});
        let patch = json!({
            "spec": {"containers": [
                {"name": "a", "image": "three", "args": ["y", "z"]},
                {"name": "b", "$patch": "delete"},
                {"name": "c", "image": "four"},
            ]},
            "metadata": {"labels": {"drop": null, "new": "3"}},
        });
        let merged = strategic_merge(&pod, &patch);
        assert_eq!(
            merged["spec"]["containers"],
            json!([{"name": "a", "image": "three", "args": ["y", "z"]}, {"name": "c", "image": "four"}])
        );
        assert_eq!(merged["metadata"]["labels"], json!({"keep": "1", "new": "3"}));
        let replaced = strategic_merge(&pod, &json!({"spec": {"$patch": "replace", "containers": []}}));
        assert_eq!(replaced["spec"], json!({"containers": []}));
    }

    #[test]
    fn service_ports_merge_by_port_and_container_ports_by_container_port() {
        let port = json!({"name": "serving", "port": 8500, "protocol": "TCP", "targetPort": 8500});
        let service = json!({"spec": {"ports": [port.clone()]}});
        let again = strategic_merge(&service, &json!({"spec": {"ports": [{"name": "serving", "port": 8500}]}}));
        assert_eq!(again["spec"]["ports"], json!([port]), "re-applying a port changes nothing");
        let added = strategic_merge(&service, &json!({"spec": {"ports": [{"name": "metrics", "port": 9090}]}}));
        assert_eq!(added["spec"]["ports"].as_array().map(Vec::len), Some(2));

        let container = json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "name": "a"}]}]});
        let renamed = strategic_merge(
            &container,
            &json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "name": "b"}]}]}),
        );
        assert_eq!(renamed["containers"][0]["ports"], json!([{"containerPort": 80, "name": "b"}]));
    }
}
