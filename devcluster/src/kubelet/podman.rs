//! The container runtime (`--runtime podman`): each container runs from its image in podman's
//! local storage, with `podman run` under runc (crun fails on these machines' cgroup layout), in
//! the host's network namespace — pods keep their loopback IPs and bind them as processes do —
//! and in mount, pid and user-id namespaces of its own.
//!
//! [`run_args`] turns a container's spec into `podman run`'s arguments, a pure function: the
//! pod's and container's `securityContext` (the container's fields win) become the user and
//! groups, a read-only root without podman's extra tmpfs mounts, dropped and added capabilities,
//! `no-new-privileges` and the seccomp profile (`RuntimeDefault` is podman's default profile;
//! none, as on a kubelet without `SeccompDefault`, is unconfined); `resources.limits` become the
//! memory limit (held by a cgroup of the kubelet's own above the container where cgroup v1 is,
//! [`memory_cgroup`], so that an OOM kill can be told from another SIGKILL) and CPUs; volumes
//! are bind mounts, read-only where the mount says so. A `runAsNonRoot` the image's user cannot satisfy is
//! refused before anything runs, with the kubelet's message.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use super::env::parse_quantity;

/// Runs `podman ARGS` with the runtime every call uses, to its end. The kubelet's pod tasks call
/// it from the async runtime: on a multi-threaded one the wait is announced
/// ([`tokio::task::block_in_place`]), so the API server and the other pods' tasks go on
/// meanwhile on other threads.
pub fn podman(args: &[&str]) -> std::io::Result<std::process::Output> {
    waiting(|| Command::new("podman").args(["--runtime", "runc"]).args(args).output())
}

/// Runs `work`, which waits on something outside the process, as [`podman`] says.
fn waiting<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// The user an image runs as (`Config.User`; empty means root), or why it cannot be run.
pub fn image_user(image: &str) -> Result<String, String> {
    let output = podman(&["image", "inspect", "--format", "{{.Config.User}}", image])
        .map_err(|e| format!("running podman: {e}"))?;
    match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned()),
        false => Err(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
    }
}

/// Whether the container `name` was killed for going over its memory limit.
pub fn oom_killed(name: &str) -> bool {
    let output = podman(&["inspect", "--format", "{{.State.OOMKilled}}", name]);
    output.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
}

/// Where the kubelet keeps the memory cgroups that hold containers' limits (cgroup v1).
const MEMORY_CGROUPS: &str = "/sys/fs/cgroup/memory";

/// A memory cgroup of the kubelet's own holding one container's limit, as a real kubelet's pod
/// cgroup does: the container runs beneath it (`--cgroup-parent`). On cgroup v1, as on these
/// machines, podman cannot tell an OOM kill from another SIGKILL, and the container's own cgroup
/// is gone once it has exited; this one stays until [`remove_memory_cgroup`], and its `failcnt`
/// says the limit was hit. `None` where the v1 memory controller is not mounted (podman's
/// `--memory` and its own OOM record are used there).
pub fn memory_cgroup(name: &str, bytes: u64) -> Result<Option<PathBuf>, String> {
    let root = std::path::Path::new(MEMORY_CGROUPS);
    if !root.join("memory.limit_in_bytes").is_file() {
        return Ok(None);
    }
    let dir = root.join("devcluster").join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating the memory cgroup {}: {e}", dir.display()))?;
    // Memory alone: with a memory+swap limit as well, this kernel counts no failure at either.
    std::fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string())
        .map_err(|e| format!("limiting {} to {bytes} bytes: {e}", dir.display()))?;
    Ok(Some(dir))
}

/// The `--cgroup-parent` of a container beneath `cgroup`.
fn cgroup_parent(cgroup: &std::path::Path) -> String {
    let relative = cgroup.strip_prefix(MEMORY_CGROUPS).unwrap_or(cgroup);
    format!("/{}", relative.display())
}

/// Whether anything beneath `cgroup` was refused memory at its limit.
pub fn limit_hit(cgroup: &std::path::Path) -> bool {
    let failures = std::fs::read_to_string(cgroup.join("memory.failcnt")).unwrap_or_default();
    failures.trim().parse::<u64>().is_ok_and(|n| n > 0)
}

/// Removes a [`memory_cgroup`] once nothing runs in it, with the cgroups podman made beneath it
/// (the container's, conmon's).
pub fn remove_memory_cgroup(cgroup: &std::path::Path) {
    waiting(|| remove_cgroup_tree(cgroup));
}

