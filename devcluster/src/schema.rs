//! A CRD's structural schema applied to an object, in the apiserver's order: unknown fields are
//! pruned (and reported, for `fieldValidation`), defaults are filled in, then the object is
//! validated: types, `required`, `enum`, numeric bounds, string lengths and patterns, item
//! counts, `nullable`, `x-kubernetes-int-or-string` and `x-kubernetes-preserve-unknown-fields`,
//! and then the CEL rules of `x-kubernetes-validations` ([`crate::cel`]) on values that passed.

use serde_json::{Map, Value};

use crate::status::Cause;

/// What applying the schema found.
#[derive(Debug, Default, PartialEq)]
pub struct Findings {
    /// Paths of the fields pruned as unknown, e.g. `spec.colour`.
    pub unknown: Vec<String>,
    /// Validation failures, one per field.
    pub causes: Vec<Cause>,
}

/// Prunes, defaults and validates `object` (a whole custom resource) against `schema`; `old` is
/// the stored object on an update, for transition rules.
pub fn apply(schema: &Value, object: &mut Value, old: Option<&Value>) -> Findings {
    let mut findings = Findings::default();
    if let Some(fields) = object.as_object_mut() {
        // apiVersion, kind and metadata are the server's, whatever the schema says.
        let mut root = schema.clone();
        if let Some(properties) = root.as_object_mut() {
            let declared = properties.entry("properties").or_insert_with(|| Value::Object(Map::new()));
            for field in ["apiVersion", "kind", "metadata"] {
                declared[field] =
                    serde_json::json!({"type": field_type(field), "x-kubernetes-preserve-unknown-fields": true});
            }
        }
        walk_object(&root, fields, old, "", &mut findings);
    }
    let rules = schema["x-kubernetes-validations"].as_array();
    if findings.causes.is_empty()
        && let Some(rules) = rules
    {
        findings.causes.extend(crate::cel::check(rules, object, old, ""));
    }
    findings
}

fn field_type(field: &str) -> &'static str {
    if field == "metadata" { "object" } else { "string" }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() { field.to_owned() } else { format!("{path}.{field}") }
}

fn preserves_unknown(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"] == true
}

fn walk_object(
    schema: &Value,
    fields: &mut Map<String, Value>,
    old: Option<&Value>,
    path: &str,
    findings: &mut Findings,
) {
    let properties = schema["properties"].as_object();
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    // Prune.
    if !preserves_unknown(schema) && additional.is_none() && schema["additionalProperties"] != true {
        let mut unknown: Vec<String> =
            fields.keys().filter(|k| properties.is_none_or(|p| !p.contains_key(*k))).cloned().collect();
        unknown.sort();
        for field in unknown {
            fields.remove(&field);
            findings.unknown.push(join(path, &field));
        }
    }
    // Default.
    for (name, property) in properties.into_iter().flatten() {
        if !fields.contains_key(name)
            && let Some(default) = property.get("default")
        {
            fields.insert(name.clone(), default.clone());
        }
    }
    // Required.
    for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if !fields.contains_key(name) {
            findings.causes.push(Cause {
                reason: "FieldValueRequired",
                message: "Required value".into(),
                field: join(path, name),
            });
        }
    }
    // Children, by name (the apiserver's order, whatever order the object's keys came in).
    let mut children: Vec<(&String, &mut Value)> = fields.iter_mut().collect();
    children.sort_by(|a, b| a.0.cmp(b.0));
    for (name, value) in children {
        let child = properties.and_then(|p| p.get(name)).or(additional);
        if let Some(child) = child {
            walk(child, value, old.and_then(|o| o.get(name)), &join(path, name), findings);
        }
    }
}

/// Validates one value, then (when it and everything under it passed) its CEL rules.
fn walk(schema: &Value, value: &mut Value, old: Option<&Value>, path: &str, findings: &mut Findings) {
    let before = findings.causes.len();
    check(schema, value, old, path, findings);
    if findings.causes.len() == before
        && let Some(rules) = schema["x-kubernetes-validations"].as_array()
    {
        findings.causes.extend(crate::cel::check(rules, value, old, path));
    }
}

fn check(schema: &Value, value: &mut Value, old: Option<&Value>, path: &str, findings: &mut Findings) {
    if value.is_null() {
        if schema["nullable"] != true && !preserves_unknown(schema) {
            let expected = schema["type"].as_str().unwrap_or("object");
            findings.causes.push(type_cause(path, value, expected));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let listed: Vec<String> = allowed.iter().map(Value::to_string).collect();
        findings.causes.push(Cause {
            reason: "FieldValueNotSupported",
            message: format!("Unsupported value: {value}: supported values: {}", listed.join(", ")),
            field: path.to_owned(),
        });
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            findings.causes.push(type_cause(path, value, "integer or string"));
        }
        return;
    }
    match (schema["type"].as_str(), value) {
        (Some("object") | None, Value::Object(fields)) => walk_object(schema, fields, old, path, findings),
        (Some("array"), Value::Array(items)) => {
            count_bounds(
                schema,
                items.len(),
                ("minItems", "maxItems"),
                "items",
                path,
                items.len().to_string(),
                findings,
            );
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter_mut().enumerate() {
                    // Items have no old value: lists are not correlated (no listType=map here).
                    walk(item_schema, item, None, &format!("{path}[{index}]"), findings);
                }
            }
        }
        (Some("string"), Value::String(text)) => {
            let length = text.chars().count();
            count_bounds(schema, length, ("minLength", "maxLength"), "characters", path, format!("{text:?}"), findings);
            if let Some(pattern) = schema["pattern"].as_str()
                && regex::Regex::new(pattern).is_ok_and(|re| !re.is_match(text))
            {
                findings.causes.push(Cause {
                    reason: "FieldValueInvalid",
                    message: format!("Invalid value: {text:?}: {path} in body should match '{pattern}'"),
                    field: path.to_owned(),
                });
            }
        }
        (Some("integer"), Value::Number(n)) if n.is_i64() || n.is_u64() => number_bounds(schema, n, path, findings),
        (Some("number"), Value::Number(n)) => number_bounds(schema, n, path, findings),
        (Some("boolean"), Value::Bool(_)) => {}
        (Some(expected), value) if !preserves_unknown(schema) => {
            findings.causes.push(type_cause(path, value, expected))
        }
        _ => {}
    }
}

