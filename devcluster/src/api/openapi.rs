//! OpenAPI v3 discovery, as much as kubectl reads: `/openapi/v3` lists a document per
//! group-version, and each document has the resource paths with their operations. kubectl looks
//! for a PATCH operation tagged with the kind's `x-kubernetes-group-version-kind` that takes the
//! `fieldValidation` query parameter; finding it, it leaves validation to the server
//! (`fieldValidation=Strict`). A CRD version's `openAPIV3Schema` is published as its schema.

use serde_json::{Map, Value, json};

use crate::resources::{Registry, ResourceType};

/// The group-version's path in the v3 root: `api/v1`, `apis/lantern.dev/v1alpha1`.
fn document_path(rtype: &ResourceType) -> String {
    match rtype.group.as_str() {
        "" => format!("api/{}", rtype.version),
        group => format!("apis/{group}/{}", rtype.version),
    }
}

/// `/openapi/v3`: one entry per group-version served.
pub fn root(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for rtype in registry.all() {
        let path = document_path(&rtype);
        let url = format!("/openapi/v3/{path}?hash={}", registry.generation());
        paths.insert(path, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

/// `/openapi/v3/{api/v1 | apis/group/version}`.
pub fn document(registry: &Registry, path: &str) -> Option<Value> {
    let types: Vec<ResourceType> = registry.all().into_iter().filter(|t| document_path(t) == path).collect();
    if types.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for rtype in &types {
        let gvk = json!([{"group": rtype.group, "version": rtype.version, "kind": rtype.kind}]);
        let schema_name = schema_name(rtype);
        let reference = json!({"$ref": format!("#/components/schemas/{schema_name}")});
        let body = json!({"content": {"application/json": {"schema": reference}}});
        let responses = json!({"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}});
        let operation = |verb: &str, extra: Vec<Value>| {
            let mut parameters = vec![query_parameter("dryRun"), query_parameter("fieldManager")];
            parameters.extend(extra);
            json!({
                "operationId": format!("{verb}{}", rtype.kind),
                "parameters": parameters,
                "requestBody": body,
                "responses": responses,
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk[0],
            })
        };
        let base = match (rtype.group.as_str(), rtype.namespaced) {
            ("", true) => format!("/api/{}/namespaces/{{namespace}}/{}", rtype.version, rtype.plural),
            ("", false) => format!("/api/{}/{}", rtype.version, rtype.plural),
            (group, true) => format!("/apis/{group}/{}/namespaces/{{namespace}}/{}", rtype.version, rtype.plural),
            (group, false) => format!("/apis/{group}/{}/{}", rtype.version, rtype.plural),
        };
        let validation = || vec![query_parameter("fieldValidation")];
        paths.insert(
            base.clone(),
            json!({"get": {"x-kubernetes-action": "list", "x-kubernetes-group-version-kind": gvk[0], "responses": responses},
                   "post": operation("post", validation())}),
        );
        let mut patch = operation("patch", validation());
        patch["parameters"].as_array_mut().expect("a list").push(query_parameter("force"));
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"get": {"x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk[0], "responses": responses},
                   "put": operation("put", validation()),
                   "patch": patch,
                   "delete": {"x-kubernetes-action": "delete", "x-kubernetes-group-version-kind": gvk[0], "responses": responses}}),
        );
        let mut schema = rtype
            .schema
            .clone()
            .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
        schema["x-kubernetes-group-version-kind"] = gvk;
        schemas.insert(schema_name, schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Lantern devcluster", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// `io.k8s.api.core.v1.Pod` for built-ins, the reversed group for custom resources.
fn schema_name(rtype: &ResourceType) -> String {
    match rtype.group.as_str() {
        "" => format!("io.k8s.api.core.v1.{}", rtype.kind),
        group => {
            let reversed: Vec<&str> = group.split('.').rev().collect();
            format!("{}.{}.{}", reversed.join("."), rtype.version, rtype.kind)
        }
    }
}

fn query_parameter(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}
