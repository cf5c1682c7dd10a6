//! The project's images under podman, run the way the operator's pod security runs them: as the
//! image's non-root user, a read-only root filesystem (with no tmpfs added: only the volumes
//! given are writable, as in a pod), every capability dropped, no new privileges, podman's
//! default seccomp profile (Kubernetes' `RuntimeDefault`) and a memory limit. Containers share
//! the host's network, so servers bind loopback addresses as elsewhere in the suites.
//!
//! [`build_images`] makes the images with `scripts/build-images.sh` from the binaries beside the
//! test executable.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::{binary, workspace};

/// The user every Lantern image runs as (the operator's `runAsUser`).
pub const IMAGE_USER: u32 = 65532;

/// Debian's static busybox, running as root: a shell for the tests' own pods.
pub const TEST_BUSYBOX: &str = "localhost/lantern/test-busybox:bookworm";

/// Builds the worker, operator and router images from the binaries this test was built with,
/// and [`TEST_BUSYBOX`]; false (after saying SKIPPED and why) where podman, buildah or
/// mmdebstrap is missing, or this is not root.
pub async fn build_images() -> anyhow::Result<bool> {
    let missing: Vec<&str> = ["podman", "buildah", "mmdebstrap"].into_iter().filter(|tool| !on_path(tool)).collect();
    if !missing.is_empty() {
        eprintln!("SKIPPED: {} missing (scripts/install-containers.sh installs them)", missing.join(", "));
        return Ok(false);
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: the container tests run as root (they give volumes to the images' user)");
        return Ok(false);
    }
    let binaries = binary("lantern-worker")?.parent().context("the binaries' directory")?.to_owned();
    let output = tokio::process::Command::new(workspace().join("scripts/build-images.sh"))
        .arg("--binaries")
        .arg(&binaries)
        .arg("--test-image")
        .output()
        .await
        .context("running scripts/build-images.sh")?;
    anyhow::ensure!(
        output.status.success(),
        "scripts/build-images.sh failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(true)
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Makes `path` and everything under it the image user's, as `fsGroup` makes a pod's volumes
/// its group's (the suites run as root).
pub fn give_to_image_user(path: &Path) -> anyhow::Result<()> {
    let ids = Some(rustix::fs::Uid::from_raw(IMAGE_USER));
    let group = Some(rustix::fs::Gid::from_raw(IMAGE_USER));
    rustix::fs::chown(path, ids, group).with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            give_to_image_user(&entry?.path())?;
        }
    }
    Ok(())
}

/// A volume: a host path mounted at a path in the container.
pub struct Mount<'a> {
    pub host: &'a Path,
    pub container: &'a str,
    pub read_only: bool,
}

/// A container started detached; removed (killed if need be) when dropped.
pub struct Container {
    name: String,
}

impl Container {
    /// Starts `image` with `args` as `name` under the restricted settings, with `env`, `mounts`
    /// and at most `memory_mib` of memory.
    pub async fn run(
        name: &str,
        image: &str,
        args: &[&str],
        env: &[(&str, &str)],
        mounts: &[Mount<'_>],
        memory_mib: u64,
    ) -> anyhow::Result<Self> {
        let name = format!("lantern-e2e-{name}-{}", std::process::id());
        let mut command = podman();
        command.args(["run", "--detach", "--name", &name, "--network", "host"]);
        command.args(["--user", &format!("{IMAGE_USER}:{IMAGE_USER}"), "--read-only", "--read-only-tmpfs=false"]);
        command.args([
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--memory",
            &format!("{memory_mib}m"),
        ]);
        // Podman's defaults are above what this machine allows.
        command.args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]);
        for (key, value) in env {
            command.args(["--env", &format!("{key}={value}")]);
        }
        for mount in mounts {
            let mode = if mount.read_only { "ro" } else { "rw" };
            command.args(["--volume", &format!("{}:{}:{mode}", mount.host.display(), mount.container)]);
        }
        let output = command.arg(image).args(args).output().await.context("running podman")?;
        let container = Self { name };
        anyhow::ensure!(
            output.status.success(),
            "podman run {image} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(container)
    }

    /// Its output so far, stdout and stderr together.
    pub async fn logs(&self) -> String {
        match podman().args(["logs", &self.name]).output().await {
            Ok(output) => {
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
            }
            Err(error) => format!("(no logs: {error})"),
        }
    }

    /// Its exit code, once it has exited (waiting at most `within`).
    pub async fn exit_code(&self, within: Duration) -> anyhow::Result<i32> {
        let wait = podman().args(["wait", &self.name]).output();
        let output =
            tokio::time::timeout(within, wait).await.with_context(|| format!("{} still runs", self.name))??;
        anyhow::ensure!(output.status.success(), "podman wait: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().parse().context("podman wait's exit code")
    }

    /// `podman inspect`'s record of it.
    pub async fn inspect(&self) -> anyhow::Result<serde_json::Value> {
        let output = podman().args(["inspect", &self.name]).output().await?;
        anyhow::ensure!(output.status.success(), "podman inspect: {}", String::from_utf8_lossy(&output.stderr));
        Ok(serde_json::from_slice::<serde_json::Value>(&output.stdout)?[0].take())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let remove = ["--runtime", "runc", "rm", "--force", "--time", "0", &self.name];
        let _ = std::process::Command::new("podman").args(remove).output();
    }
}

/// podman with the runc runtime (crun fails on these machines' cgroup layout).
fn podman() -> tokio::process::Command {
    let mut command = tokio::process::Command::new("podman");
    command.args(["--runtime", "runc"]);
    command
}
