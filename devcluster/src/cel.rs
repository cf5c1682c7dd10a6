//! CRD validation rules (`x-kubernetes-validations`) in CEL, evaluated as the apiserver does:
//! `self` is the value the rule sits on, `oldSelf` its stored value on an update (a rule that
//! reads `oldSelf` is a transition rule, skipped on create). A rule that is false fails with its
//! `message` (or `messageExpression`, else `failed rule: RULE`) under its `reason` and
//! `fieldPath`.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::status::Cause;

/// Why a rule cannot be compiled, for the CRD that carries it.
pub fn compile_error(rule: &str) -> Option<String> {
    cel::Program::compile(rule).err().map(|e| format!("compilation failed: {e}"))
}

/// The causes for every rule in `rules` that `value` (at `path`, previously `old`) breaks.
pub fn check(rules: &[Value], value: &Value, old: Option<&Value>, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    for rule in rules {
        let source = rule["rule"].as_str().unwrap_or_default();
        let program = match cel::Program::compile(source) {
            Ok(program) => program,
            Err(error) => {
                causes.push(invalid(path, value, format!("rule compile error: {error}"), "FieldValueInvalid"));
                continue;
            }
        };
        let transition = program.references().has_variable("oldSelf");
        if transition && old.is_none() {
            continue;
        }
        let mut context = cel::Context::default();
        context.add_variable_from_value("self", to_cel(value));
        if let Some(old) = old {
            context.add_variable_from_value("oldSelf", to_cel(old));
        }
        let field = match rule["fieldPath"].as_str().filter(|f| !f.is_empty()) {
            Some(sub) if path.is_empty() => sub.trim_start_matches('.').to_owned(),
            Some(sub) => format!("{path}{sub}"),
            None => path.to_owned(),
        };
        let reason = match rule["reason"].as_str() {
            Some("FieldValueForbidden") => "FieldValueForbidden",
            Some("FieldValueRequired") => "FieldValueRequired",
            Some("FieldValueDuplicate") => "FieldValueDuplicate",
            _ => "FieldValueInvalid",
        };
        match program.execute(&context) {
            Ok(cel::Value::Bool(true)) => {}
            Ok(cel::Value::Bool(false)) => {
                let message = message(rule, &context).unwrap_or_else(|| format!("failed rule: {source}"));
                causes.push(invalid(&field, value, message, reason));
            }
            Ok(other) => causes.push(invalid(
                &field,
                value,
                format!("rule {source:?} evaluated to {other:?}, not a bool"),
                "FieldValueInvalid",
            )),
            Err(error) => {
                causes.push(invalid(&field, value, format!("evaluation error: {error}"), "FieldValueInvalid"))
            }
        }
    }
    causes
}

/// The rule's `messageExpression` (when it evaluates to a non-empty string), else its `message`.
fn message(rule: &Value, context: &cel::Context<'_, '_>) -> Option<String> {
    if let Some(expression) = rule["messageExpression"].as_str()
        && let Ok(program) = cel::Program::compile(expression)
        && let Ok(cel::Value::String(text)) = program.execute(context)
        && !text.is_empty()
    {
        return Some(text.to_string());
    }
    rule["message"].as_str().filter(|m| !m.is_empty()).map(str::to_owned)
}

fn invalid(path: &str, value: &Value, message: String, reason: &'static str) -> Cause {
    let kind = match value {
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::Bool(_) => "boolean",
        Value::Null => "null",
    };
    let message = match reason {
        "FieldValueInvalid" => format!("Invalid value: \"{kind}\": {message}"),
        "FieldValueForbidden" => format!("Forbidden: {message}"),
        "FieldValueRequired" => format!("Required value: {message}"),
        _ => format!("Duplicate value: {message}"),
    };
    Cause { reason, message, field: path.to_owned() }
}

/// JSON as CEL sees it: integers are `int`, objects are maps with string keys.
fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(fields) => {
            let map: HashMap<cel::objects::Key, cel::Value> =
                fields.iter().map(|(k, v)| (cel::objects::Key::String(Arc::new(k.clone())), to_cel(v))).collect();
            cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_fail_with_their_message_reason_and_field() {
        let rules = [
            json!({"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"}),
            json!({"rule": "!has(self.pin) || self.pin > 0", "fieldPath": ".pin", "reason": "FieldValueForbidden"}),
            json!({"rule": "self.name.matches('^[a-z]+$')", "messageExpression": "'bad name ' + self.name"}),
        ];
        let good = json!({"minReplicas": 1, "maxReplicas": 3, "name": "abc"});
        assert!(check(&rules, &good, None, "spec").is_empty());
        let bad = json!({"minReplicas": 4, "maxReplicas": 3, "pin": 0, "name": "A1"});
        let causes = check(&rules, &bad, None, "spec");
        assert_eq!(causes.len(), 3, "{causes:?}");
        assert_eq!(causes[0].message, "Invalid value: \"object\": minReplicas must not exceed maxReplicas");
        assert_eq!((causes[1].field.as_str(), causes[1].reason), ("spec.pin", "FieldValueForbidden"));
        assert_eq!(causes[1].message, "Forbidden: failed rule: !has(self.pin) || self.pin > 0");
        assert_eq!(causes[2].message, "Invalid value: \"object\": bad name A1");
    }

    #[test]
    fn transition_rules_compare_with_the_stored_value_on_update_only() {
        let rules = [json!({"rule": "self == oldSelf", "message": "is immutable"})];
        assert!(check(&rules, &json!("a"), None, "spec.model").is_empty());
        assert!(check(&rules, &json!("a"), Some(&json!("a")), "spec.model").is_empty());
        let changed = check(&rules, &json!("b"), Some(&json!("a")), "spec.model");
        assert_eq!(changed[0].message, "Invalid value: \"string\": is immutable");
        assert!(compile_error("self.a >").is_some());
        assert!(compile_error("self.a > 1").is_none());
    }
}
