//! A container's environment as the kubelet builds it: service variables first, then `envFrom`,
//! then `env` (later entries win), with `$(VAR)` references expanded against what came before,
//! and the downward API, ConfigMap and Secret sources resolved.

use serde_json::Value;

/// Reads a ConfigMap's or Secret's data: `("configmaps" | "secrets", name)` → key → value
/// (secrets already base64-decoded).
pub trait Sources {
    fn data(&self, plural: &str, name: &str) -> Option<Vec<(String, String)>>;
}

/// Ordered variables; setting an existing name replaces its value in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vars(Vec<(String, String)>);

impl Vars {
    pub fn set(&mut self, name: &str, value: String) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = value,
            None => self.0.push((name.to_owned(), value)),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// Expands `$(NAME)` from `vars`; `$$` is a literal `$`, and a reference to an undefined
/// variable is left as written.
pub fn expand(text: &str, vars: &Vars) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(reference) = after.strip_prefix('(')
            && let Some(end) = reference.find(')')
        {
            let name = &reference[..end];
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &reference[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The variables a pod sees for each Service with a cluster IP in its namespace, as the
/// kubelet writes them: `NAME_SERVICE_HOST`, `NAME_SERVICE_PORT[_PORTNAME]` and the Docker-link
/// style `NAME_PORT…` set.
pub fn service_vars(services: &[Value]) -> Vars {
    let mut vars = Vars::default();
    for service in services {
        let ip = service["spec"]["clusterIP"].as_str().unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = service["metadata"]["name"].as_str().unwrap_or_default().to_uppercase().replace('-', "_");
        let ports = service["spec"]["ports"].as_array().cloned().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        vars.set(&format!("{name}_SERVICE_HOST"), ip.to_owned());
        vars.set(&format!("{name}_SERVICE_PORT"), first["port"].to_string());
        for port in &ports {
            if let Some(port_name) = port["name"].as_str().filter(|n| !n.is_empty()) {
                let key = format!("{name}_SERVICE_PORT_{}", port_name.to_uppercase().replace('-', "_"));
                vars.set(&key, port["port"].to_string());
            }
        }
        let protocol = |port: &Value| port["protocol"].as_str().unwrap_or("TCP").to_owned();
        vars.set(&format!("{name}_PORT"), format!("{}://{ip}:{}", protocol(first).to_lowercase(), first["port"]));
        for port in &ports {
            let (number, protocol) = (&port["port"], protocol(port));
            let prefix = format!("{name}_PORT_{number}_{protocol}");
            vars.set(&prefix, format!("{}://{ip}:{number}", protocol.to_lowercase()));
            vars.set(&format!("{prefix}_PROTO"), protocol.to_lowercase());
            vars.set(&format!("{prefix}_PORT"), number.to_string());
            vars.set(&format!("{prefix}_ADDR"), ip.to_owned());
        }
    }
    vars
}

/// The environment of `container` in `pod`, starting from `base` (the service variables).
/// A missing ConfigMap, Secret or key that is not optional, or an unsupported field reference,
/// is the error the container waits with (`CreateContainerConfigError`).
pub fn resolve(pod: &Value, container: &Value, base: Vars, sources: &dyn Sources) -> Result<Vars, String> {
    let mut vars = base;
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = from["prefix"].as_str().unwrap_or_default();
        let (plural, kind, reference) = match (&from["configMapRef"], &from["secretRef"]) {
            (r, _) if r.is_object() => ("configmaps", "configmap", r),
            (_, r) if r.is_object() => ("secrets", "secret", r),
            _ => continue,
        };
        let name = reference["name"].as_str().unwrap_or_default();
        match sources.data(plural, name) {
            Some(data) => data.into_iter().for_each(|(key, value)| vars.set(&format!("{prefix}{key}"), value)),
            None if reference["optional"] == true => {}
            None => return Err(format!("{kind} \"{name}\" not found")),
        }
    }
    for entry in container["env"].as_array().into_iter().flatten() {
        let name = entry["name"].as_str().unwrap_or_default();
        let value = match (&entry["value"], &entry["valueFrom"]) {
            (Value::String(value), _) => Some(expand(value, &vars)),
            (_, from) if from.is_object() => value_from(pod, container, from, sources)?,
            _ => Some(String::new()),
        };
        if let Some(value) = value {
            vars.set(name, value);
        }
    }
    Ok(vars)
}

/// One `valueFrom`; `None` when an optional source is missing (the variable is left unset).
fn value_from(pod: &Value, container: &Value, from: &Value, sources: &dyn Sources) -> Result<Option<String>, String> {
    if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
        return field(pod, path).map(Some);
    }
    if let Some(resource) = from["resourceFieldRef"]["resource"].as_str() {
        let divisor = from["resourceFieldRef"]["divisor"].as_str().unwrap_or("1");
        return resource_field(container, resource, divisor).map(Some);
    }
    let (plural, kind, selector) = match (&from["configMapKeyRef"], &from["secretKeyRef"]) {
        (s, _) if s.is_object() => ("configmaps", "configmap", s),
        (_, s) if s.is_object() => ("secrets", "secret", s),
        _ => return Err("valueFrom names no source".to_owned()),
    };
    let (name, key) = (selector["name"].as_str().unwrap_or_default(), selector["key"].as_str().unwrap_or_default());
    let optional = selector["optional"] == true;
    match sources.data(plural, name) {
        None if optional => Ok(None),
        None => Err(format!("{kind} \"{name}\" not found")),
        Some(data) => match data.into_iter().find(|(k, _)| k == key) {
            Some((_, value)) => Ok(Some(value)),
            None if optional => Ok(None),
            None => Err(format!("couldn't find key {key} in {kind} {name}")),
        },
    }
}

/// A downward-API field of the pod.
pub fn field(pod: &Value, path: &str) -> Result<String, String> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let keyed = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("']"))
            .map(|key| key.trim_start_matches('[').trim_start_matches('\''))
    };
    let metadata = &pod["metadata"];
    Ok(match path {
        "metadata.name" => text(&metadata["name"]),
        "metadata.namespace" => text(&metadata["namespace"]),
        "metadata.uid" => text(&metadata["uid"]),
        "spec.nodeName" => text(&pod["spec"]["nodeName"]),
        "spec.serviceAccountName" => text(&pod["spec"]["serviceAccountName"]),
        "status.hostIP" => text(&pod["status"]["hostIP"]),
        "status.podIP" => text(&pod["status"]["podIP"]),
        "status.podIPs" => text(&pod["status"]["podIP"]),
        _ => match (keyed("metadata.labels"), keyed("metadata.annotations")) {
            (Some(key), _) => text(&metadata["labels"][key]),
            (_, Some(key)) => text(&metadata["annotations"][key]),
            _ => return Err(format!("unsupported fieldPath {path:?}")),
        },
    })
}

