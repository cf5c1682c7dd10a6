//! What the apiserver fills in for built-in kinds on every write: a Service's type, ports and
//! cluster IP (chosen from the devcluster's service range, loopback addresses the service proxy
//! listens on, and immutable once set), and a Secret's `stringData` folded into `data`.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use base64::Engine;
use serde_json::{Value, json};

use crate::network::Range;
use crate::status::Cause;

/// Defaults a Secret: `stringData` becomes base64 `data` (winning over the same key there),
/// and the type is `Opaque` when unset.
pub fn secret(object: &mut Value) {
    if let Some(Value::Object(strings)) = object.as_object_mut().and_then(|o| o.remove("stringData")) {
        for (key, value) in strings {
            let encoded = base64::engine::general_purpose::STANDARD.encode(value.as_str().unwrap_or_default());
            object["data"][key] = json!(encoded);
        }
    }
    if object["type"].is_null() {
        object["type"] = json!("Opaque");
    }
}

/// Defaults and checks a Service. On create (`stored` is `None`) a missing cluster IP is chosen
/// in `range` among those not in `used`; `None` makes it headless. On update the stored IP
/// stays, and changing it is refused.
pub fn service(
    object: &mut Value,
    stored: Option<&Value>,
    range: Range,
    used: &HashSet<String>,
) -> Result<(), Vec<Cause>> {
    let mut causes = Vec::new();
    let spec = &mut object["spec"];
    for (field, default) in [("type", "ClusterIP"), ("sessionAffinity", "None"), ("internalTrafficPolicy", "Cluster")] {
        if spec[field].is_null() {
            spec[field] = json!(default);
        }
    }
    for (index, port) in spec["ports"].as_array_mut().into_iter().flatten().enumerate() {
        let number = port["port"].as_u64().unwrap_or(0);
        if !(1..=65535).contains(&number) {
            causes.push(Cause {
                reason: "FieldValueInvalid",
                message: format!("Invalid value: {}: must be between 1 and 65535, inclusive", port["port"]),
                field: format!("spec.ports[{index}].port"),
            });
        }
        if port["protocol"].is_null() {
            port["protocol"] = json!("TCP");
        }
        if port["targetPort"].is_null() {
            port["targetPort"] = json!(number);
        }
    }
    let asked = spec["clusterIP"].as_str().unwrap_or_default().to_owned();
    let ip = match stored.and_then(|s| s["spec"]["clusterIP"].as_str()) {
        Some(kept) if asked.is_empty() || asked == kept => kept.to_owned(),
        Some(_) => {
            causes.push(Cause {
                reason: "FieldValueInvalid",
                message: format!("Invalid value: {asked:?}: field is immutable"),
                field: "spec.clusterIP".into(),
            });
            asked
        }
        None if asked == "None" => asked,
        None if asked.is_empty() => match free_ip(range, used) {
            Some(ip) => ip,
            None => {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    message: format!("Internal error: no cluster IP is free in {range}"),
                    field: "spec.clusterIP".into(),
                });
                asked
            }
        },
        None => {
            if let Err(message) = check_ip(&asked, range, used) {
                causes.push(Cause { reason: "FieldValueInvalid", message, field: "spec.clusterIP".into() });
            }
            asked
        }
    };
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    spec["ipFamilies"] = json!(["IPv4"]);
    spec["ipFamilyPolicy"] = json!("SingleStack");
    match causes.is_empty() {
        true => Ok(()),
        false => Err(causes),
    }
}

fn free_ip(range: Range, used: &HashSet<String>) -> Option<String> {
    range.addresses().map(|ip| ip.to_string()).find(|ip| !used.contains(ip))
}

fn check_ip(asked: &str, range: Range, used: &HashSet<String>) -> Result<(), String> {
    let ip: Ipv4Addr = asked.parse().map_err(|_| format!("Invalid value: {asked:?}: must be a valid IP address"))?;
    if !range.contains(ip) {
        return Err(format!(
            "Invalid value: {asked:?}: failed to allocate IP {asked}: the provided IP ({asked}) is not in the valid range. The range of valid IPs is {range}"
        ));
    }
    match used.contains(asked) {
        true => {
            Err(format!("Invalid value: {asked:?}: failed to allocate IP {asked}: provided IP is already allocated"))
        }
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_get_a_free_cluster_ip_that_then_stays() {
        let used: HashSet<String> = ["127.2.0.1".to_owned()].into();
        let mut created = json!({"spec": {"ports": [{"port": 8000}]}});
        service(&mut created, None, Range(2), &used).unwrap();
        assert_eq!(created["spec"]["clusterIP"], "127.2.0.2");
        assert_eq!(created["spec"]["ports"][0], json!({"port": 8000, "protocol": "TCP", "targetPort": 8000}));

        let mut update = json!({"spec": {"ports": [{"port": 8000}]}});
        service(&mut update, Some(&created), Range(2), &used).unwrap();
        assert_eq!(update["spec"]["clusterIP"], "127.2.0.2");
        let mut moved = json!({"spec": {"clusterIP": "127.2.0.9"}});
        assert_eq!(service(&mut moved, Some(&created), Range(2), &used).unwrap_err()[0].field, "spec.clusterIP");

        let mut headless = json!({"spec": {"clusterIP": "None"}});
        service(&mut headless, None, Range(2), &used).unwrap();
        assert_eq!(headless["spec"]["clusterIP"], "None");
        let mut taken = json!({"spec": {"clusterIP": "127.2.0.1"}});
        assert!(service(&mut taken, None, Range(2), &used).unwrap_err()[0].message.contains("already allocated"));
        let mut outside = json!({"spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 0}]}});
        let causes = service(&mut outside, None, Range(2), &used).unwrap_err();
        assert_eq!(causes.len(), 2);
        assert!(causes[1].message.contains("The range of valid IPs is 127.2.0.0/16"));
    }

    #[test]
    fn secrets_fold_string_data_into_data() {
        let mut secret_object = json!({"stringData": {"token": "abc"}, "data": {"other": "eA=="}});
        secret(&mut secret_object);
        assert_eq!(secret_object, json!({"data": {"token": "YWJj", "other": "eA=="}, "type": "Opaque"}));
    }
}
