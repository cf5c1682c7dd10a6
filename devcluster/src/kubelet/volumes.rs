//! A pod's volumes as directories on this machine, and its containers' mounts.
//!
//! There are no mount namespaces here: a container runs on the host's filesystem. A volume is a
//! directory (emptyDir, ConfigMap and Secret ones under the pod's directory, hostPath as given,
//! a PersistentVolumeClaim under the state directory, the same claim always the same directory),
//! and a container's `mountPath` is made real by rewriting it to that directory wherever it
//! appears in the container's command, args, environment values and working directory.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::env::Sources;

/// Where a pod's volumes live.
pub struct Layout<'a> {
    /// The pod's own directory (emptyDir, ConfigMap and Secret volumes go under it).
    pub pod_dir: &'a Path,
    /// Claims, by namespace and name.
    pub claims_dir: &'a Path,
}

/// A claim's directory.
pub fn claim_dir(claims_dir: &Path, namespace: &str, claim: &str) -> PathBuf {
    claims_dir.join(namespace).join(claim)
}

/// Makes every volume of `pod` exist; returns each volume's name and directory. A missing
/// ConfigMap, Secret or claim (not optional) is the error the pod waits with.
pub fn prepare(pod: &Value, layout: &Layout<'_>, sources: &dyn Sources) -> Result<Vec<(String, PathBuf)>, String> {
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let mut prepared = Vec::new();
    for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let name = volume["name"].as_str().unwrap_or_default().to_owned();
        let own = layout.pod_dir.join("volumes").join(&name);
        let dir = if volume["emptyDir"].is_object() {
            create(&own)?
        } else if let Some(path) = volume["hostPath"]["path"].as_str() {
            host_path(Path::new(path), volume["hostPath"]["type"].as_str().unwrap_or_default())?
        } else if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
            if sources.data("persistentvolumeclaims", claim).is_none() {
                return Err(format!("persistentvolumeclaim \"{claim}\" not found"));
            }
            create(&claim_dir(layout.claims_dir, namespace, claim))?
        } else if let Some((plural, kind, source)) = projected_source(volume) {
            let source_name = source["name"].as_str().or(source["secretName"].as_str()).unwrap_or_default();
            match sources.data(plural, source_name) {
                Some(data) => write_files(&create(&own)?, &data, source)?,
                None if source["optional"] == true => create(&own)?,
                None => return Err(format!("{kind} \"{source_name}\" not found")),
            }
        } else {
            return Err(format!("volume {name:?} has a type the devcluster does not support"));
        };
        prepared.push((name, dir));
    }
    Ok(prepared)
}

fn projected_source(volume: &Value) -> Option<(&'static str, &'static str, &Value)> {
    match (&volume["configMap"], &volume["secret"]) {
        (source, _) if source.is_object() => Some(("configmaps", "configmap", source)),
        (_, source) if source.is_object() => Some(("secrets", "secret", source)),
        _ => None,
    }
}

fn create(dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir.to_owned())
}

/// Gives the pod's volumes (hostPath ones aside) to its `fsGroup` as the kubelet does when
/// containers run as another user: the group owns every file, which it may read and write, and
/// new files in its directories inherit it.
pub fn give_to_group(pod: &Value, prepared: &[(String, PathBuf)], group: u32) -> Result<(), String> {
    let host_paths: Vec<&str> = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["hostPath"].is_object())
        .filter_map(|v| v["name"].as_str())
        .collect();
    for (_, dir) in prepared.iter().filter(|(name, _)| !host_paths.contains(&name.as_str())) {
        chgrp_tree(dir, group).map_err(|e| format!("giving {} to group {group}: {e}", dir.display()))?;
    }
    Ok(())
}

fn chgrp_tree(path: &Path, group: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::symlink_metadata(path)?;
    if metadata.file_type().is_symlink() {
        return Ok(());
    }
    rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(group)))?;
    let mode = metadata.permissions().mode();
    let wanted = match metadata.is_dir() {
        true => mode | 0o2070,
        false => mode | 0o060,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))?;
    if metadata.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chgrp_tree(&entry?.path(), group)?;
        }
    }
    Ok(())
}

/// An empty file at `path` (its directory made), replacing what was there.
pub fn create_file(path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        create(dir)?;
    }
    std::fs::write(path, b"").map_err(|e| format!("creating {}: {e}", path.display()))
}

fn host_path(path: &Path, kind: &str) -> Result<PathBuf, String> {
    match kind {
        "DirectoryOrCreate" => create(path),
        "Directory" if !path.is_dir() => {
            Err(format!("hostPath type check failed: {} is not a directory", path.display()))
        }
        "File" if !path.is_file() => Err(format!("hostPath type check failed: {} is not a file", path.display())),
        _ => Ok(path.to_owned()),
    }
}

