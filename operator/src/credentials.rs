//! The tokens the operator holds for its workers: one per InferenceService (its management
//! calls) and one per TrainingJob (its ranks' collective and rank 0's progress), each in a Secret
//! the operator creates once, owned by the object, with a random 256-bit token — never rewritten,
//! so running pods keep the token they mounted. `lantern_proto::auth::SendToken` sends it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::{Client, Resource};

use crate::context::{Error, kube_error};
use crate::objects::owned_metadata;

/// The key of the token in its Secret, and the file name it is mounted as.
pub const TOKEN_KEY: &str = "token";

/// A Secret owned by `owner`, named `name`, with `labels`, holding a fresh random token.
pub fn token_secret<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: String,
    labels: BTreeMap<String, String>,
) -> Secret {
    let token = hex::encode(rand::random::<[u8; 32]>());
    Secret {
        metadata: owned_metadata(owner, name, labels),
        type_: Some("Opaque".to_owned()),
        string_data: Some(BTreeMap::from([(TOKEN_KEY.to_owned(), token)])),
        ..Secret::default()
    }
}

/// The token in the Secret `secret` names, creating that Secret the first time. A create that
/// loses a race (another pass, another operator) reads the winner's.
pub async fn token(client: &Client, namespace: &str, secret: Secret) -> Result<String, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = secret.metadata.name.clone().unwrap_or_default();
    for _ in 0..2 {
        if let Some(existing) = secrets.get_opt(&name).await.map_err(kube_error(format!("reading Secret {name}")))? {
            let bytes = existing.data.as_ref().and_then(|data| data.get(TOKEN_KEY)).map(|bytes| bytes.0.clone());
            return match bytes.and_then(|bytes| String::from_utf8(bytes).ok()).filter(|t| !t.trim().is_empty()) {
                Some(token) => Ok(token.trim().to_owned()),
                None => Err(Error::Invalid(format!(
                    "Secret {namespace}/{name} has no {TOKEN_KEY:?}; delete it and the operator makes a new one"
                ))),
            };
        }
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(kube_error(format!("creating Secret {name}"))(error)),
        }
    }
    Err(Error::Invalid(format!("Secret {namespace}/{name} could not be read after creating it")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_secret_gets_its_own_random_token() {
        let owner = crate::serving::test_service(json!({}));
        let secret = |name: &str| serde_json::to_value(token_secret(&owner, name.into(), Default::default())).unwrap();
        let (a, b) = (secret("a"), secret("b"));
        let token = a["stringData"][TOKEN_KEY].as_str().unwrap();
        assert_eq!(token.len(), 64);
        assert_ne!(token, b["stringData"][TOKEN_KEY].as_str().unwrap());
        assert_eq!(a["metadata"]["ownerReferences"][0]["kind"], "InferenceService");
    }
}