/// `resourceFieldRef`: the container's limit (or request, for `requests.*`) in units of
/// `divisor`, rounded up as the kubelet does; an unset CPU limit is this machine's cores.
fn resource_field(container: &Value, resource: &str, divisor: &str) -> Result<String, String> {
    let (section, name) = resource.split_once('.').ok_or_else(|| format!("unsupported resource {resource:?}"))?;
    let quantity = container["resources"][section][name]
        .as_str()
        .map(str::to_owned)
        .or_else(|| container["resources"][section][name].as_f64().map(|n| n.to_string()));
    let value = match (quantity, name) {
        (Some(q), _) => parse_quantity(&q)?,
        (None, "cpu") => std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
        (None, _) => 0.0,
    };
    let divisor = parse_quantity(divisor)?;
    if divisor <= 0.0 {
        return Err(format!("invalid divisor {divisor}"));
    }
    Ok(((value / divisor).ceil() as i64).to_string())
}

/// A Kubernetes quantity (`500m`, `2`, `1Gi`, `1e3`) as a number.
pub fn parse_quantity(quantity: &str) -> Result<f64, String> {
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let trimmed = quantity.trim();
    let (number, scale) = suffixes
        .iter()
        .find_map(|(suffix, scale)| trimmed.strip_suffix(suffix).map(|n| (n, *scale)))
        .unwrap_or((trimmed, 1.0));
    number.parse::<f64>().map(|n| n * scale).map_err(|_| format!("invalid quantity {quantity:?}"))
}

