//! Credentials for an OCI registry: `LANTERN_OCI_USERNAME` and `LANTERN_OCI_PASSWORD` (keys of
//! an opaque Secret), or else the registry's entry in the Docker config file at
//! `LANTERN_OCI_AUTH_FILE` (a `kubernetes.io/dockerconfigjson` Secret's `.dockerconfigjson`,
//! which the operator mounts there: the same Secret `imagePullSecrets` use). An entry gives
//! `auth` (base64 of `user:password`) or `username` and `password`; its key names the registry
//! as `host[:port]`, with or without a scheme and path.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

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
    let Some(bytes) = read_config(Path::new(&path))? else { return Ok(None) };
    from_docker_config(&bytes, registry).map_err(|reason| Error::invalid(format!("{path}: {reason}")))
}

/// The config file's bytes, read no further than [`MAX_CONFIG_BYTES`]; `None` when there is no
/// file (the operator mounts the Secret's key optionally: an opaque Secret leaves none).
fn read_config(path: &Path) -> Result<Option<Vec<u8>>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("opening {} ({})", env::OCI_AUTH_FILE, path.display()), e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(format!("reading {} ({})", env::OCI_AUTH_FILE, path.display()), e))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::invalid(format!("{} is larger than {MAX_CONFIG_BYTES} bytes", path.display())));
    }
    Ok(Some(bytes))
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

    #[test]
    fn a_config_file_is_read_no_further_than_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_config(&dir.path().join("absent")).unwrap(), None);
        let path = dir.path().join("config.json");
        std::fs::write(&path, vec![b' '; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        assert!(read_config(&path).unwrap_err().to_string().contains("is larger than 1048576 bytes"));
        std::fs::write(&path, b"{}").unwrap();
        assert_eq!(read_config(&path).unwrap().as_deref(), Some(&b"{}"[..]));
    }
}
