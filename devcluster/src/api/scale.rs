//! The `scale` subresource of Deployments, ReplicaSets and a CRD that declares one: an
//! `autoscaling/v1` `Scale` read from and written to `spec.replicas` or the paths the CRD names
//! (`specReplicasPath`, `statusReplicasPath`, `labelSelectorPath`), so `kubectl scale` and
//! HPA-style clients work.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method};
use serde_json::{Value, json};

use super::{Cluster, Params, Target, objects, parse_body, patch, table::json_path, with_type};
use crate::resources::ScalePaths;
use crate::status::{ApiError, ApiResult};
use crate::store::resource_version;

/// GET, PUT or PATCH of `target`'s scale.
pub fn serve(
    cluster: &Cluster,
    target: &Target,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
    params: &Params,
) -> ApiResult<Response> {
    let paths = target.rtype.scale.clone().ok_or_else(|| {
        ApiError::no_route(&format!("{}/scale: the resource has no scale subresource", target.rtype.plural))
    })?;
    let stored = cluster.store.get(&target.key()).ok_or_else(|| target.not_found())?;
    let current = scale_of(&stored, &paths);
    let wanted = match *method {
        Method::GET => return Ok(Json(current).into_response()),
        Method::PUT => parse_body(headers, body)?,
        Method::PATCH => patch::patch_scale(headers, &current, body, params)?,
        ref other => return Err(ApiError::method_not_allowed(format!("{other} is not supported on scale"))),
    };
    if let Some(rv) = wanted["metadata"]["resourceVersion"].as_str()
        && !rv.is_empty()
        && rv != stored["metadata"]["resourceVersion"].as_str().unwrap_or_default()
    {
        let name = target.name.as_deref().unwrap_or_default();
        let stale = crate::store::StoreError::Conflict { stored: resource_version(&stored) };
        return Err(super::store_error(target, name, stale));
    }
    let replicas = wanted["spec"]["replicas"].as_i64().filter(|r| *r >= 0).ok_or_else(|| {
        ApiError::invalid(
            "autoscaling",
            "Scale",
            target.name.as_deref().unwrap_or_default(),
            vec![crate::status::Cause {
                reason: "FieldValueInvalid",
                message: format!("Invalid value: {}: must be greater than or equal to 0", wanted["spec"]["replicas"]),
                field: "spec.replicas".into(),
            }],
        )
    })?;
    let mut updated = stored.clone();
    set_path(&mut updated, &paths.spec_replicas, json!(replicas));
    let updated = with_type(&target.rtype, objects::prepare_update(&target.rtype, &stored, updated, false)?);
    if super::dry_run(params) {
        return Ok(Json(scale_of(&updated, &paths)).into_response());
    }
    let written = super::store_update(cluster, target, updated, Some(resource_version(&stored)), params)?;
    Ok(Json(scale_of(&written, &paths)).into_response())
}

/// The Scale view of an object.
fn scale_of(object: &Value, paths: &ScalePaths) -> Value {
    let metadata = &object["metadata"];
    let mut scale = json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": metadata["name"], "namespace": metadata["namespace"], "uid": metadata["uid"],
            "resourceVersion": metadata["resourceVersion"], "creationTimestamp": metadata["creationTimestamp"],
        },
        "spec": {"replicas": json_path(object, &paths.spec_replicas).unwrap_or(json!(0))},
        "status": {"replicas": json_path(object, &paths.status_replicas).unwrap_or(json!(0))},
    });
    if let Some(selector) = paths.label_selector.as_deref().and_then(|p| json_path(object, p)) {
        scale["status"]["selector"] = selector_string(selector);
    }
    scale
}

/// A Scale's `status.selector`: a string as the CRD keeps it, or a Deployment's `LabelSelector`
/// written the way the apiserver writes it (`app=web,tier=front`, then `key in (a,b)`,
/// `key notin (a)`, `key`, `!key`).
fn selector_string(selector: Value) -> Value {
    if selector.is_string() {
        return selector;
    }
    let mut terms: Vec<String> = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or_default()))
        .collect();
    terms.sort();
    for expression in selector["matchExpressions"].as_array().into_iter().flatten() {
        let key = expression["key"].as_str().unwrap_or_default();
        let values: Vec<&str> =
            expression["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        terms.push(match expression["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "DoesNotExist" => format!("!{key}"),
            _ => key.to_owned(),
        });
    }
    Value::String(terms.join(","))
}

/// Sets `.a.b.c` in `object`, creating the objects on the way.
fn set_path(object: &mut Value, path: &str, value: Value) {
    let mut current = object;
    let parts: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    for part in &parts[..parts.len() - 1] {
        if !current[*part].is_object() {
            current[*part] = json!({});
        }
        current = &mut current[*part];
    }
    current[parts[parts.len() - 1]] = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scale_reads_and_writes_the_declared_paths() {
        let paths = ScalePaths {
            spec_replicas: ".spec.workers".into(),
            status_replicas: ".status.workers".into(),
            label_selector: Some(".status.selector".into()),
        };
        let mut object =
            json!({"metadata": {"name": "j"}, "spec": {"workers": 2}, "status": {"workers": 1, "selector": "job=j"}});
        let scale = scale_of(&object, &paths);
        assert_eq!((scale["spec"]["replicas"].as_i64(), scale["status"]["replicas"].as_i64()), (Some(2), Some(1)));
        assert_eq!(scale["status"]["selector"], "job=j");
        let deployment = json!({"spec": {"replicas": 3, "selector": {
            "matchLabels": {"tier": "front", "app": "web"},
            "matchExpressions": [{"key": "env", "operator": "In", "values": ["a", "b"]}, {"key": "old", "operator": "DoesNotExist"}],
        }}});
        let paths = ScalePaths { label_selector: Some(".spec.selector".into()), ..paths.clone() };
        assert_eq!(scale_of(&deployment, &paths)["status"]["selector"], "app=web,tier=front,env in (a,b),!old");
        set_path(&mut object, ".spec.workers", json!(5));
        set_path(&mut object, ".spec.nested.count", json!(1));
        assert_eq!(
            (object["spec"]["workers"].as_i64(), object["spec"]["nested"]["count"].as_i64()),
            (Some(5), Some(1))
        );
    }
}