/// One fixed source for tests: its plural, its name and its data.
#[cfg(test)]
pub type FixedSource = (&'static str, &'static str, Vec<(&'static str, &'static str)>);

/// Sources for tests.
#[cfg(test)]
pub struct Fixed(pub Vec<FixedSource>);

#[cfg(test)]
impl Sources for Fixed {
    fn data(&self, plural: &str, name: &str) -> Option<Vec<(String, String)>> {
        let (_, _, data) = self.0.iter().find(|(p, n, _)| *p == plural && *n == name)?;
        Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixed() -> Fixed {
        Fixed(vec![
            ("configmaps", "settings", vec![("MODE", "fast"), ("level", "3")]),
            ("secrets", "token", vec![("value", "s3cret")]),
        ])
    }

    fn pod() -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "web"}},
               "spec": {"nodeName": "devcluster"}, "status": {"podIP": "127.1.0.7"}})
    }

    #[test]
    fn references_expand_against_earlier_variables_only() {
        let mut vars = Vars::default();
        vars.set("A", "1".into());
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$$(A) costs $$5", &vars), "$(A) costs $5");
        assert_eq!(expand("$A $(A", &vars), "$A $(A");
    }

    #[test]
    fn env_combines_sources_in_the_kubelets_order() {
        let container = json!({
            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
            "env": [
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "ADDRESS", "value": "$(IP):8000 in $(CFG_MODE) mode for $(WEB_SERVICE_HOST)"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "value"}}},
                {"name": "MISSING", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k", "optional": true}}},
                {"name": "CFG_level", "value": "override"},
                {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            ],
            "resources": {"limits": {"cpu": "1500m"}},
        });
        let services = service_vars(&[
            json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "127.2.0.3", "ports": [{"name": "http", "port": 80}]}}),
        ]);
        let vars = resolve(&pod(), &container, services, &fixed()).unwrap();
        assert_eq!(vars.get("POD"), Some("p"));
        assert_eq!(vars.get("APP"), Some("web"));
        assert_eq!(vars.get("ADDRESS"), Some("127.1.0.7:8000 in fast mode for 127.2.0.3"));
        assert_eq!(vars.get("TOKEN"), Some("s3cret"));
        assert_eq!(vars.get("MISSING"), None);
        assert_eq!(vars.get("CFG_level"), Some("override"));
        assert_eq!(vars.get("CPUS"), Some("2"));
        assert_eq!(vars.get("WEB_SERVICE_PORT_HTTP"), Some("80"));
        assert_eq!(vars.get("WEB_PORT_80_TCP_ADDR"), Some("127.2.0.3"));
    }

    #[test]
    fn missing_sources_say_what_is_missing() {
        let missing_map = json!({"envFrom": [{"configMapRef": {"name": "absent"}}]});
        assert_eq!(
            resolve(&pod(), &missing_map, Vars::default(), &fixed()),
            Err("configmap \"absent\" not found".into())
        );
        let missing_key =
            json!({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "token", "key": "nope"}}}]});
        assert_eq!(
            resolve(&pod(), &missing_key, Vars::default(), &fixed()),
            Err("couldn't find key nope in secret token".into())
        );
        assert!(field(&pod(), "spec.containers").is_err());
    }

    #[test]
    fn quantities_parse_with_their_suffixes() {
        assert_eq!(parse_quantity("500m").unwrap(), 0.5);
        assert_eq!(parse_quantity("2Gi").unwrap(), 2.0 * 1024f64.powi(3));
        assert_eq!(parse_quantity("3").unwrap(), 3.0);
        assert!(parse_quantity("lots").is_err());
    }
}
