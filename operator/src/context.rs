//! What every reconcile shares: the client, the operator's settings, the error type, and the
//! Events it records on the objects it manages.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::{Client, Resource, ResourceExt};

/// The field manager of everything the operator applies, and the source of its Events.
pub const MANAGER: &str = "lantern-operator";

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    /// The worker image for jobs and services that name none.
    pub worker_image: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
}

/// Wraps a Kubernetes API error with what the operator was doing.
pub fn kube_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

/// Records a core/v1 Event on `object`; a failure to record is logged, never fatal.
pub async fn record_event<K>(client: &Client, object: &K, reason: &str, message: &str, warning: bool)
where
    K: Resource<DynamicType = ()>,
{
    let namespace = object.namespace().unwrap_or_else(|| "default".to_owned());
    let now = Time(Timestamp::now());
    let reference: ObjectReference = object.object_ref(&());
    let event = Event {
        metadata: kube::api::ObjectMeta {
            generate_name: Some(format!("{}.", object.name_any())),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        involved_object: reference,
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        type_: Some(if warning { "Warning" } else { "Normal" }.to_owned()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        reporting_component: Some(MANAGER.to_owned()),
        source: Some(EventSource { component: Some(MANAGER.to_owned()), host: None }),
        ..Default::default()
    };
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    if let Err(error) = events.create(&PostParams::default(), &event).await {
        tracing::warn!(%error, reason, "recording an event");
    }
}
