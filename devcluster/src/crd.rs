//! CustomResourceDefinitions: what an applied CRD serves (one resource type per served version,
//! with its schema, subresources and printer columns), the checks on its names, and the status
//! the apiserver's CRD controller would set (`NamesAccepted`, `Established`).

use serde_json::{Value, json};

use crate::resources::{PrinterColumn, ResourceType, ScalePaths};
use crate::status::Cause;

fn invalid(field: &str, message: impl Into<String>) -> Cause {
    Cause { reason: "FieldValueInvalid", message: message.into(), field: field.to_owned() }
}

fn required(field: &str) -> Cause {
    Cause { reason: "FieldValueRequired", message: "Required value".into(), field: field.to_owned() }
}

/// A cause for every CEL rule in `schema` (and the schemas under it) that does not compile.
fn rule_errors(schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    for (index, rule) in schema["x-kubernetes-validations"].as_array().into_iter().flatten().enumerate() {
        let source = rule["rule"].as_str().unwrap_or_default();
        let field = format!("{path}.x-kubernetes-validations[{index}].rule");
        if let Some(error) = crate::cel::compile_error(source) {
            causes.push(invalid(&field, format!("Invalid value: {source:?}: {error}")));
        }
    }
    for (name, property) in schema["properties"].as_object().into_iter().flatten() {
        rule_errors(property, &format!("{path}.properties[{name}]"), causes);
    }
    for nested in ["items", "additionalProperties"] {
        if schema[nested].is_object() {
            rule_errors(&schema[nested], &format!("{path}.{nested}"), causes);
        }
    }
}

/// The resource types `crd` serves, most preferred version first, or why it is invalid.
pub fn resource_types(crd: &Value) -> Result<Vec<ResourceType>, Vec<Cause>> {
    let spec = &crd["spec"];
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    let (group, names) = (text(&spec["group"]), &spec["names"]);
    let (plural, kind) = (text(&names["plural"]), text(&names["kind"]));
    let mut causes = Vec::new();
    if group.is_empty() {
        causes.push(required("spec.group"));
    } else if !group.contains('.') {
        causes
            .push(invalid("spec.group", format!("Invalid value: {group:?}: should be a domain with at least one dot")));
    }
    if plural.is_empty() {
        causes.push(required("spec.names.plural"));
    } else if plural.chars().any(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')) {
        causes.push(invalid("spec.names.plural", format!("Invalid value: {plural:?}: a lowercase RFC 1123 label")));
    }
    if kind.is_empty() {
        causes.push(required("spec.names.kind"));
    }
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        causes.push(invalid(
            "metadata.name",
            format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let scope = spec["scope"].as_str().unwrap_or_default();
    if !matches!(scope, "Namespaced" | "Cluster") {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            message: format!("Unsupported value: {scope:?}: supported values: \"Cluster\", \"Namespaced\""),
            field: "spec.scope".into(),
        });
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(required("spec.versions"));
    }
    if versions.iter().filter(|v| v["storage"] == true).count() != 1 && !versions.is_empty() {
        causes.push(invalid("spec.versions", "Invalid value: must have exactly one version marked as storage version"));
    }
    for (index, version) in versions.iter().enumerate() {
        let path = format!("spec.versions[{index}].schema.openAPIV3Schema");
        match &version["schema"]["openAPIV3Schema"] {
            Value::Null => causes.push(required(&path)),
            schema => rule_errors(schema, &path, &mut causes),
        }
    }
    if !causes.is_empty() {
        return Err(causes);
    }
    let strings = |value: &Value| -> Vec<String> {
        value.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
    };
    let mut types: Vec<ResourceType> = versions
        .iter()
        .filter(|v| v["served"] != false)
        .map(|version| {
            let subresources = &version["subresources"];
            let scale = subresources.get("scale").map(|scale| ScalePaths {
                spec_replicas: text(&scale["specReplicasPath"]),
                status_replicas: text(&scale["statusReplicasPath"]),
                label_selector: scale["labelSelectorPath"].as_str().map(str::to_owned),
            });
            let columns = version["additionalPrinterColumns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| PrinterColumn {
                    name: text(&c["name"]),
                    type_: text(&c["type"]),
                    json_path: text(&c["jsonPath"]),
                    priority: c["priority"].as_i64().unwrap_or(0),
                    description: text(&c["description"]),
                })
                .collect();
            ResourceType {
                group: group.clone(),
                version: text(&version["name"]),
                plural: plural.clone(),
                singular: names["singular"].as_str().map_or_else(|| kind.to_lowercase(), str::to_owned),
                kind: kind.clone(),
                namespaced: scope == "Namespaced",
                short_names: strings(&names["shortNames"]),
                categories: strings(&names["categories"]),
                status: subresources.get("status").is_some(),
                scale,
                log: false,
                schema: Some(version["schema"]["openAPIV3Schema"].clone()),
                columns,
                storage: version["storage"] == true,
                builtin: false,
            }
        })
        .collect();
    types.sort_by_key(|t| std::cmp::Reverse(version_priority(&t.version)));
    Ok(types)
}