fn type_cause(path: &str, value: &Value, expected: &str) -> Cause {
    let found = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    Cause {
        reason: "FieldValueTypeInvalid",
        message: format!("Invalid value: \"{found}\": {path} in body must be of type {expected}: \"{found}\""),
        field: path.to_owned(),
    }
}

/// Checks a length against the schema's `(minimum, maximum)` keywords.
fn count_bounds(
    schema: &Value,
    count: usize,
    (min, max): (&str, &str),
    unit: &str,
    path: &str,
    shown: String,
    findings: &mut Findings,
) {
    let count = count as u64;
    if let Some(least) = schema[min].as_u64()
        && count < least
    {
        findings.causes.push(Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {shown}: {path} in body should have at least {least} {unit}"),
            field: path.to_owned(),
        });
    }
    if let Some(most) = schema[max].as_u64()
        && count > most
    {
        findings.causes.push(Cause {
            reason: "FieldValueTooLong",
            message: format!("Too long: {path} in body should have at most {most} {unit}"),
            field: path.to_owned(),
        });
    }
}

fn number_bounds(schema: &Value, number: &serde_json::Number, path: &str, findings: &mut Findings) {
    let value = number.as_f64().unwrap_or_default();
    let mut fail = |relation: &str, bound: &Value| {
        findings.causes.push(Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {number}: {path} in body should be {relation} {bound}"),
            field: path.to_owned(),
        });
    };
    if let Some(minimum) = schema["minimum"].as_f64() {
        let exclusive = schema["exclusiveMinimum"] == true;
        if value < minimum || (exclusive && value == minimum) {
            fail(if exclusive { "greater than" } else { "greater than or equal to" }, &schema["minimum"]);
        }
    }
    if let Some(maximum) = schema["maximum"].as_f64() {
        let exclusive = schema["exclusiveMaximum"] == true;
        if value > maximum || (exclusive && value == maximum) {
            fail(if exclusive { "less than" } else { "less than or equal to" }, &schema["maximum"]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["model"],
                    "properties": {
                        "model": {"type": "string", "minLength": 1, "pattern": "^[a-z][a-z0-9-]*$"},
                        "replicas": {"type": "integer", "minimum": 1, "maximum": 8, "default": 1},
                        "mode": {"type": "string", "enum": ["train", "serve"], "default": "serve"},
                        "port": {"x-kubernetes-int-or-string": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "args": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                    },
                },
                "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
            },
        })
    }

    #[test]
    fn unknown_fields_are_pruned_and_defaults_filled() {
        let mut object = json!({
            "apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "w", "labels": {"a": "b"}},
            "spec": {"model": "adder", "colour": "red", "labels": {"x": "y"}, "extra": {"anything": [1]}, "port": "http"},
        });
        let findings = apply(&schema(), &mut object, None);
        assert_eq!(findings, Findings { unknown: vec!["spec.colour".into()], causes: vec![] });
        assert_eq!(object["spec"]["replicas"], 1);
        assert_eq!(object["spec"]["mode"], "serve");
        assert_eq!(object["spec"]["extra"]["anything"], json!([1]), "preserved");
        assert_eq!(object["metadata"]["labels"]["a"], "b", "metadata is never pruned");
    }

    #[test]
    fn every_violation_names_its_field() {
        let mut object = json!({"spec": {
            "replicas": 0, "mode": "play", "labels": {"x": 1}, "args": ["a", "b", "c"], "port": 1.5,
        }, "status": {"phase": 3}});
        let causes = apply(&schema(), &mut object, None).causes;
        let fields: Vec<(&str, &str)> = causes.iter().map(|c| (c.field.as_str(), c.reason)).collect();
        assert_eq!(
            fields,
            vec![
                ("spec.model", "FieldValueRequired"),
                ("spec.args", "FieldValueTooLong"),
                ("spec.labels.x", "FieldValueTypeInvalid"),
                ("spec.mode", "FieldValueNotSupported"),
                ("spec.port", "FieldValueTypeInvalid"),
                ("spec.replicas", "FieldValueInvalid"),
                ("status.phase", "FieldValueTypeInvalid"),
            ]
        );
        let replicas = causes.iter().find(|c| c.field == "spec.replicas").unwrap();
        assert_eq!(replicas.message, "Invalid value: 0: spec.replicas in body should be greater than or equal to 1");
        let mut bad_name = json!({"spec": {"model": "Adder"}});
        let pattern = apply(&schema(), &mut bad_name, None).causes;
        assert!(pattern[0].message.contains("should match '^[a-z][a-z0-9-]*$'"), "{pattern:?}");
    }
}