fn remove_cgroup_tree(cgroup: &std::path::Path) {
    // They go as their processes end; retried while those linger.
    for _ in 0..40 {
        let children = std::fs::read_dir(cgroup).into_iter().flatten().flatten();
        for child in children.filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            let _ = std::fs::remove_dir(child.path());
        }
        if std::fs::remove_dir(cgroup).is_ok() || !cgroup.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    tracing::warn!(cgroup = %cgroup.display(), "a memory cgroup could not be removed");
}

/// `resources.limits.memory` in bytes.
pub fn memory_limit(container: &Value) -> Result<Option<u64>, String> {
    container["resources"]["limits"]["memory"].as_str().map(|m| Ok(parse_quantity(m)?.ceil() as u64)).transpose()
}

/// A bind mount.
#[derive(Clone, Debug, PartialEq)]
pub struct Mount {
    /// Where the container sees it.
    pub path: String,
    pub host: PathBuf,
    pub read_only: bool,
}

/// The container's mounts of `volumes` ((`mountPath`, host path), as resolved), read-only where
/// its `volumeMounts` say so.
pub fn mounts(container: &Value, volumes: Vec<(String, PathBuf)>) -> Vec<Mount> {
    let specs = container["volumeMounts"].as_array().cloned().unwrap_or_default();
    let read_only = |path: &str| {
        specs
            .iter()
            .any(|m| m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(path) && m["readOnly"] == true)
    };
    volumes.into_iter().map(|(path, host)| Mount { read_only: read_only(&path), path, host }).collect()
}

/// What one container run needs besides its spec.
pub struct Run<'a> {
    /// The podman container's name.
    pub name: &'a str,
    pub pod: &'a Value,
    pub container: &'a Value,
    /// The image's own user ([`image_user`]).
    pub image_user: &'a str,
    pub env: &'a [(String, String)],
    /// The pod's volumes and the files the kubelet adds (the termination message, the
    /// kubeconfig).
    pub mounts: &'a [Mount],
    /// The command and args, their variables expanded.
    pub command: &'a [String],
    pub args: &'a [String],
    /// The [`memory_cgroup`] holding its memory limit, if one does.
    pub memory_cgroup: Option<&'a std::path::Path>,
}

/// `podman run`'s arguments (after `run`) for `run`, or the reason the container cannot start
/// (a `CreateContainerConfigError`).
pub fn run_args(run: &Run<'_>) -> Result<Vec<String>, String> {
    let security = Security { pod: &run.pod["spec"]["securityContext"], container: &run.container["securityContext"] };
    let mut args: Vec<String> = ["--replace", "--name", run.name, "--network", "host"].map(str::to_owned).into();
    // Podman's default limits are above what these machines allow.
    args.extend(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"].map(str::to_owned));
    args.extend(security.args(run)?);
    args.extend(limits(run.container, run.memory_cgroup)?);
    for (name, value) in run.env {
        args.extend(["--env".to_owned(), format!("{name}={value}")]);
    }
    for mount in run.mounts {
        let mode = if mount.read_only { "ro" } else { "rw" };
        args.extend(["--volume".to_owned(), format!("{}:{}:{mode}", mount.host.display(), mount.path)]);
    }
    if let Some(dir) = run.container["workingDir"].as_str().filter(|d| !d.is_empty()) {
        args.extend(["--workdir".to_owned(), dir.to_owned()]);
    }
    if !run.command.is_empty() {
        let entrypoint = serde_json::to_string(run.command).expect("strings serialize");
        args.extend(["--entrypoint".to_owned(), entrypoint]);
    }
    args.push(run.container["image"].as_str().unwrap_or_default().to_owned());
    args.extend(run.args.iter().cloned());
    Ok(args)
}

/// The pod's and the container's `securityContext`: the container's fields win.
struct Security<'a> {
    pod: &'a Value,
    container: &'a Value,
}

