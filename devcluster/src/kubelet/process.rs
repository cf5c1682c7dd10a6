//! A container's process: started in its own process group with a clean environment, its
//! stdout and stderr appended to one log file, signalled as a group, and killed with its whole
//! group when dropped (a container's processes end with it, as they do in a pid namespace).

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
}

/// How a process ended: its exit code, or the signal that killed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl Exit {
    /// The code the kubelet reports: the exit code, or 128 + the signal.
    pub fn reported_code(self) -> i32 {
        self.code.unwrap_or_else(|| 128 + self.signal.unwrap_or(0))
    }
}

impl From<std::process::ExitStatus> for Exit {
    fn from(status: std::process::ExitStatus) -> Self {
        Self { code: status.code(), signal: status.signal() }
    }
}

pub struct Process {
    child: tokio::process::Child,
    group: Option<Pid>,
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
        Ok(Self { child, group })
    }

    /// The process id (and process group id).
    pub fn pid(&self) -> Option<i32> {
        self.group.map(Pid::as_raw_nonzero).map(|p| p.get())
    }

    /// Signals every process of the group.
    pub fn signal(&self, signal: Signal) {
        if let Some(group) = self.group {
            // The group may already be gone; then there is nothing to signal.
            let _ = rustix::process::kill_process_group(group, signal);
        }
    }

    /// How the process ended, once it has.
    pub fn try_exit(&mut self) -> Option<Exit> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.into()),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, "waiting for a container process");
                Some(Exit { code: Some(128), signal: None })
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.signal(Signal::KILL);
    }
}