/// Kubernetes' version order: GA above beta above alpha, higher numbers first (`v2` > `v1` >
/// `v1beta2` > `v1beta1` > `v1alpha1`); anything else last.
pub fn version_priority(version: &str) -> (u8, u64, u64) {
    let Some(rest) = version.strip_prefix('v') else { return (0, 0, 0) };
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let Ok(major) = rest[..digits].parse::<u64>() else { return (0, 0, 0) };
    match &rest[digits..] {
        "" => (3, major, 0),
        tail => {
            match tail.strip_prefix("beta").map(|n| (2, n)).or_else(|| tail.strip_prefix("alpha").map(|n| (1, n))) {
                Some((level, n)) => n.parse::<u64>().map_or((0, 0, 0), |minor| (level, major, minor)),
                None => (0, 0, 0),
            }
        }
    }
}

/// The status of an accepted CRD: its names accepted and established, its storage version
/// recorded.
pub fn accepted_status(crd: &Value, now: &str) -> Value {
    let storage: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == true)
        .map(|v| v["name"].clone())
        .collect();
    let condition = |type_: &str, reason: &str, message: &str| json!({"type": type_, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message});
    json!({
        "acceptedNames": crd["spec"]["names"],
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": storage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "metadata": {"name": "trainingjobs.lantern.dev"},
            "spec": {
                "group": "lantern.dev",
                "names": {"plural": "trainingjobs", "kind": "TrainingJob", "shortNames": ["tj"]},
                "scope": "Namespaced",
                "versions": [
                    {"name": "v1alpha1", "served": true, "storage": false, "schema": {"openAPIV3Schema": {"type": "object"}}},
                    {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}},
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.workers", "statusReplicasPath": ".status.workers"}},
                     "additionalPrinterColumns": [{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}]},
                ],
            },
        })
    }

    #[test]
    fn a_crd_serves_each_version_preferred_first() {
        let types = resource_types(&crd()).unwrap();
        assert_eq!(types.iter().map(|t| t.version.as_str()).collect::<Vec<_>>(), vec!["v1", "v1alpha1"]);
        let v1 = &types[0];
        assert_eq!((v1.singular.as_str(), v1.status, v1.storage), ("trainingjob", true, true));
        assert_eq!(v1.scale.as_ref().unwrap().spec_replicas, ".spec.workers");
        assert_eq!(v1.columns[0].json_path, ".status.phase");
        assert!(!types[1].status);
    }

    #[test]
    fn a_bad_crd_names_every_field() {
        let mut bad = crd();
        bad["metadata"]["name"] = "jobs.lantern.dev".into();
        bad["spec"]["scope"] = "Global".into();
        bad["spec"]["versions"][1]["storage"] = false.into();
        let fields: Vec<String> = resource_types(&bad).unwrap_err().into_iter().map(|c| c.field).collect();
        assert_eq!(fields, vec!["metadata.name", "spec.scope", "spec.versions"]);
    }

    #[test]
    fn a_cel_rule_that_does_not_compile_is_refused() {
        let mut bad = crd();
        bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] =
            serde_json::json!({"type": "object", "x-kubernetes-validations": [{"rule": "self.size >"}]});
        let causes = resource_types(&bad).unwrap_err();
        assert_eq!(
            causes[0].field,
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule"
        );
        assert!(causes[0].message.contains("compilation failed"), "{}", causes[0].message);
    }

    #[test]
    fn versions_sort_as_kubernetes_sorts_them() {
        let mut versions = vec!["v1alpha1", "v1", "foo", "v2beta1", "v1beta2", "v2"];
        versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(versions, vec!["v2", "v1", "v2beta1", "v1beta2", "v1alpha1", "foo"]);
    }
}
