//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`) for ConfigMaps, Secrets,
//! Deployments ([`super::protobuf_deployment`]: `kubectl create deployment`) and DeleteOptions. client-go's typed clients send these, among them Helm's release storage (a
//! Secret per release, purged with a DELETE) and `kubectl create configmap|secret`. The body is the magic `k8s\0` and a
//! `runtime.Unknown` envelope whose `raw` bytes are the object; it is turned into the JSON the
//! rest of the API works on. Answers are always JSON, which those clients also accept.
//! Other kinds in protobuf are refused with 415, naming the kinds that are understood.

use std::collections::HashMap;

use base64::Engine as _;
use prost::Message;
use serde_json::{Map, Value, json};

use crate::status::ApiError;

pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

/// The client-settable part of `ObjectMeta`; the server's own fields are ignored as on JSON.
#[derive(Clone, PartialEq, Message)]
pub(super) struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    pub(super) name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub(super) generate_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub(super) namespace: Option<String>,
    #[prost(string, optional, tag = "6")]
    pub(super) resource_version: Option<String>,
    #[prost(map = "string, string", tag = "11")]
    pub(super) labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "12")]
    pub(super) annotations: HashMap<String, String>,
    #[prost(message, repeated, tag = "13")]
    pub(super) owner_references: Vec<OwnerReference>,
    #[prost(string, repeated, tag = "14")]
    pub(super) finalizers: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct OwnerReference {
    #[prost(string, optional, tag = "1")]
    kind: Option<String>,
    #[prost(string, optional, tag = "3")]
    name: Option<String>,
    #[prost(string, optional, tag = "4")]
    uid: Option<String>,
    #[prost(string, optional, tag = "5")]
    api_version: Option<String>,
    #[prost(bool, optional, tag = "6")]
    controller: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    block_owner_deletion: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct DeleteOptions {
    #[prost(int64, optional, tag = "1")]
    grace_period_seconds: Option<i64>,
    #[prost(message, optional, tag = "2")]
    preconditions: Option<Preconditions>,
    #[prost(bool, optional, tag = "3")]
    orphan_dependents: Option<bool>,
    #[prost(string, optional, tag = "4")]
    propagation_policy: Option<String>,
    #[prost(string, repeated, tag = "5")]
    dry_run: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct Preconditions {
    #[prost(string, optional, tag = "1")]
    uid: Option<String>,
    #[prost(string, optional, tag = "2")]
    resource_version: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ConfigMap {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(map = "string, string", tag = "2")]
    data: HashMap<String, String>,
    #[prost(map = "string, bytes", tag = "3")]
    binary_data: HashMap<String, Vec<u8>>,
    #[prost(bool, optional, tag = "4")]
    immutable: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct Secret {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(map = "string, bytes", tag = "2")]
    data: HashMap<String, Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    type_: Option<String>,
    #[prost(map = "string, string", tag = "4")]
    string_data: HashMap<String, String>,
    #[prost(bool, optional, tag = "5")]
    immutable: Option<bool>,
}

/// Whether `body` is protobuf (it starts with the `k8s\0` magic), whatever its content type says.
pub fn is_protobuf(body: &[u8]) -> bool {
    body.starts_with(MAGIC)
}

/// The JSON object a protobuf body encodes.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let bad = |what: String| ApiError::bad_request(format!("the protobuf request body is invalid: {what}"));
    let envelope = body.strip_prefix(MAGIC).ok_or_else(|| bad("it does not start with the k8s magic".into()))?;
    let unknown = Unknown::decode(envelope).map_err(|e| bad(e.to_string()))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let (api_version, kind) = (type_meta.api_version.unwrap_or_default(), type_meta.kind.unwrap_or_default());
    let base64 = |bytes: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    let mut object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "ConfigMap") => {
            let map = ConfigMap::decode(raw.as_slice()).map_err(|e| bad(e.to_string()))?;
            let mut object = json!({"metadata": metadata(map.metadata.unwrap_or_default())});
            if !map.data.is_empty() {
                object["data"] = json!(map.data);
            }
            if !map.binary_data.is_empty() {
                object["binaryData"] = map.binary_data.iter().map(|(k, v)| (k.clone(), base64(v))).collect();
            }
            if let Some(immutable) = map.immutable {
                object["immutable"] = json!(immutable);
            }
            object
        }
        ("v1", "Secret") => {
            let secret = Secret::decode(raw.as_slice()).map_err(|e| bad(e.to_string()))?;
            let mut object = json!({"metadata": metadata(secret.metadata.unwrap_or_default())});
            if !secret.data.is_empty() {
                object["data"] = secret.data.iter().map(|(k, v)| (k.clone(), base64(v))).collect();
            }
            if !secret.string_data.is_empty() {
                object["stringData"] = json!(secret.string_data);
            }
            if let Some(type_) = secret.type_ {
                object["type"] = json!(type_);
            }
            if let Some(immutable) = secret.immutable {
                object["immutable"] = json!(immutable);
            }
            object
        }
        ("apps/v1", "Deployment") => super::protobuf_deployment::decode(&raw, bad)?,
        (_, "DeleteOptions") => {
            let options = DeleteOptions::decode(raw.as_slice()).map_err(|e| bad(e.to_string()))?;
            let mut object = json!({});
            if let Some(seconds) = options.grace_period_seconds {
                object["gracePeriodSeconds"] = json!(seconds);
            }
            if let Some(preconditions) = options.preconditions {
                object["preconditions"] =
                    json!({"uid": preconditions.uid, "resourceVersion": preconditions.resource_version});
            }
            if let Some(orphan) = options.orphan_dependents {
                object["orphanDependents"] = json!(orphan);
            }
            if let Some(policy) = options.propagation_policy {
                object["propagationPolicy"] = json!(policy);
            }
            if !options.dry_run.is_empty() {
                object["dryRun"] = json!(options.dry_run);
            }
            object
        }
        _ => {
            return Err(ApiError::unsupported_media_type(&format!(
                "{MEDIA_TYPE} for {api_version} {kind} (protobuf is understood for ConfigMaps, Secrets, Deployments and DeleteOptions only; send JSON)"
            )));
        }
    };
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    Ok(object)
}