impl Security<'_> {
    fn field(&self, name: &str) -> &Value {
        match &self.container[name] {
            Value::Null => &self.pod[name],
            value => value,
        }
    }

    fn args(&self, run: &Run<'_>) -> Result<Vec<String>, String> {
        let mut args = Vec::new();
        let user = self.field("runAsUser").as_u64();
        let group = self.field("runAsGroup").as_u64();
        if self.field("runAsNonRoot") == true {
            let who = format!(
                "(pod: \"{}_{}({})\", container: {})",
                run.pod["metadata"]["name"].as_str().unwrap_or_default(),
                run.pod["metadata"]["namespace"].as_str().unwrap_or_default(),
                run.pod["metadata"]["uid"].as_str().unwrap_or_default(),
                run.container["name"].as_str().unwrap_or_default()
            );
            match user {
                Some(0) => return Err(format!("container's runAsUser breaks non-root policy {who}")),
                Some(_) => {}
                None => {
                    let image_uid = run.image_user.split(':').next().unwrap_or_default();
                    match image_uid.parse::<u64>() {
                        _ if image_uid.is_empty() || image_uid == "root" => {
                            return Err(format!("container has runAsNonRoot and image will run as root {who}"));
                        }
                        Ok(0) => return Err(format!("container has runAsNonRoot and image will run as root {who}")),
                        Ok(_) => {}
                        Err(_) => {
                            return Err(format!(
                                "container has runAsNonRoot and image has non-numeric user ({image_uid}), cannot verify user is non-root {who}"
                            ));
                        }
                    }
                }
            }
        }
        match (user, group) {
            (Some(user), Some(group)) => args.extend(["--user".to_owned(), format!("{user}:{group}")]),
            (Some(user), None) => args.extend(["--user".to_owned(), user.to_string()]),
            (None, Some(group)) => {
                let image_uid = run.image_user.split(':').next().filter(|u| !u.is_empty()).unwrap_or("0");
                args.extend(["--user".to_owned(), format!("{image_uid}:{group}")]);
            }
            (None, None) => {}
        }
        // Pod-level only, as in Kubernetes.
        let groups = self.pod["fsGroup"].as_u64().into_iter();
        let groups =
            groups.chain(self.pod["supplementalGroups"].as_array().into_iter().flatten().filter_map(Value::as_u64));
        for group in groups {
            args.extend(["--group-add".to_owned(), group.to_string()]);
        }
        if self.container["privileged"] == true {
            args.push("--privileged".to_owned());
        }
        if self.container["readOnlyRootFilesystem"] == true {
            args.extend(["--read-only", "--read-only-tmpfs=false"].map(str::to_owned));
        }
        if self.container["allowPrivilegeEscalation"] == false {
            args.extend(["--security-opt", "no-new-privileges"].map(str::to_owned));
        }
        let capabilities = &self.container["capabilities"];
        for (field, flag) in [("drop", "--cap-drop"), ("add", "--cap-add")] {
            for capability in capabilities[field].as_array().into_iter().flatten().filter_map(Value::as_str) {
                args.extend([flag.to_owned(), capability.to_owned()]);
            }
        }
        match self.field("seccompProfile")["type"].as_str() {
            Some("RuntimeDefault") => {}
            None | Some("Unconfined") => args.extend(["--security-opt", "seccomp=unconfined"].map(str::to_owned)),
            Some(other) => return Err(format!("seccomp profile type {other:?} is not supported by the devcluster")),
        }
        Ok(args)
    }
}

