//! Server-side apply's field ownership between appliers: each manager's `FieldsV1` set in
//! `managedFields` names the leaves it applied. Applying a value another manager owns, when it
//! differs from the stored one, is a conflict; with `force` the applier takes the field over.
//! [`fields_v1`] writes the set an applied configuration owns; [`merge_key`] names how the
//! elements of the built-in kinds' lists are identified, for it and for strategic merge.

use serde_json::{Map, Value};

/// The leaf paths of a `FieldsV1` set, each a list of keys (`f:data`, `k:{"name":"c"}`).
pub fn leaves(set: &Value) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    collect(set, &mut Vec::new(), &mut found);
    found
}

fn collect(set: &Value, path: &mut Vec<String>, found: &mut Vec<Vec<String>>) {
    let Some(children) = set.as_object() else { return };
    let named: Vec<(&String, &Value)> = children.iter().filter(|(k, _)| *k != ".").collect();
    if named.is_empty() {
        if !path.is_empty() {
            found.push(path.clone());
        }
        return;
    }
    for (key, child) in named {
        path.push(key.clone());
        collect(child, path, found);
        path.pop();
    }
}

/// The value at a `FieldsV1` path in `object`.
fn value_at<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(object, |current, key| {
        if let Some(field) = key.strip_prefix("f:") {
            return current.get(field);
        }
        let wanted: Value = serde_json::from_str(key.strip_prefix("k:")?).ok()?;
        let wanted = wanted.as_object()?;
        current.as_array()?.iter().find(|item| wanted.iter().all(|(k, v)| item.get(k) == Some(v)))
    })
}

/// `.data.a` or `.spec.containers[name="main"].image`, as conflicts are reported.
pub fn display(path: &[String]) -> String {
    path.iter()
        .map(|key| match key.strip_prefix("f:") {
            Some(field) => format!(".{field}"),
            None => {
                let keyed: Value = serde_json::from_str(key.trim_start_matches("k:")).unwrap_or(Value::Null);
                let parts: Vec<String> =
                    keyed.as_object().map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect()).unwrap_or_default();
                format!("[{}]", parts.join(","))
            }
        })
        .collect()
}

/// The appliers other than `manager` that own a leaf `applied` sets to a value other than the
/// one `current` holds: (manager, path).
pub fn conflicts(current: &Value, applied: &Value, manager: &str) -> Vec<(String, Vec<String>)> {
    let wanted = leaves(&fields_v1(applied, None));
    let mut found = Vec::new();
    for entry in current["metadata"]["managedFields"].as_array().into_iter().flatten() {
        let owner = entry["manager"].as_str().unwrap_or_default();
        if owner == manager || entry["operation"] != "Apply" {
            continue;
        }
        for path in leaves(&entry["fieldsV1"]) {
            if wanted.contains(&path) && value_at(current, &path) != value_at(applied, &path) {
                found.push((owner.to_owned(), path));
            }
        }
    }
    found
}

/// Takes `paths` away from the managers that own them (a forced apply); a manager left owning
/// nothing is dropped.
pub fn take_over(object: &mut Value, taken: &[(String, Vec<String>)]) {
    let Some(entries) = object["metadata"]["managedFields"].as_array_mut() else { return };
    for (owner, path) in taken {
        for entry in entries.iter_mut().filter(|e| e["manager"] == owner.as_str()) {
            remove_path(&mut entry["fieldsV1"], path);
        }
    }
    entries.retain(|e| !leaves(&e["fieldsV1"]).is_empty());
}

fn remove_path(set: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else { return };
    let Some(children) = set.as_object_mut() else { return };
    if rest.is_empty() {
        children.remove(first);
    } else if let Some(child) = children.get_mut(first) {
        remove_path(child, rest);
        if child.as_object().is_some_and(|c| c.keys().all(|k| k == ".")) {
            children.remove(first);
        }
    }
}