pub(super) fn metadata(meta: ObjectMeta) -> Value {
    let mut out = Map::new();
    let mut text = |field: &str, value: Option<String>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.insert(field.to_owned(), Value::String(value));
        }
    };
    text("name", meta.name);
    text("generateName", meta.generate_name);
    text("namespace", meta.namespace);
    text("resourceVersion", meta.resource_version);
    if !meta.labels.is_empty() {
        out.insert("labels".into(), json!(meta.labels));
    }
    if !meta.annotations.is_empty() {
        out.insert("annotations".into(), json!(meta.annotations));
    }
    if !meta.owner_references.is_empty() {
        let owners = meta.owner_references.into_iter().map(|r| {
            json!({
                "apiVersion": r.api_version.unwrap_or_default(), "kind": r.kind.unwrap_or_default(),
                "name": r.name.unwrap_or_default(), "uid": r.uid.unwrap_or_default(),
                "controller": r.controller, "blockOwnerDeletion": r.block_owner_deletion,
            })
        });
        out.insert("ownerReferences".into(), owners.collect());
    }
    if !meta.finalizers.is_empty() {
        out.insert("finalizers".into(), json!(meta.finalizers));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta { api_version: Some("v1".into()), kind: Some(kind.into()) }),
            raw: Some(raw),
        };
        [MAGIC, unknown.encode_to_vec().as_slice()].concat()
    }

    #[test]
    fn a_secret_in_protobuf_becomes_the_json_a_client_would_send() {
        let secret = Secret {
            metadata: Some(ObjectMeta {
                name: Some("sh.helm.release.v1.lantern.v1".into()),
                resource_version: Some("42".into()),
                labels: HashMap::from([("owner".into(), "helm".into())]),
                ..Default::default()
            }),
            data: HashMap::from([("release".into(), b"H4sI".to_vec())]),
            type_: Some("helm.sh/release.v1".into()),
            ..Default::default()
        };
        let object = decode(&envelope("Secret", secret.encode_to_vec())).unwrap();
        assert_eq!(
            object,
            json!({
                "apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
                "metadata": {"name": "sh.helm.release.v1.lantern.v1", "resourceVersion": "42", "labels": {"owner": "helm"}},
                "data": {"release": "SDRzSQ=="},
            })
        );
    }

    #[test]
    fn a_config_map_decodes_and_other_kinds_are_refused_with_415() {
        let map = ConfigMap {
            metadata: Some(ObjectMeta { name: Some("settings".into()), ..Default::default() }),
            data: HashMap::from([("mode".into(), "fast".into())]),
            ..Default::default()
        };
        let object = decode(&envelope("ConfigMap", map.encode_to_vec())).unwrap();
        assert_eq!(object["data"], json!({"mode": "fast"}));
        assert_eq!(object["metadata"], json!({"name": "settings"}));

        let options = DeleteOptions { propagation_policy: Some("Background".into()), ..Default::default() };
        let decoded = decode(&envelope("DeleteOptions", options.encode_to_vec())).unwrap();
        assert_eq!(decoded["propagationPolicy"], "Background");

        let refused = decode(&envelope("Pod", Vec::new())).unwrap_err();
        assert_eq!(refused.code.as_u16(), 415);
        assert!(decode(b"not protobuf").is_err());
    }
}
