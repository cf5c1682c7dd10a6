//! Server-side printing: the `meta.k8s.io/v1` `Table` that `kubectl get` asks for, with the
//! columns the real apiserver prints for the built-in kinds and a CRD's
//! `additionalPrinterColumns` (evaluated with a small JSONPath subset).

use serde_json::{Value, json};

use crate::resources::{PrinterColumn, ResourceType};

/// Whether the Accept header asks for a Table.
pub fn wanted(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=Table"))
}

/// A Table of `objects`; `include` is the `includeObject` parameter (`Metadata` by default).
pub fn render(
    rtype: &ResourceType,
    objects: &[Value],
    resource_version: &str,
    include: Option<&str>,
    now: jiff::Timestamp,
) -> Value {
    let columns = columns(rtype);
    let definitions: Vec<Value> = columns
        .iter()
        .map(|c| {
            let mut definition = json!({"name": c.name, "type": c.type_, "format": "", "description": c.description, "priority": c.priority});
            if c.json_path == ".metadata.name" {
                definition["format"] = "name".into();
            }
            definition
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let cells: Vec<Value> = columns.iter().map(|c| cell(rtype, c, object, now)).collect();
            let embedded = match include.unwrap_or("Metadata") {
                "None" => Value::Null,
                "Object" => object.clone(),
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]}),
            };
            json!({"cells": cells, "object": embedded})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

fn column(name: &str, type_: &str, json_path: &str, priority: i64) -> PrinterColumn {
    PrinterColumn {
        name: name.to_owned(),
        type_: type_.to_owned(),
        json_path: json_path.to_owned(),
        priority,
        description: String::new(),
    }
}

/// The columns for a type: Name first, then the kind's own, with Age where the real server has it.
fn columns(rtype: &ResourceType) -> Vec<PrinterColumn> {
    let name = column("Name", "string", ".metadata.name", 0);
    let age = column("Age", "date", ".metadata.creationTimestamp", 0);
    let own: Vec<PrinterColumn> = match (rtype.group.as_str(), rtype.plural.as_str()) {
        ("", "pods") => vec![
            column("Ready", "string", "#ready", 0),
            column("Status", "string", "#pod-status", 0),
            column("Restarts", "string", "#restarts", 0),
            age.clone(),
            column("IP", "string", ".status.podIP", 1),
            column("Node", "string", ".spec.nodeName", 1),
        ],
        ("", "services") => vec![
            column("Type", "string", ".spec.type", 0),
            column("Cluster-IP", "string", ".spec.clusterIP", 0),
            column("External-IP", "string", "#external-ips", 0),
            column("Port(s)", "string", "#ports", 0),
            age.clone(),
            column("Selector", "string", "#selector", 1),
        ],
        ("", "configmaps") => vec![column("Data", "integer", "#data-count", 0), age.clone()],
        ("", "secrets") => {
            vec![column("Type", "string", ".type", 0), column("Data", "integer", "#data-count", 0), age.clone()]
        }
        ("", "namespaces") => vec![column("Status", "string", ".status.phase", 0), age.clone()],
        ("", "persistentvolumeclaims") => vec![
            column("Status", "string", ".status.phase", 0),
            column("Volume", "string", ".spec.volumeName", 0),
            column("Capacity", "string", ".status.capacity.storage", 0),
            age.clone(),
        ],
        ("", "endpoints") => vec![column("Endpoints", "string", "#endpoints", 0), age.clone()],
        ("apps", "deployments") => vec![
            column("Ready", "string", "#deployment-ready", 0),
            column("Up-to-date", "integer", "#updated", 0),
            column("Available", "integer", "#available", 0),
            age.clone(),
        ],
        // Events lead with when they were last seen, and have no Name column.
        ("", "events") => {
            return vec![
                column("Last Seen", "date", ".lastTimestamp", 0),
                column("Type", "string", ".type", 0),
                column("Reason", "string", ".reason", 0),
                column("Object", "string", "#involved-object", 0),
                column("Message", "string", ".message", 0),
            ];
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            vec![column("Created At", "date", ".metadata.creationTimestamp", 0)]
        }
        _ if !rtype.columns.is_empty() => {
            let mut columns = rtype.columns.clone();
            if !columns.iter().any(|c| c.json_path == ".metadata.creationTimestamp") {
                columns.push(age.clone());
            }
            columns
        }
        _ => vec![age.clone()],
    };
    std::iter::once(name).chain(own).collect()
}