/// The set of fields `value` sets, in the `FieldsV1` form: `{"f:data": {".": {}, "f:a": {}}}`.
/// Elements of keyed lists are `k:{"name":"c"}`; other lists are owned whole. Identity and
/// server-owned metadata are left out, as the apiserver does.
pub fn fields_v1(value: &Value, field: Option<&str>) -> Value {
    let mut set = Map::new();
    match value {
        Value::Object(map) => {
            for (name, child) in map {
                let top = field.is_none();
                let skipped = top && matches!(name.as_str(), "apiVersion" | "kind")
                    || field == Some("metadata")
                        && matches!(
                            name.as_str(),
                            "name"
                                | "namespace"
                                | "uid"
                                | "resourceVersion"
                                | "generation"
                                | "creationTimestamp"
                                | "managedFields"
                        );
                if skipped {
                    continue;
                }
                let child_set = fields_v1(child, Some(name));
                // An object whose every field is the server's (`metadata: {name: x}`) owns nothing.
                let only_server_fields = child.as_object().is_some_and(|o| !o.is_empty())
                    && child_set.as_object().is_some_and(Map::is_empty);
                if !only_server_fields {
                    set.insert(format!("f:{name}"), child_set);
                }
            }
            if field.is_some_and(|f| f != "metadata") && !set.is_empty() {
                set.insert(".".into(), Value::Object(Map::new()));
            }
        }
        Value::Array(items) => {
            if let Some(key) = field.and_then(|f| merge_key(f, items)) {
                for item in items {
                    if let Some(id) = item.get(key) {
                        let mut element = fields_v1(item, Some(""));
                        element[".".to_owned()] = Value::Object(Map::new());
                        set.insert(format!("k:{}", serde_json::json!({key: id})), element);
                    }
                }
            }
        }
        _ => {}
    }
    Value::Object(set)
}

/// The key that identifies an element of a list field of the built-in kinds, by the field's name
/// (and, for `ports`, whose elements are a container's or a Service's, by what they hold).
pub fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    match field {
        "containers" | "initContainers" | "env" | "volumes" | "imagePullSecrets" | "ephemeralContainers" => {
            Some("name")
        }
        "ports" if items.iter().any(|port| port.get("containerPort").is_some()) => Some("containerPort"),
        "ports" => Some("port"),
        "volumeMounts" => Some("mountPath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "tolerations" => Some("key"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn owned(manager: &str, object: &Value) -> Value {
        json!({"manager": manager, "operation": "Apply", "fieldsV1": fields_v1(object, None)})
    }

    #[test]
    fn another_appliers_field_set_differently_is_a_conflict_until_forced() {
        let theirs = json!({"data": {"a": "1", "b": "2"}, "spec": {"containers": [{"name": "main", "image": "x"}]}});
        let mut current = theirs.clone();
        current["metadata"] = json!({"managedFields": [owned("operator", &theirs)]});
        let mine = json!({"data": {"a": "1", "b": "3"}, "spec": {"containers": [{"name": "main", "image": "y"}]}});
        let found = conflicts(&current, &mine, "kubectl");
        let shown: Vec<String> = found.iter().map(|(m, p)| format!("{m} {}", display(p))).collect();
        assert_eq!(shown, vec!["operator .data.b", "operator .spec.containers[name=\"main\"].image"]);
        assert!(conflicts(&current, &theirs, "kubectl").is_empty(), "the same values do not conflict");
        assert!(conflicts(&current, &mine, "operator").is_empty(), "nor does a manager with itself");
        take_over(&mut current, &found);
        let left: Vec<String> =
            leaves(&current["metadata"]["managedFields"][0]["fieldsV1"]).iter().map(|p| display(p)).collect();
        assert_eq!(left, vec![".data.a", ".spec.containers[name=\"main\"].name"]);
    }

    #[test]
    fn applied_fields_are_written_as_fields_v1() {
        let applied = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "main", "image": "worker"}]},
        });
        assert_eq!(
            fields_v1(&applied, None),
            json!({
                "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                "f:spec": {".": {}, "f:containers": {"k:{\"name\":\"main\"}": {".": {}, "f:image": {}, "f:name": {}}}},
            })
        );
    }
}
