//! Credentials for an OCI registry: `LANTERN_OCI_USERNAME` and `LANTERN_OCI_PASSWORD` (keys of
//! an opaque Secret), or else the registry's entry in the Docker config file at
//! `LANTERN_OCI_AUTH_FILE` (a `kubernetes.io/dockerconfigjson` Secret's `.dockerconfigjson`,
//! which the operator mounts there: the same Secret `imagePullSecrets` use). An entry gives
//! `auth` (base64 of `user:password`) or `username` and `password`; its key names the registry
//! as `host[:port]`, with or without a scheme and path.

use std::collections::BTreeMap;

use base64::Engine as _;
use lantern_contract::env;
use serde::Deserialize;

use crate::error::{Error, Result};

/// The most of a Docker config file that is read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// The username and password for `registry` (`host[:port]`) from the environment; `None` when
/// none is given for it.
pub(super) fn credentials(registry: &str) -> Result<Option<(String, String)>> {
    let from_env = std::env::var(env::OCI_USERNAME).ok().zip(std::env::var(env::OCI_PASSWORD).ok());
    if from_env.is_some() {
        return Ok(from_env);
    }
    let Ok(path) = std::env::var(env::OCI_AUTH_FILE) else { return Ok(None) };
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        // The operator mounts the Secret's key optionally: an opaque Secret leaves no file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {} ({path})", env::OCI_AUTH_FILE), e)),
    };
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::invalid(format!("{path} is larger than {MAX_CONFIG_BYTES} bytes")));
    }
    from_docker_config(&bytes, registry).map_err(|reason| Error::invalid(format!("{path}: {reason}")))
}

/// The credentials a Docker config file gives `registry`.
fn from_docker_config(bytes: &[u8], registry: &str) -> std::result::Result<Option<(String, String)>, String> {
    let config: DockerConfig = serde_json::from_slice(bytes).map_err(|e| format!("not a Docker config file: {e}"))?;
    let Some(entry) = config.auths.iter().find(|(key, _)| host_of(key) == registry).map(|(_, entry)| entry) else {
        return Ok(None);
    };
    if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
        return Ok(Some((username.clone(), password.clone())));
    }
    let encoded = entry.auth.as_deref().ok_or_else(|| format!("the entry of {registry} has no auth"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| format!("the auth of {registry} is not base64: {e}"))?;
    let text = String::from_utf8(decoded).map_err(|_| format!("the auth of {registry} is not UTF-8"))?;
    let (username, password) =
        text.split_once(':').ok_or_else(|| format!("the auth of {registry} is not user:password"))?;
    Ok(Some((username.to_owned(), password.to_owned())))
}

/// `host[:port]` of a config key such as `https://registry.example:5000/v1/`.
fn host_of(key: &str) -> &str {
    let rest = key.split_once("://").map_or(key, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_docker_config_gives_the_registrys_entry() {
        let auth = base64::engine::general_purpose::STANDARD.encode("robot:s3cret:with-colon");
        let config = serde_json::json!({"auths": {
            "https://registry.example:5000/v1/": {"auth": auth},
            "ghcr.io": {"username": "me", "password": "token"},
            "broken.example": {"auth": "not base64!"},
        }})
        .to_string();
        let found = |registry| from_docker_config(config.as_bytes(), registry);
        assert_eq!(found("registry.example:5000"), Ok(Some(("robot".into(), "s3cret:with-colon".into()))));
        assert_eq!(found("ghcr.io"), Ok(Some(("me".into(), "token".into()))));
        assert_eq!(found("registry.example"), Ok(None), "another port is another registry");
        assert!(found("broken.example").unwrap_err().contains("not base64"));
        assert!(from_docker_config(b"{\"auths\": []}", "ghcr.io").unwrap_err().contains("not a Docker config file"));
    }
}
