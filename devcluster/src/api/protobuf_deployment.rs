//! `apps/v1` Deployments in protobuf, as `kubectl create deployment` sends them: the fields that
//! command and typed clients set (replicas, selector, the pod template's labels and containers
//! with their image, command, args, working directory, ports, plain env values and pull policy,
//! the strategy's type and the spec's counts). The Go encoder writes every non-pointer field,
//! zero or not, so a body carries many fields nobody set; every field not understood here is
//! checked to be zero all the way down ([`check_zero`]), and one that is not is refused with 415
//! naming it, never dropped.

use std::collections::HashMap;

use bytes::Buf;
use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint};
use serde_json::{Map, Value, json};

use super::protobuf::{ObjectMeta, metadata};
use crate::status::ApiError;

#[derive(Clone, PartialEq, Message)]
pub(super) struct Deployment {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<DeploymentSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct DeploymentSpec {
    #[prost(int32, optional, tag = "1")]
    replicas: Option<i32>,
    #[prost(message, optional, tag = "2")]
    selector: Option<LabelSelector>,
    #[prost(message, optional, tag = "3")]
    template: Option<PodTemplateSpec>,
    #[prost(message, optional, tag = "4")]
    strategy: Option<Strategy>,
    #[prost(int32, optional, tag = "5")]
    min_ready_seconds: Option<i32>,
    #[prost(int32, optional, tag = "6")]
    revision_history_limit: Option<i32>,
    #[prost(int32, optional, tag = "9")]
    progress_deadline_seconds: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct LabelSelector {
    #[prost(map = "string, string", tag = "1")]
    match_labels: HashMap<String, String>,
    #[prost(message, repeated, tag = "2")]
    match_expressions: Vec<Requirement>,
}

#[derive(Clone, PartialEq, Message)]
struct Requirement {
    #[prost(string, optional, tag = "1")]
    key: Option<String>,
    #[prost(string, optional, tag = "2")]
    operator: Option<String>,
    #[prost(string, repeated, tag = "3")]
    values: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct PodTemplateSpec {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<PodSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct PodSpec {
    #[prost(message, repeated, tag = "2")]
    containers: Vec<Container>,
}

#[derive(Clone, PartialEq, Message)]
struct Container {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    image: Option<String>,
    #[prost(string, repeated, tag = "3")]
    command: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    args: Vec<String>,
    #[prost(string, optional, tag = "5")]
    working_dir: Option<String>,
    #[prost(message, repeated, tag = "6")]
    ports: Vec<ContainerPort>,
    #[prost(message, repeated, tag = "7")]
    env: Vec<EnvVar>,
    #[prost(string, optional, tag = "14")]
    image_pull_policy: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ContainerPort {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(int32, optional, tag = "3")]
    container_port: Option<i32>,
    #[prost(string, optional, tag = "4")]
    protocol: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct EnvVar {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    value: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct Strategy {
    #[prost(string, optional, tag = "1")]
    type_: Option<String>,
}

/// A message's fields as this module reads them: each tag, and the shape of the message it holds
/// (`None`: a scalar, a string, a map or a message taken whole).
struct Shape {
    name: &'static str,
    fields: &'static [(u32, Option<&'static Shape>)],
}

static META: Shape = Shape {
    name: "ObjectMeta",
    fields: &[(1, None), (2, None), (3, None), (6, None), (11, None), (12, None), (13, None), (14, None)],
};
static DEPLOYMENT: Shape =
    Shape { name: "Deployment", fields: &[(1, Some(&META)), (2, Some(&SPEC)), (3, Some(&STATUS))] };
static STATUS: Shape = Shape { name: "DeploymentStatus", fields: &[] };
static SPEC: Shape = Shape {
    name: "DeploymentSpec",
    fields: &[
        (1, None),
        (2, Some(&SELECTOR)),
        (3, Some(&TEMPLATE)),
        (4, Some(&STRATEGY)),
        (5, None),
        (6, None),
        (9, None),
    ],
};
static SELECTOR: Shape = Shape { name: "LabelSelector", fields: &[(1, None), (2, None)] };
static TEMPLATE: Shape = Shape { name: "PodTemplateSpec", fields: &[(1, Some(&META)), (2, Some(&POD))] };
static POD: Shape = Shape { name: "PodSpec", fields: &[(2, Some(&CONTAINER))] };
static CONTAINER: Shape = Shape {
    name: "Container",
    fields: &[
        (1, None),
        (2, None),
        (3, None),
        (4, None),
        (5, None),
        (6, Some(&PORT)),
        (7, Some(&ENV)),
        (8, Some(&RESOURCES)),
        (14, None),
    ],
};
static PORT: Shape = Shape { name: "ContainerPort", fields: &[(1, None), (3, None), (4, None)] };
static ENV: Shape = Shape { name: "EnvVar", fields: &[(1, None), (2, None)] };
static RESOURCES: Shape = Shape { name: "ResourceRequirements", fields: &[] };
static STRATEGY: Shape = Shape { name: "DeploymentStrategy", fields: &[(1, None)] };

/// The JSON a client would send for the Deployment `raw` encodes.
pub(super) fn decode(raw: &[u8], bad: impl Fn(String) -> ApiError) -> Result<Value, ApiError> {
    check_zero(raw, &DEPLOYMENT).map_err(|field| {
        ApiError::unsupported_media_type(&format!(
            "{} for apps/v1 Deployment with {field} set (not understood in protobuf; send JSON, as kubectl apply does)",
            super::protobuf::MEDIA_TYPE
        ))
    })?;
    let deployment = Deployment::decode(raw).map_err(|e| bad(e.to_string()))?;
    let spec = deployment.spec.unwrap_or_default();
    let mut out = json!({"metadata": metadata(deployment.metadata.unwrap_or_default())});
    let mut fields = Map::new();
    let mut count = |name: &str, value: Option<i32>| {
        if let Some(value) = value {
            fields.insert(name.to_owned(), json!(value));
        }
    };
    count("replicas", spec.replicas);
    count("minReadySeconds", spec.min_ready_seconds.filter(|&s| s != 0));
    count("revisionHistoryLimit", spec.revision_history_limit);
    count("progressDeadlineSeconds", spec.progress_deadline_seconds);
    if let Some(selector) = spec.selector {
        let expressions: Vec<Value> = selector
            .match_expressions
            .into_iter()
            .map(|r| json!({"key": r.key.unwrap_or_default(), "operator": r.operator.unwrap_or_default(), "values": r.values}))
            .collect();
        fields
            .insert("selector".into(), json!({"matchLabels": selector.match_labels, "matchExpressions": expressions}));
    }
    if let Some(strategy) = spec.strategy.and_then(|s| s.type_).filter(|t| !t.is_empty()) {
        fields.insert("strategy".into(), json!({"type": strategy}));
    }
    let template = spec.template.unwrap_or_default();
    let containers: Vec<Value> = template.spec.unwrap_or_default().containers.into_iter().map(container).collect();
    fields.insert(
        "template".into(),
        json!({"metadata": metadata(template.metadata.unwrap_or_default()), "spec": {"containers": containers}}),
    );
    out["spec"] = Value::Object(fields);
    Ok(out)
}

fn container(container: Container) -> Value {
    let mut out = Map::new();
    let mut text = |name: &str, value: Option<String>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.insert(name.to_owned(), Value::String(value));
        }
    };
    text("name", container.name);
    text("image", container.image);
    text("workingDir", container.working_dir);
    text("imagePullPolicy", container.image_pull_policy);
    let mut list = |name: &str, values: Vec<Value>| {
        if !values.is_empty() {
            out.insert(name.to_owned(), Value::Array(values));
        }
    };
    list("command", container.command.into_iter().map(Value::String).collect());
    list("args", container.args.into_iter().map(Value::String).collect());
    list(
        "ports",
        container
            .ports
            .into_iter()
            .map(|p| {
                let mut port = json!({"containerPort": p.container_port.unwrap_or_default()});
                if let Some(name) = p.name.filter(|n| !n.is_empty()) {
                    port["name"] = name.into();
                }
                if let Some(protocol) = p.protocol.filter(|n| !n.is_empty()) {
                    port["protocol"] = protocol.into();
                }
                port
            })
            .collect(),
    );
    list(
        "env",
        container
            .env
            .into_iter()
            .map(|e| json!({"name": e.name.unwrap_or_default(), "value": e.value.unwrap_or_default()}))
            .collect(),
    );
    Value::Object(out)
}

/// Checks that every field of `message` that `shape` does not read is zero (a zero varint or
/// fixed number, an empty string or message), looking into the messages it does read; the
/// error names the first field that is not, as `Shape.tag`.
fn check_zero(mut message: &[u8], shape: &Shape) -> Result<(), String> {
    let malformed = || format!("a malformed {}", shape.name);
    while message.has_remaining() {
        let (tag, wire_type) = decode_key(&mut message).map_err(|_| malformed())?;
        let known = shape.fields.iter().find(|(t, _)| *t == tag);
        let zero = match wire_type {
            WireType::Varint => decode_varint(&mut message).map_err(|_| malformed())? == 0,
            WireType::LengthDelimited => {
                let length =
                    usize::try_from(decode_varint(&mut message).map_err(|_| malformed())?).unwrap_or(usize::MAX);
                if length > message.len() {
                    return Err(malformed());
                }
                let (field, rest) = message.split_at(length);
                message = rest;
                if let Some((_, Some(inner))) = known {
                    check_zero(field, inner)?;
                }
                field.is_empty()
            }
            WireType::ThirtyTwoBit | WireType::SixtyFourBit => {
                let width = if wire_type == WireType::ThirtyTwoBit { 4 } else { 8 };
                if width > message.len() {
                    return Err(malformed());
                }
                let (field, rest) = message.split_at(width);
                message = rest;
                field.iter().all(|&b| b == 0)
            }
            WireType::StartGroup | WireType::EndGroup => return Err(malformed()),
        };
        if known.is_none() && !zero {
            return Err(format!("{}.{tag}", shape.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> Deployment {
        let labels = HashMap::from([("app".to_owned(), "web".to_owned())]);
        Deployment {
            metadata: Some(ObjectMeta { name: Some("web".into()), ..Default::default() }),
            spec: Some(DeploymentSpec {
                replicas: Some(1),
                selector: Some(LabelSelector { match_labels: labels.clone(), match_expressions: vec![] }),
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta { labels, ..Default::default() }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: Some("busybox".into()),
                            image: Some("busybox".into()),
                            command: vec!["sleep".into(), "300".into()],
                            ..Default::default()
                        }],
                    }),
                }),
                strategy: Some(Strategy::default()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_deployment_decodes_to_the_json_kubectl_would_send_and_set_unknown_fields_are_refused() {
        let mut raw = web().encode_to_vec();
        // A zero field the Go encoder writes (status.replicas = 0, in a status message).
        raw.extend([0x1a, 0x02, 0x10, 0x00]);
        let object = decode(&raw, ApiError::bad_request).unwrap();
        assert_eq!(object["spec"]["replicas"], 1);
        assert_eq!(object["spec"]["selector"]["matchLabels"], json!({"app": "web"}));
        let container = &object["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(*container, json!({"name": "busybox", "image": "busybox", "command": ["sleep", "300"]}));

        // A container's `stdin: true` (tag 16) is not read here: refused, not dropped.
        let mut with_stdin = web();
        let container = Container { name: Some("c".into()), ..Default::default() };
        let mut bytes = container.encode_to_vec();
        bytes.extend([0x80, 0x01, 0x01]);
        with_stdin.spec.as_mut().unwrap().template = None;
        let mut raw = with_stdin.encode_to_vec();
        // spec (2) { template (3) { spec (2) { containers (2) { … stdin } } } }
        let pod = [&[0x12, bytes.len() as u8][..], &bytes].concat();
        let template = [&[0x12, pod.len() as u8][..], &pod].concat();
        let spec = [&[0x1a, template.len() as u8][..], &template].concat();
        raw.extend([&[0x12, spec.len() as u8][..], &spec].concat());
        let refused = decode(&raw, ApiError::bad_request).unwrap_err();
        assert_eq!(refused.code.as_u16(), 415);
        assert!(refused.message.contains("Container.16"), "{}", refused.message);
    }
}