fn cell(rtype: &ResourceType, column: &PrinterColumn, object: &Value, now: jiff::Timestamp) -> Value {
    let value = match column.json_path.as_str() {
        "#ready" => {
            let statuses = object["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
            let total = object["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses.iter().filter(|s| s["ready"] == true).count();
            return json!(format!("{ready}/{total}"));
        }
        "#pod-status" => return json!(pod_status(object)),
        "#deployment-ready" => {
            let ready = object["status"]["readyReplicas"].as_u64().unwrap_or(0);
            let wanted = object["spec"]["replicas"].as_u64().unwrap_or(1);
            return json!(format!("{ready}/{wanted}"));
        }
        "#updated" => return json!(object["status"]["updatedReplicas"].as_u64().unwrap_or(0)),
        "#available" => return json!(object["status"]["availableReplicas"].as_u64().unwrap_or(0)),
        "#restarts" => {
            let statuses = object["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
            let restarts: i64 = statuses.iter().filter_map(|s| s["restartCount"].as_i64()).sum();
            return json!(restarts.to_string());
        }
        "#data-count" => {
            let count = ["data", "binaryData", "stringData"]
                .iter()
                .filter_map(|f| object[*f].as_object())
                .map(|m| m.len())
                .sum::<usize>();
            return json!(count);
        }
        "#external-ips" => return json!("<none>"),
        "#involved-object" => {
            let involved = &object["involvedObject"];
            let kind = involved["kind"].as_str().unwrap_or_default().to_lowercase();
            return json!(format!("{kind}/{}", involved["name"].as_str().unwrap_or_default()));
        }
        "#endpoints" => {
            let mut addresses = Vec::new();
            for subset in object["subsets"].as_array().into_iter().flatten() {
                for address in subset["addresses"].as_array().into_iter().flatten() {
                    for port in subset["ports"].as_array().into_iter().flatten() {
                        addresses.push(format!("{}:{}", address["ip"].as_str().unwrap_or_default(), port["port"]));
                    }
                }
            }
            return json!(if addresses.is_empty() { "<none>".to_owned() } else { addresses.join(",") });
        }
        "#ports" => {
            let ports: Vec<String> = object["spec"]["ports"]
                .as_array()
                .map(|ports| {
                    ports.iter().map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP"))).collect()
                })
                .unwrap_or_default();
            return json!(if ports.is_empty() { "<none>".to_owned() } else { ports.join(",") });
        }
        "#selector" => {
            let selector: Vec<String> = object["spec"]["selector"]
                .as_object()
                .map(|s| s.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
                .unwrap_or_default();
            return json!(if selector.is_empty() { "<none>".to_owned() } else { selector.join(",") });
        }
        path => json_path(object, path),
    };
    match (column.type_.as_str(), value) {
        ("date", Some(Value::String(time))) => {
            json!(time.parse::<jiff::Timestamp>().map_or(time.clone(), |t| human_age(now, t)))
        }
        (_, Some(Value::String(text))) => json!(text),
        (_, Some(value @ (Value::Number(_) | Value::Bool(_)))) => value,
        (_, Some(other)) => json!(other.to_string()),
        (_, None) if rtype.group.is_empty() => json!("<none>"),
        (_, None) => Value::Null,
    }
}

/// The pod's STATUS column: `Init:` and the progress or trouble of its init containers while
/// they run, else a waiting or terminated container's reason, else the phase.
fn pod_status(pod: &Value) -> String {
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        return "Terminating".to_owned();
    }
    let init = pod["status"]["initContainerStatuses"].as_array().cloned().unwrap_or_default();
    let completed = |s: &Value| s["state"]["terminated"]["exitCode"] == 0;
    if let Some(pending) = init.iter().find(|s| !completed(s)) {
        let done = init.iter().filter(|s| completed(s)).count();
        return match (pending["state"]["waiting"]["reason"].as_str(), pending["state"]["terminated"]["reason"].as_str())
        {
            (Some(reason), _) if reason != "PodInitializing" => format!("Init:{reason}"),
            (_, Some(reason)) => format!("Init:{reason}"),
            _ => format!("Init:{done}/{}", init.len()),
        };
    }
    for status in pod["status"]["containerStatuses"].as_array().into_iter().flatten() {
        for state in ["waiting", "terminated"] {
            if let Some(reason) = status["state"][state]["reason"].as_str() {
                return reason.to_owned();
            }
        }
    }
    pod["status"]["phase"].as_str().unwrap_or("Pending").to_owned()
}

/// A JSONPath of the shapes printer columns use: `.a.b`, `.a[0].b`, `.a[-1:].b` (indices and
/// slices, negative from the end), and `.a[?(@.type=="Ready")].status`.
pub fn json_path(object: &Value, path: &str) -> Option<Value> {
    // Every value the path reaches so far: a slice reaches several, and what follows it applies
    // to each.
    let mut current = vec![object.clone()];
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}').trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            current = current.iter().filter_map(|value| value.get(&after[..end]).cloned()).collect();
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            let index = &after[..end];
            rest = &after[end + 1..];
            let arrays = current.iter().filter_map(Value::as_array);
            current = match (index.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')), index.split_once(':')) {
                (Some(filter), _) => {
                    let (field, wanted) = filter.split_once("==")?;
                    let wanted = wanted.trim().trim_matches(|c| c == '"' || c == '\'');
                    arrays
                        .flat_map(|items| {
                            items.iter().filter(|item| item[field.trim()].as_str() == Some(wanted)).take(1)
                        })
                        .cloned()
                        .collect()
                }
                (None, Some((start, end))) => arrays
                    .flat_map(|items| slice(items.len(), start, end).map_or(&[][..], |range| &items[range]))
                    .cloned()
                    .collect(),
                (None, None) => {
                    let at: i64 = index.trim().parse().ok()?;
                    arrays.filter_map(|items| items.get(position(items.len(), at)?)).cloned().collect()
                }
            };
        } else {
            return None;
        }
    }
    match current.len() {
        0 => None,
        1 => current.pop(),
        _ => Some(Value::Array(current)),
    }
}