/// `resources.limits` as podman flags: memory, held by `memory_cgroup` or else by podman (swap
/// too: going over it is an OOM kill, as on a node without swap), and CPUs.
fn limits(container: &Value, memory_cgroup: Option<&std::path::Path>) -> Result<Vec<String>, String> {
    let limits = &container["resources"]["limits"];
    let mut args = Vec::new();
    match (memory_limit(container)?, memory_cgroup) {
        (Some(_), Some(cgroup)) => args.extend(["--cgroup-parent".to_owned(), cgroup_parent(cgroup)]),
        (Some(bytes), None) => {
            args.extend(["--memory".to_owned(), bytes.to_string(), "--memory-swap".to_owned(), bytes.to_string()]);
        }
        (None, _) => {}
    }
    if let Some(cpu) =
        limits["cpu"].as_str().map(str::to_owned).or_else(|| limits["cpu"].as_f64().map(|c| c.to_string()))
    {
        let cpus = parse_quantity(&cpu)?;
        args.extend(["--cpus".to_owned(), format!("{cpus}")]);
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(security: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}, "spec": {"securityContext": security}})
    }

    fn args_of(pod: &Value, container: &Value, image_user: &str) -> Result<Vec<String>, String> {
        let mounts = mounts(container, vec![("/models".to_owned(), PathBuf::from("/state/claims/ns/models"))]);
        let env = [("A".to_owned(), "1".to_owned())];
        let run = Run {
            name: "c1",
            pod,
            container,
            image_user,
            env: &env,
            mounts: &mounts,
            command: &[],
            args: &["serve".to_owned()],
            memory_cgroup: None,
        };
        run_args(&run)
    }

    fn has(args: &[String], pair: [&str; 2]) -> bool {
        args.windows(2).any(|w| w[0] == pair[0] && w[1] == pair[1])
    }

    #[test]
    fn the_operators_pod_security_becomes_podmans_flags() {
        let pod = pod(json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                             "seccompProfile": {"type": "RuntimeDefault"}}));
        let container = json!({
            "name": "worker", "image": "ghcr.io/lantern-dev/worker:0.1.0",
            "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                                "capabilities": {"drop": ["ALL"]}},
            "resources": {"limits": {"memory": "512Mi", "cpu": "500m"}},
            "volumeMounts": [{"name": "repository", "mountPath": "/models/", "readOnly": true}],
        });
        let args = args_of(&pod, &container, "").unwrap();
        for pair in [
            ["--user", "65532:65532"],
            ["--group-add", "65532"],
            ["--cap-drop", "ALL"],
            ["--security-opt", "no-new-privileges"],
            ["--memory", "536870912"],
            ["--memory-swap", "536870912"],
            ["--cpus", "0.5"],
            ["--volume", "/state/claims/ns/models:/models:ro"],
            ["--env", "A=1"],
            ["--network", "host"],
        ] {
            assert!(has(&args, pair), "{pair:?} in {args:?}");
        }
        assert!(args.contains(&"--read-only".to_owned()) && args.contains(&"--read-only-tmpfs=false".to_owned()));
        assert!(!args.iter().any(|a| a.starts_with("seccomp=")), "RuntimeDefault is podman's default: {args:?}");
        assert_eq!(args[args.len() - 2..], ["ghcr.io/lantern-dev/worker:0.1.0", "serve"]);
    }

    #[test]
    fn a_container_without_a_profile_is_unconfined_and_its_command_replaces_the_entrypoint() {
        let container = json!({"name": "c", "image": "busybox", "securityContext": {"runAsUser": 0},
                               "resources": {"limits": {"memory": "64Mi"}}});
        let run = Run {
            name: "c1",
            pod: &pod(json!({"runAsUser": 1000})),
            container: &container,
            image_user: "",
            env: &[],
            mounts: &[],
            command: &["/bin/sh".to_owned(), "-c".to_owned()],
            args: &["echo hi".to_owned()],
            memory_cgroup: Some(std::path::Path::new("/sys/fs/cgroup/memory/devcluster/c1")),
        };
        let args = run_args(&run).unwrap();
        assert!(has(&args, ["--user", "0"]), "the container's runAsUser wins: {args:?}");
        assert!(has(&args, ["--security-opt", "seccomp=unconfined"]));
        assert!(has(&args, ["--entrypoint", r#"["/bin/sh","-c"]"#]));
        // The kubelet's cgroup holds the limit, not podman.
        assert!(has(&args, ["--cgroup-parent", "/devcluster/c1"]) && !args.contains(&"--memory".to_owned()));
        assert_eq!(args[args.len() - 2..], ["busybox", "echo hi"]);
    }

    #[test]
    fn run_as_non_root_is_refused_with_the_kubelets_message_when_the_image_would_run_as_root() {
        let container = json!({"name": "c", "image": "i", "securityContext": {"runAsNonRoot": true}});
        let refused = args_of(&pod(json!({})), &container, "").unwrap_err();
        assert_eq!(refused, "container has runAsNonRoot and image will run as root (pod: \"p_ns(u1)\", container: c)");
        assert!(args_of(&pod(json!({})), &container, "0:0").unwrap_err().contains("will run as root"));
        assert!(args_of(&pod(json!({})), &container, "nobody").unwrap_err().contains("non-numeric user (nobody)"));
        assert!(args_of(&pod(json!({"runAsUser": 0})), &container, "65532").unwrap_err().contains("breaks non-root"));
        assert!(args_of(&pod(json!({})), &container, "65532:65532").is_ok());
        assert!(args_of(&pod(json!({"runAsUser": 7})), &container, "").is_ok());
        let localhost =
            json!({"name": "c", "image": "i", "securityContext": {"seccompProfile": {"type": "Localhost"}}});
        assert!(args_of(&pod(json!({})), &localhost, "").unwrap_err().contains("not supported"));
        let bad_limit = json!({"name": "c", "image": "i", "resources": {"limits": {"memory": "lots"}}});
        assert!(args_of(&pod(json!({})), &bad_limit, "").unwrap_err().contains("invalid quantity"));
    }
}