/// Writes a ConfigMap's or Secret's keys as files (all of them, or the listed `items` at their
/// paths), with `defaultMode` (or an item's `mode`).
fn write_files(dir: &Path, data: &[(String, String)], source: &Value) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let default_mode = source["defaultMode"].as_u64().unwrap_or(0o644) as u32;
    let files: Vec<(String, &str, u32)> = match source["items"].as_array() {
        Some(items) => items
            .iter()
            .map(|item| {
                let key = item["key"].as_str().unwrap_or_default();
                let value = data.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
                let path = item["path"].as_str().unwrap_or(key).to_owned();
                let mode = item["mode"].as_u64().map_or(default_mode, |m| m as u32);
                value.map(|v| (path, v, mode)).ok_or_else(|| format!("couldn't find key {key}"))
            })
            .collect::<Result<_, _>>()?,
        None => data.iter().map(|(k, v)| (k.clone(), v.as_str(), default_mode)).collect(),
    };
    for (path, value, mode) in files {
        if Path::new(&path).components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(format!("invalid file path {path:?}"));
        }
        let file = dir.join(&path);
        if let Some(parent) = file.parent() {
            create(parent)?;
        }
        // A file left read-only by an earlier start is replaced, not written through.
        let _ = std::fs::remove_file(&file);
        std::fs::write(&file, value).map_err(|e| format!("writing {}: {e}", file.display()))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("setting the mode of {}: {e}", file.display()))?;
    }
    Ok(dir.to_owned())
}

/// A container's mounts: (`mountPath`, directory), longest mount path first so that nested
/// mounts win. An unknown volume name is an error.
pub fn mounts(container: &Value, volumes: &[(String, PathBuf)]) -> Result<Vec<(String, PathBuf)>, String> {
    let mut mounts = Vec::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = mount["name"].as_str().unwrap_or_default();
        let (_, dir) = volumes
            .iter()
            .find(|(volume, _)| volume == name)
            .ok_or_else(|| format!("volumeMount {name:?} names no volume of the pod"))?;
        let dir = match mount["subPath"].as_str().filter(|s| !s.is_empty()) {
            Some(sub) => create(&dir.join(sub))?,
            None => dir.clone(),
        };
        let path = mount["mountPath"].as_str().unwrap_or_default().trim_end_matches('/').to_owned();
        if !path.is_empty() {
            mounts.push((path, dir));
        }
    }
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    Ok(mounts)
}

/// Rewrites each whole-path occurrence of a mount path in `text` to its directory: `/models`
/// and `/models/a` and `--dir=/models` are rewritten, `/models2` and `/data/models` are not.
pub fn rewrite(text: &str, mounts: &[(String, PathBuf)]) -> String {
    let part_of_path = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/');
    let mut out = String::with_capacity(text.len());
    let mut index = 0;
    'scan: while index < text.len() {
        let before = text[..index].chars().next_back();
        if before.is_none_or(|c| !part_of_path(c)) {
            for (path, dir) in mounts {
                if let Some(after) = text[index..].strip_prefix(path.as_str())
                    && after.chars().next().is_none_or(|c| c == '/' || !part_of_path(c))
                {
                    out.push_str(&dir.to_string_lossy());
                    index += path.len();
                    continue 'scan;
                }
            }
        }
        let c = text[index..].chars().next().expect("index is within the text");
        out.push(c);
        index += c.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::env::Fixed;
    use super::*;
    use serde_json::json;

    fn fixed() -> Fixed {
        Fixed(vec![
            ("configmaps", "conf", vec![("a.yaml", "x: 1"), ("b", "2")]),
            ("persistentvolumeclaims", "models", vec![]),
        ])
    }

    #[test]
    fn mount_paths_are_rewritten_as_whole_paths() {
        let mounts =
            vec![("/models/cache".to_owned(), PathBuf::from("/s/c")), ("/models".to_owned(), PathBuf::from("/s/m"))];
        assert_eq!(rewrite("--dir=/models/v1", &mounts), "--dir=/s/m/v1");
        assert_eq!(rewrite("/models/cache/x /models", &mounts), "/s/c/x /s/m");
        assert_eq!(rewrite("/models2 /data/models", &mounts), "/models2 /data/models");
        assert_eq!(rewrite("a:/models:b", &mounts), "a:/s/m:b");
    }

    #[test]
    fn volumes_become_directories() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout { pod_dir: &dir.path().join("pod"), claims_dir: &dir.path().join("claims") };
        let pod = json!({"metadata": {"namespace": "ns"}, "spec": {"volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "conf", "configMap": {"name": "conf", "items": [{"key": "a.yaml", "path": "sub/a.yaml"}]}},
            {"name": "repo", "persistentVolumeClaim": {"claimName": "models"}},
        ]}});
        let volumes = prepare(&pod, &layout, &fixed()).unwrap();
        assert_eq!(volumes[2].1, dir.path().join("claims/ns/models"));
        assert_eq!(std::fs::read_to_string(volumes[1].1.join("sub/a.yaml")).unwrap(), "x: 1");
        assert!(!volumes[1].1.join("b").exists());
        let container = json!({"volumeMounts": [{"name": "repo", "mountPath": "/models"}, {"name": "scratch", "mountPath": "/tmp/work", "subPath": "w"}]});
        let mounts = mounts(&container, &volumes).unwrap();
        assert_eq!(mounts[0], ("/tmp/work".to_owned(), dir.path().join("pod/volumes/scratch/w")));
        assert!(mounts[0].1.is_dir());

        let missing = json!({"metadata": {"namespace": "ns"}, "spec": {"volumes": [{"name": "x", "secret": {"secretName": "gone"}}]}});
        assert_eq!(prepare(&missing, &layout, &fixed()), Err("secret \"gone\" not found".to_owned()));
        let unclaimed = json!({"metadata": {"namespace": "ns"}, "spec": {"volumes": [{"name": "x", "persistentVolumeClaim": {"claimName": "other"}}]}});
        assert_eq!(prepare(&unclaimed, &layout, &fixed()), Err("persistentvolumeclaim \"other\" not found".to_owned()));
    }
}