/// Where index `at` of a list of `len` falls, counting from the end when negative.
fn position(len: usize, at: i64) -> Option<usize> {
    let at = if at < 0 { len as i64 + at } else { at };
    (0..len as i64).contains(&at).then_some(at as usize)
}

/// The range a `start:end` slice (either side may be empty or negative) takes of a list of `len`.
fn slice(len: usize, start: &str, end: &str) -> Option<std::ops::Range<usize>> {
    let bound = |text: &str, default: usize| -> Option<usize> {
        match text.trim() {
            "" => Some(default),
            text => {
                let at: i64 = text.parse().ok()?;
                Some(if at < 0 { (len as i64 + at).max(0) as usize } else { (at as usize).min(len) })
            }
        }
    };
    let (start, end) = (bound(start, 0)?, bound(end, len)?);
    Some(start.min(end)..end)
}

/// An age as kubectl prints it: `45s`, `3m12s`, `25m`, `5h10m`, `3d4h`, `40d`, `2y30d`.
pub fn human_age(now: jiff::Timestamp, then: jiff::Timestamp) -> String {
    let seconds = now.as_second() - then.as_second();
    if seconds < 0 {
        return "0s".to_owned();
    }
    let (minutes, hours, days) = (seconds / 60, seconds / 3600, seconds / 86_400);
    match seconds {
        s if s < 120 => format!("{s}s"),
        _ if minutes < 10 && seconds % 60 != 0 => format!("{minutes}m{}s", seconds % 60),
        _ if minutes < 180 => format!("{minutes}m"),
        _ if hours < 8 && minutes % 60 != 0 => format!("{hours}h{}m", minutes % 60),
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 192 && hours % 24 != 0 => format!("{days}d{}h", hours % 24),
        _ if days < 730 => format!("{days}d"),
        _ => format!("{}y{}d", days / 365, days % 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths_of_printer_columns() {
        let object = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}], "replicas": 3}, "spec": {"items": [{"name": "a"}]}});
        assert_eq!(json_path(&object, ".status.replicas"), Some(json!(3)));
        assert_eq!(json_path(&object, ".status.conditions[?(@.type==\"Ready\")].status"), Some(json!("True")));
        assert_eq!(json_path(&object, ".spec.items[0].name"), Some(json!("a")));
        assert_eq!(json_path(&object, ".status.missing"), None);
        let checkpoints = json!({"status": {"checkpoints": [{"metrics": {"a": 0.5}}, {"metrics": {"a": 1.0}}]}});
        assert_eq!(json_path(&checkpoints, ".status.checkpoints[-1:].metrics.a"), Some(json!(1.0)));
        assert_eq!(json_path(&checkpoints, ".status.checkpoints[-2].metrics.a"), Some(json!(0.5)));
        assert_eq!(json_path(&checkpoints, ".status.checkpoints[:].metrics.a"), Some(json!([0.5, 1.0])));
        assert_eq!(json_path(&json!({"status": {"checkpoints": []}}), ".status.checkpoints[-1:].metrics.a"), None);
    }

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let then: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let age = |seconds: i64| human_age(then + jiff::SignedDuration::from_secs(seconds), then);
        assert_eq!(
            [age(5), age(125), age(600), age(3 * 3600 + 60), age(30 * 3600), age(3 * 86_400 + 3600), age(40 * 86_400)],
            ["5s", "2m5s", "10m", "3h1m", "30h", "3d1h", "40d"]
        );
    }
}
