//! A container's process: started in its own process group with a clean environment, its
//! stdout and stderr appended to one log file, signalled as a group, and killed with its whole
//! group when dropped (a container's processes end with it, as they do in a pid namespace).
//! Under the podman runtime the process is `podman run` attached to a named container: signals
//! go to the container through podman, and dropping it removes the container.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;

use rustix::process::{Pid, Signal};

/// What to run.
#[derive(Clone, Debug)]
pub struct Launch {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
    /// The podman container the program runs (`podman run --name`), if it is one.
    pub container: Option<String>,
    /// The memory cgroup holding the container's limit ([`super::podman::memory_cgroup`]).
    pub memory_cgroup: Option<PathBuf>,
}

/// How a process ended: its exit code, or the signal that killed it, and whether the kernel
/// killed it for going over its memory limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
}

impl Exit {
    /// The code the kubelet reports: the exit code, or 128 + the signal.
    pub fn reported_code(self) -> i32 {
        self.code.unwrap_or_else(|| 128 + self.signal.unwrap_or(0))
    }
}

impl From<std::process::ExitStatus> for Exit {
    fn from(status: std::process::ExitStatus) -> Self {
        Self { code: status.code(), signal: status.signal(), oom_killed: false }
    }
}

pub struct Process {
    child: tokio::process::Child,
    group: Option<Pid>,
    container: Option<String>,
    memory_cgroup: Option<PathBuf>,
}

impl Process {
    /// Starts `launch` with its output appended to `log`.
    pub fn spawn(launch: &Launch, log: &std::path::Path) -> std::io::Result<Self> {
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let child = tokio::process::Command::new(&launch.program)
            .args(&launch.args)
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&launch.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let group = child.id().and_then(|id| Pid::from_raw(id as i32));
        Ok(Self { child, group, container: launch.container.clone(), memory_cgroup: launch.memory_cgroup.clone() })
    }

    /// The process id (and process group id).
    pub fn pid(&self) -> Option<i32> {
        self.group.map(Pid::as_raw_nonzero).map(|p| p.get())
    }

    /// The `containerID` the kubelet reports: `podman://NAME` for a container, else
    /// `devcluster://PID`.
    pub fn container_id(&self) -> Option<String> {
        match &self.container {
            Some(name) => Some(format!("podman://{name}")),
            None => self.pid().map(|pid| format!("devcluster://{pid}")),
        }
    }

    /// Signals every process of the group, or of the container.
    pub fn signal(&self, signal: Signal) {
        if let Some(container) = &self.container {
            let number = signal.as_raw().to_string();
            // Not waited for: podman answers in its own time, and the run ends when the container does.
            let _ = tokio::process::Command::new("podman")
                .args(["--runtime", "runc", "kill", "--signal", &number, container])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            return;
        }
        if let Some(group) = self.group {
            // The group may already be gone; then there is nothing to signal.
            let _ = rustix::process::kill_process_group(group, signal);
        }
    }

    /// How the process ended, once it has.
    pub fn try_exit(&mut self) -> Option<Exit> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                let exit = Exit::from(status);
                // Killed (137) after its cgroup refused it memory, or as podman recorded it.
                let oom_killed = self.container.as_deref().is_some_and(|container| {
                    let killed_at_limit = exit.reported_code() == 137
                        && self.memory_cgroup.as_deref().is_some_and(super::podman::limit_hit);
                    killed_at_limit || super::podman::oom_killed(container)
                });
                Some(Exit { oom_killed, ..exit })
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, "waiting for a container process");
                Some(Exit { code: Some(128), signal: None, oom_killed: false })
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(container) = self.container.take() {
            let remove = ["rm", "--force", "--time", "0", &container];
            if let Err(error) = super::podman::podman(&remove) {
                tracing::warn!(%error, container, "removing a container");
            }
        }
        if let Some(cgroup) = self.memory_cgroup.take() {
            super::podman::remove_memory_cgroup(&cgroup);
        }
        self.signal(Signal::KILL);
    }
}
