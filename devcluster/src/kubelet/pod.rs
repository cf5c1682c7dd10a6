//! One pod's life on the node: scheduled, volumes prepared, init containers run in order, then
//! the containers, each restarted or not as `restartPolicy` says, probed, and reported in the
//! pod's status as the real kubelet reports them; on deletion, stopped gracefully and removed.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustix::process::Signal;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::env::{self, Sources, Vars};
use super::lifecycle::{self, Progress};
use super::probe::{self, Probe, Settings, Verdict};
use super::process::{Exit, Launch, Process};
use super::{Context, IpLease, Runtime, podman, volumes};
use crate::node::{self, NODE_NAME};
use crate::objects;
use crate::store::{Expect, ObjectKey, ResourceKey, Store, StoreError, resource_version};

/// How often a pod's containers are looked at.
const TICK: Duration = Duration::from_millis(50);
/// A container that ran this long starts its back-off over.
const BACK_OFF_RESET: Duration = Duration::from_secs(600);
/// The grace pods get when the kubelet itself stops.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long a pod waits before it retries volumes or a container's configuration.
const CONFIG_RETRY: Duration = Duration::from_secs(1);
/// Where a container in podman finds the devcluster's kubeconfig.
const KUBECONFIG_MOUNT: &str = "/var/run/devcluster/kubeconfig";

/// Runs the pod at `key` until it is removed, or until the kubelet stops.
pub(super) async fn run(
    context: Arc<Context>,
    key: ObjectKey,
    mut updates: watch::Receiver<Option<Value>>,
    lease: IpLease,
) {
    let Some(pod) = updates.borrow_and_update().clone() else { return };
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        // Nothing of it runs here: it goes as soon as its finalizers allow.
        remove(&context.cluster.store, &key, &pod);
        return;
    }
    let mut run = PodRun::new(context.clone(), key, pod, lease);
    if !run.schedule() {
        return;
    }
    let mut stopping = context.stopping.clone();
    loop {
        if let Some(grace) = run.deletion_grace() {
            if run.terminate(grace, &mut updates).await {
                remove(&context.cluster.store, &run.key, &run.pod);
            }
            return;
        }
        run.step(Instant::now());
        run.report();
        tokio::select! {
            changed = updates.changed() => match (changed, updates.borrow_and_update().clone()) {
                (Ok(()), Some(pod)) => run.pod = pod,
                // Removed without a graceful deletion (grace period 0): its processes go at once.
                _ => return,
            },
            _ = stopping.changed() => {
                run.terminate(STOP_GRACE, &mut updates).await;
                return;
            }
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// Removes a pod whose containers have stopped, unless finalizers still hold it.
fn remove(store: &Store, key: &ObjectKey, pod: &Value) {
    for _ in 0..5 {
        let Some(stored) = store.get(key) else { return };
        if stored["metadata"]["uid"] != pod["metadata"]["uid"] || !objects::finalizers(&stored).is_empty() {
            return;
        }
        if !matches!(store.remove(key, Some(resource_version(&stored))), Err(StoreError::Conflict { .. })) {
            return;
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Terminated {
    code: i32,
    signal: Option<i32>,
    reason: String,
    message: String,
    started: String,
    finished: String,
    container_id: Option<String>,
}

impl Terminated {
    fn to_json(&self) -> Value {
        let mut state = json!({
            "exitCode": self.code,
            "reason": self.reason,
            "startedAt": self.started,
            "finishedAt": self.finished,
        });
        if let Some(signal) = self.signal {
            state["signal"] = json!(signal);
        }
        if !self.message.is_empty() {
            state["message"] = json!(self.message);
        }
        if let Some(id) = &self.container_id {
            state["containerID"] = json!(id);
        }
        json!({"terminated": state})
    }
}

/// Where the container writes its termination message (`/dev/termination-log` by default).
fn termination_message_path(spec: &Value) -> &str {
    spec["terminationMessagePath"].as_str().filter(|p| !p.is_empty()).unwrap_or("/dev/termination-log")
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    Waiting { reason: String, message: String },
    Running { since: String },
    Terminated(Terminated),
}

impl State {
    fn waiting(reason: &str, message: impl Into<String>) -> Self {
        Self::Waiting { reason: reason.to_owned(), message: message.into() }
    }
}

struct Container {
    name: String,
    spec: Value,
    init: bool,
    /// Runs started so far; the current or last run's log is number `runs - 1`.
    runs: u64,
    state: State,
    last: Option<Terminated>,
    process: Option<Process>,
    since: Instant,
    /// The next start may not happen before this.
    not_before: Instant,
    back_offs: u32,
    /// Exited with no restart to come.
    done: bool,
    /// Its pod is stopping: nothing starts or restarts.
    terminating: bool,
    ready: bool,
    started: bool,
    startup: Option<Probe>,
    liveness: Option<Probe>,
    readiness: Option<Probe>,
    target: Option<probe::Target>,
    /// A stop under way: when SIGKILL follows SIGTERM.
    kill_at: Option<Instant>,
}

impl Container {
    fn new(spec: &Value, init: bool, waiting: &str) -> Self {
        let now = Instant::now();
        Self {
            name: spec["name"].as_str().unwrap_or_default().to_owned(),
            spec: spec.clone(),
            init,
            runs: 0,
            state: State::waiting(waiting, ""),
            last: None,
            process: None,
            since: now,
            not_before: now,
            back_offs: 0,
            done: false,
            terminating: false,
            ready: false,
            started: false,
            startup: None,
            liveness: None,
            readiness: None,
            target: None,
            kill_at: None,
        }
    }

    fn running(&self) -> bool {
        self.process.is_some()
    }

    fn progress(&self) -> Progress {
        match (&self.state, self.done, self.runs) {
            (State::Terminated(t), true, _) => Progress::Exited(t.code),
            (_, _, 0) => Progress::NotStarted,
            _ => Progress::Live,
        }
    }

    fn restart_count(&self) -> u64 {
        self.runs.saturating_sub(1)
    }

    /// SIGTERM now, SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration, now: Instant) {
        if let Some(process) = &self.process
            && self.kill_at.is_none()
        {
            process.signal(Signal::TERM);
            self.kill_at = Some(now + grace);
        }
    }

    fn status(&self) -> Value {
        let state = match &self.state {
            State::Waiting { reason, message } if message.is_empty() => json!({"waiting": {"reason": reason}}),
            State::Waiting { reason, message } => json!({"waiting": {"reason": reason, "message": message}}),
            State::Running { since } => json!({"running": {"startedAt": since}}),
            State::Terminated(terminated) => terminated.to_json(),
        };
        let mut status = json!({
            "name": self.name,
            "image": self.spec["image"],
            "imageID": "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count(),
            "state": state,
            "lastState": self.last.as_ref().map_or(json!({}), Terminated::to_json),
        });
        // The running container's, else the one whose end is reported, as the kubelet does.
        let ended = match &self.state {
            State::Terminated(terminated) => terminated.container_id.clone(),
            _ => None,
        };
        if let Some(id) = self.process.as_ref().and_then(Process::container_id).or(ended) {
            status["containerID"] = json!(id);
        }
        status
    }
}

/// What containers read of their pod while they step.
struct Shared<'a> {
    context: &'a Context,
    pod: &'a Value,
    dir: &'a Path,
    volumes: &'a [(String, PathBuf)],
    ip: std::net::IpAddr,
}

impl Shared<'_> {
    fn policy(&self) -> &str {
        self.pod["spec"]["restartPolicy"].as_str().unwrap_or("Always")
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(self.pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30))
    }

    fn event(&self, container: &Container, warning: bool, reason: &str, message: &str) {
        record_event(self.context, self.pod, Some(container), warning, reason, message);
    }

    /// The container's variables, and its mounts (`mountPath`, host path) with the termination
    /// message file (fresh for each run) among them, longest path first.
    fn resolve(&self, container: &Container) -> Result<(Vars, Vec<(String, PathBuf)>), String> {
        let namespace = self.pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let sources = StoreSources { store: &self.context.cluster.store, namespace };
        let services: Vec<Value> = self
            .context
            .cluster
            .store
            .list(&ResourceKey::new("", "services"), Some(namespace))
            .0
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        let base = match self.pod["spec"]["enableServiceLinks"] == false {
            true => Vars::default(),
            false => env::service_vars(&services),
        };
        let vars = env::resolve(self.pod, &container.spec, base, &sources)?;
        let mut mounts = volumes::mounts(&container.spec, self.volumes)?;
        let termination = node::termination_path(self.dir, &container.name);
        volumes::create_file(&termination)?;
        mounts.push((termination_message_path(&container.spec).to_owned(), termination));
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        Ok((vars, mounts))
    }

    /// Whether the pod's containers get the API's credentials (here, the devcluster's
    /// kubeconfig, in place of a service-account token: the API is plain HTTP, which in-cluster
    /// clients refuse; kubectl, client-go and kube-rs read a kubeconfig first).
    fn kubeconfig(&self) -> Option<PathBuf> {
        (self.pod["spec"]["automountServiceAccountToken"] != false)
            .then(|| crate::kubeconfig_path(&self.context.state_dir))
    }

    fn pod_name(&self) -> &str {
        self.pod["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// The container as a process: its command line, environment and working directory, with
    /// every mount path rewritten to its directory.
    fn launch(&self, container: &Container, executable: &Path) -> Result<Launch, String> {
        let (vars, mounts) = self.resolve(container)?;
        let words = |field: &str| -> Vec<String> {
            let list = container.spec[field].as_array().cloned().unwrap_or_default();
            list.iter()
                .map(|w| volumes::rewrite(&env::expand(w.as_str().unwrap_or_default(), &vars), &mounts))
                .collect()
        };
        let (command, args) = (words("command"), words("args"));
        let (program, args) = match command.split_first() {
            None => (executable.to_string_lossy().into_owned(), args),
            Some((first, rest)) => (program_for(first, executable), rest.iter().chain(&args).cloned().collect()),
        };
        let mut environment: Vec<(String, String)> = Vec::new();
        let host_path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned());
        let image_dir = executable.parent().map(|d| d.to_string_lossy().into_owned()).unwrap_or_default();
        environment.push(("PATH".into(), format!("{image_dir}:{host_path}")));
        environment.push(("HOSTNAME".into(), self.pod_name().to_owned()));
        if let Ok(home) = std::env::var("HOME") {
            environment.push(("HOME".into(), home));
        }
        if let Some(kubeconfig) = self.kubeconfig() {
            environment.push(("KUBECONFIG".into(), kubeconfig.to_string_lossy().into_owned()));
        }
        for (name, value) in vars.iter() {
            environment.retain(|(n, _)| n != name);
            environment.push((name.to_owned(), volumes::rewrite(value, &mounts)));
        }
        let dir = match container.spec["workingDir"].as_str().filter(|d| !d.is_empty()) {
            Some(dir) => match PathBuf::from(volumes::rewrite(dir, &mounts)) {
                host if host.is_dir() => host,
                _ => self.dir.join("root").join(dir.trim_start_matches('/')),
            },
            None => self.dir.join("root"),
        };
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating the working directory {}: {e}", dir.display()))?;
        Ok(Launch { program, args, env: environment, dir, container: None, memory_cgroup: None })
    }

    /// The container in podman: `podman run` of its image, whose user is `image_user`, with its
    /// volumes, environment and pod security ([`podman::run_args`]).
    fn launch_in_container(&self, container: &Container, image_user: &str) -> Result<Launch, String> {
        let (vars, volumes) = self.resolve(container)?;
        let mut mounts = podman::mounts(&container.spec, volumes);
        // The container's user writes its termination message.
        let termination = node::termination_path(self.dir, &container.name);
        std::fs::set_permissions(&termination, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .map_err(|e| format!("opening {} to the container: {e}", termination.display()))?;
        let words = |field: &str| -> Vec<String> {
            let list = container.spec[field].as_array().cloned().unwrap_or_default();
            list.iter().map(|w| env::expand(w.as_str().unwrap_or_default(), &vars)).collect()
        };
        let mut environment = vec![("HOSTNAME".to_owned(), self.pod_name().to_owned())];
        if let Some(kubeconfig) = self.kubeconfig() {
            mounts.push(podman::Mount { path: KUBECONFIG_MOUNT.to_owned(), host: kubeconfig, read_only: true });
            environment.push(("KUBECONFIG".to_owned(), KUBECONFIG_MOUNT.to_owned()));
        }
        for (name, value) in vars.iter() {
            environment.retain(|(n, _)| n != name);
            environment.push((name.to_owned(), value.to_owned()));
        }
        let uid = self.pod["metadata"]["uid"].as_str().unwrap_or_default();
        let name = format!("devcluster-{}-{}-{}", &uid[..uid.len().min(8)], container.name, container.runs);
        let memory_cgroup = match podman::memory_limit(&container.spec)? {
            Some(bytes) => podman::memory_cgroup(&name, bytes)?,
            None => None,
        };
        let run = podman::Run {
            name: &name,
            pod: self.pod,
            container: &container.spec,
            image_user,
            env: &environment,
            mounts: &mounts,
            command: &words("command"),
            args: &words("args"),
            memory_cgroup: memory_cgroup.as_deref(),
        };
        let mut args: Vec<String> = ["--runtime", "runc", "run"].map(str::to_owned).into();
        args.extend(podman::run_args(&run)?);
        // podman itself runs with the kubelet's own PATH and HOME.
        let host = ["PATH", "HOME"].into_iter().filter_map(|k| Some((k.to_owned(), std::env::var(k).ok()?)));
        let dir = self.dir.join("root");
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(Launch {
            program: "podman".to_owned(),
            args,
            env: host.collect(),
            dir,
            container: Some(name),
            memory_cgroup,
        })
    }
}

/// The program a command's first word names: an absolute path that exists only inside the image
/// (a Dockerfile's `/usr/local/bin/lantern-worker`) is the image's executable when the file
/// names match; other words are looked up on the container's `PATH`, which starts with the
/// executable's directory.
fn program_for(first: &str, executable: &Path) -> String {
    let path = Path::new(first);
    if path.is_absolute() && !path.exists() && path.file_name() == executable.file_name() {
        return executable.to_string_lossy().into_owned();
    }
    first.to_owned()
}

impl Container {
    fn step(&mut self, shared: &Shared<'_>, now: Instant) {
        if let Some(exit) = self.process.as_mut().and_then(Process::try_exit) {
            self.exited(shared, exit, now);
            return;
        }
        if self.running() {
            if self.kill_at.is_some_and(|at| now >= at)
                && let Some(process) = &self.process
            {
                process.signal(Signal::KILL);
            }
            if !self.init && self.kill_at.is_none() {
                self.probe(shared, now);
            }
            return;
        }
        if !self.done && !self.terminating && now >= self.not_before {
            self.start(shared, now);
        }
    }

    fn start(&mut self, shared: &Shared<'_>, now: Instant) {
        let image = self.spec["image"].as_str().unwrap_or_default();
        let launch = match shared.context.config.runtime {
            Runtime::Processes => match shared.context.config.executable(image) {
                Some(executable) => shared.launch(self, executable),
                None => {
                    let why = format!(
                        "image {image:?} is not in the devcluster's image map (add it with --image {image}=EXECUTABLE)"
                    );
                    return self.image_missing(shared, now, &why);
                }
            },
            Runtime::Podman => match podman::image_user(image) {
                Ok(user) => shared.launch_in_container(self, &user),
                Err(said) => {
                    let why = format!(
                        "image {image:?} is not in podman's local storage and the devcluster pulls from no registry (scripts/build-images.sh builds Lantern's): {said}"
                    );
                    return self.image_missing(shared, now, &why);
                }
            },
        };
        let launch = match launch {
            Ok(launch) => launch,
            Err(message) => {
                if !matches!(&self.state, State::Waiting { message: m, .. } if *m == message) {
                    shared.event(self, true, "Failed", &format!("Error: {message}"));
                }
                self.state = State::waiting("CreateContainerConfigError", message);
                self.not_before = now + CONFIG_RETRY;
                return;
            }
        };
        let log = node::log_path(shared.dir, &self.name, self.runs);
        self.runs += 1;
        self.since = now;
        let started = objects::now();
        match Process::spawn(&launch, &log) {
            Ok(process) => {
                shared.event(self, false, "Started", &format!("Started container {}", self.name));
                self.process = Some(process);
                self.state = State::Running { since: started };
                self.kill_at = None;
                let probe = |field: &str| Settings::from_spec(&self.spec[field]).map(|s| Probe::new(s, now));
                (self.startup, self.liveness, self.readiness) = match self.init {
                    true => (None, None, None),
                    false => (probe("startupProbe"), probe("livenessProbe"), probe("readinessProbe")),
                };
                self.started = self.startup.is_none();
                self.ready = self.started && self.readiness.is_none() && !self.init;
                let ports = self.spec["ports"].as_array().cloned().unwrap_or_default();
                let named = ports
                    .iter()
                    .filter_map(|p| {
                        Some((p["name"].as_str()?.to_owned(), u16::try_from(p["containerPort"].as_u64()?).ok()?))
                    })
                    .collect();
                self.target = Some(probe::Target { ip: shared.ip, ports: named, launch });
            }
            Err(error) => {
                let message = format!("failed to start {:?}: {error}", launch.program);
                let _ = std::fs::write(&log, format!("{message}\n"));
                shared.event(self, true, "Failed", &format!("Error: {message}"));
                let terminated = Terminated {
                    code: 128,
                    signal: None,
                    reason: "StartError".into(),
                    message,
                    started: started.clone(),
                    finished: started,
                    container_id: None,
                };
                self.finish(shared, terminated, now);
            }
        }
    }

    /// The image cannot be had: `ErrImageNeverPull` under `imagePullPolicy: Never`, else
    /// `ErrImagePull` and then `ImagePullBackOff`, as the kubelet reports them.
    fn image_missing(&mut self, shared: &Shared<'_>, now: Instant, why: &str) {
        let image = self.spec["image"].as_str().unwrap_or_default();
        if self.spec["imagePullPolicy"] == "Never" {
            let message = format!("Container image \"{image}\" is not present with pull policy of Never");
            if !matches!(&self.state, State::Waiting { reason, .. } if reason == "ErrImageNeverPull") {
                shared.event(self, true, "ErrImageNeverPull", &format!("{message}: {why}"));
            }
            self.state = State::waiting("ErrImageNeverPull", message);
            self.not_before = now + CONFIG_RETRY;
            return;
        }
        let reason = match matches!(&self.state, State::Waiting { reason, .. } if reason == "ErrImagePull") {
            true => "ImagePullBackOff",
            false => "ErrImagePull",
        };
        if reason == "ErrImagePull" {
            shared.event(self, true, "Failed", &format!("Failed to pull image \"{image}\": {why}"));
        }
        self.state = State::waiting(reason, why);
        self.not_before = now + self.back_off(shared);
    }

    fn back_off(&mut self, shared: &Shared<'_>) -> Duration {
        let config = &shared.context.config;
        let delay = lifecycle::back_off(config.back_off, config.max_back_off, self.back_offs);
        self.back_offs += 1;
        delay
    }

    fn exited(&mut self, shared: &Shared<'_>, exit: Exit, now: Instant) {
        let code = exit.reported_code();
        let started = match &self.state {
            State::Running { since } => since.clone(),
            _ => objects::now(),
        };
        let terminated = Terminated {
            code,
            signal: exit.signal,
            reason: match (code, exit.oom_killed) {
                (_, true) => "OOMKilled",
                (0, false) => "Completed",
                _ => "Error",
            }
            .to_owned(),
            message: self.termination_message(shared, code),
            started,
            finished: objects::now(),
            container_id: self.process.as_ref().and_then(Process::container_id),
        };
        // Dropping the process kills what is left of its group.
        self.process = None;
        (self.startup, self.liveness, self.readiness, self.kill_at) = (None, None, None, None);
        self.ready = self.init && code == 0;
        self.started = false;
        if now.duration_since(self.since) >= BACK_OFF_RESET {
            self.back_offs = 0;
        }
        self.finish(shared, terminated, now);
    }

    /// What the run left at its `terminationMessagePath` (at most 4096 bytes), or with
    /// `terminationMessagePolicy: FallbackToLogsOnError` and a failure, the end of its log (the
    /// last 80 lines, at most 2048 bytes), as the kubelet reports it.
    fn termination_message(&self, shared: &Shared<'_>, code: i32) -> String {
        let written = std::fs::read(node::termination_path(shared.dir, &self.name)).unwrap_or_default();
        let message = String::from_utf8_lossy(&written[..written.len().min(4096)]).into_owned();
        let fallback = self.spec["terminationMessagePolicy"] == "FallbackToLogsOnError";
        if !message.trim().is_empty() || !fallback || code == 0 {
            return message;
        }
        let log =
            std::fs::read(node::log_path(shared.dir, &self.name, self.runs.saturating_sub(1))).unwrap_or_default();
        let text = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        let start = tail.len().saturating_sub(2048);
        let start = (start..tail.len()).find(|&i| tail.is_char_boundary(i)).unwrap_or(tail.len());
        tail[start..].to_owned()
    }

    /// After a run: back off and restart, or stay terminated.
    fn finish(&mut self, shared: &Shared<'_>, terminated: Terminated, now: Instant) {
        if self.terminating || !lifecycle::restarts(shared.policy(), self.init, terminated.code) {
            self.state = State::Terminated(terminated);
            self.done = true;
            return;
        }
        let delay = self.back_off(shared);
        self.not_before = now + delay;
        let pod = &shared.pod["metadata"];
        let (name, namespace, uid) = (&pod["name"], &pod["namespace"], &pod["uid"]);
        let (name, namespace, uid) = (
            name.as_str().unwrap_or_default(),
            namespace.as_str().unwrap_or_default(),
            uid.as_str().unwrap_or_default(),
        );
        let message = format!(
            "back-off {}s restarting failed container={} pod={name}_{namespace}({uid})",
            delay.as_secs().max(1),
            self.name
        );
        shared.event(
            self,
            true,
            "BackOff",
            &format!("Back-off restarting failed container {} in pod {name}_{namespace}({uid})", self.name),
        );
        self.state = State::waiting("CrashLoopBackOff", message);
        self.last = Some(terminated);
    }

    fn probe(&mut self, shared: &Shared<'_>, now: Instant) {
        let Some(target) = self.target.clone() else { return };
        if !self.started {
            let verdict = self.startup.as_mut().map_or(Verdict::Passed, |p| p.poll(now, &target));
            match verdict {
                Verdict::Passed => self.started = true,
                Verdict::Failed(reason) => self.restart_unhealthy(shared, "Startup", &reason, now),
                Verdict::Failing(reason) => self.unhealthy(shared, "Startup", &reason),
                Verdict::Unchanged => {}
            }
            if !self.started {
                return;
            }
        }
        match self.liveness.as_mut().map(|p| p.poll(now, &target)) {
            Some(Verdict::Failed(reason)) => return self.restart_unhealthy(shared, "Liveness", &reason, now),
            Some(Verdict::Failing(reason)) => self.unhealthy(shared, "Liveness", &reason),
            _ => {}
        }
        match self.readiness.as_mut().map(|p| p.poll(now, &target)) {
            None => self.ready = true,
            Some(Verdict::Passed) => self.ready = true,
            Some(Verdict::Failed(reason)) => {
                self.ready = false;
                self.unhealthy(shared, "Readiness", &reason);
            }
            Some(Verdict::Failing(reason)) => self.unhealthy(shared, "Readiness", &reason),
            Some(Verdict::Unchanged) => {}
        }
    }

    fn unhealthy(&self, shared: &Shared<'_>, probe: &str, reason: &str) {
        shared.event(self, true, "Unhealthy", &format!("{probe} probe failed: {reason}"));
    }

    /// A startup or liveness probe gave up: the container is stopped, and the restart policy
    /// decides what follows.
    fn restart_unhealthy(&mut self, shared: &Shared<'_>, probe: &str, reason: &str, now: Instant) {
        self.unhealthy(shared, probe, reason);
        let message = format!("Container {} failed {} probe, will be restarted", self.name, probe.to_lowercase());
        shared.event(self, false, "Killing", &message);
        let spec = match probe {
            "Startup" => &self.spec["startupProbe"],
            _ => &self.spec["livenessProbe"],
        };
        let grace = spec["terminationGracePeriodSeconds"].as_u64().map_or(shared.grace(), Duration::from_secs);
        self.ready = false;
        self.stop(grace, now);
    }
}

/// A pod as its task runs it.
struct PodRun {
    context: Arc<Context>,
    key: ObjectKey,
    pod: Value,
    lease: IpLease,
    dir: PathBuf,
    volumes: Option<Vec<(String, PathBuf)>>,
    volume_error: Option<String>,
    volume_retry: Instant,
    init: Vec<Container>,
    containers: Vec<Container>,
    start_time: String,
    /// Each condition's status and when it last changed.
    conditions: Vec<(&'static str, bool, String)>,
    reported: Value,
}

impl PodRun {
    fn new(context: Arc<Context>, key: ObjectKey, pod: Value, lease: IpLease) -> Self {
        let dir = node::pod_dir(&context.state_dir, &pod);
        let list = |field: &str| pod["spec"][field].as_array().cloned().unwrap_or_default();
        let (init_specs, specs) = (list("initContainers"), list("containers"));
        let waiting = if init_specs.is_empty() { "ContainerCreating" } else { "PodInitializing" };
        let init = init_specs.iter().map(|s| Container::new(s, true, "PodInitializing")).collect();
        let containers = specs.iter().map(|s| Container::new(s, false, waiting)).collect();
        let now = objects::now();
        let conditions = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]
            .into_iter()
            .map(|kind| (kind, kind == "PodScheduled", now.clone()))
            .collect();
        Self {
            context,
            key,
            pod,
            lease,
            dir,
            volumes: None,
            volume_error: None,
            volume_retry: Instant::now(),
            init,
            containers,
            start_time: now,
            conditions,
            reported: Value::Null,
        }
    }

    fn all(&mut self) -> impl Iterator<Item = &mut Container> {
        self.init.iter_mut().chain(self.containers.iter_mut())
    }

    /// The pod as its containers see it: with the IPs assigned here.
    fn view(&self) -> Value {
        let mut pod = self.pod.clone();
        pod["spec"]["nodeName"] = json!(NODE_NAME);
        pod["status"]["podIP"] = json!(self.lease.address.to_string());
        pod["status"]["hostIP"] = json!("127.0.0.1");
        pod
    }

    /// Binds the pod to the node and reports its first status. False when the pod is gone.
    fn schedule(&mut self) -> bool {
        let status = self.status();
        let written = self.write(|pod| {
            if pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty) {
                pod["spec"]["nodeName"] = json!(NODE_NAME);
            }
            pod["status"] = status.clone();
        });
        if written {
            self.reported = status;
            record_event(
                &self.context,
                &self.view(),
                None,
                false,
                "Scheduled",
                &format!("Successfully assigned {}/{} to {NODE_NAME}", self.key.namespace, self.key.name),
            );
        }
        written
    }

    /// The grace period of a deletion under way.
    fn deletion_grace(&self) -> Option<Duration> {
        let metadata = &self.pod["metadata"];
        if metadata["deletionTimestamp"].is_null() {
            return None;
        }
        Some(Duration::from_secs(metadata["deletionGracePeriodSeconds"].as_u64().unwrap_or(30)))
    }

    fn step(&mut self, now: Instant) {
        let view = self.view();
        if self.volumes.is_none() {
            if now < self.volume_retry {
                return;
            }
            let layout = volumes::Layout { pod_dir: &self.dir, claims_dir: &node::claims_dir(&self.context.state_dir) };
            let namespace = self.key.namespace.clone();
            let sources = StoreSources { store: &self.context.cluster.store, namespace: &namespace };
            let prepared = volumes::prepare(&view, &layout, &sources).and_then(|prepared| {
                let group = view["spec"]["securityContext"]["fsGroup"].as_u64().and_then(|g| u32::try_from(g).ok());
                if let (Runtime::Podman, Some(group)) = (self.context.config.runtime, group) {
                    volumes::give_to_group(&view, &prepared, group)?;
                }
                Ok(prepared)
            });
            match prepared {
                Ok(prepared) => self.volumes = Some(prepared),
                Err(message) => {
                    if self.volume_error.as_ref() != Some(&message) {
                        record_event(
                            &self.context,
                            &view,
                            None,
                            true,
                            "FailedMount",
                            &format!("MountVolume.SetUp failed: {message}"),
                        );
                    }
                    self.volume_error = Some(message);
                    self.volume_retry = now + CONFIG_RETRY;
                    return;
                }
            }
        }
        let shared = Shared {
            context: &self.context,
            pod: &view,
            dir: &self.dir,
            volumes: self.volumes.as_deref().unwrap_or_default(),
            ip: self.lease.address.into(),
        };
        // Init containers one at a time, in order; the containers once all have succeeded.
        if let Some(next) = self.init.iter_mut().find(|c| !(c.done && c.progress() == Progress::Exited(0))) {
            if !next.done {
                next.step(&shared, now);
            }
            if !(next.done && next.progress() == Progress::Exited(0)) {
                return;
            }
        }
        if self.init.iter().all(|c| c.progress() == Progress::Exited(0)) {
            for container in &mut self.containers {
                container.step(&shared, now);
            }
        }
    }

    fn initialized(&self) -> bool {
        self.init.iter().all(|c| c.progress() == Progress::Exited(0))
    }

    fn status(&mut self) -> Value {
        let initialized = self.initialized();
        let init_failed = self.init.iter().any(|c| c.done && c.progress() != Progress::Exited(0));
        let progress: Vec<Progress> = self.containers.iter().map(Container::progress).collect();
        let phase = lifecycle::phase(init_failed, initialized, &progress);
        let ready = self.containers.iter().all(|c| c.ready);
        let unready: Vec<&str> = self.containers.iter().filter(|c| !c.ready).map(|c| c.name.as_str()).collect();
        let uninitialized: Vec<&str> =
            self.init.iter().filter(|c| c.progress() != Progress::Exited(0)).map(|c| c.name.as_str()).collect();
        let settled = matches!(phase, "Succeeded" | "Failed");
        let now = objects::now();
        let wanted = [self.volumes.is_some(), initialized, ready && !settled, ready && !settled, true];
        for ((_, status, since), wanted) in self.conditions.iter_mut().zip(wanted) {
            if *status != wanted {
                (*status, *since) = (wanted, now.clone());
            }
        }
        let conditions: Vec<Value> = self
            .conditions
            .iter()
            .map(|(kind, status, since)| {
                let mut condition = json!({
                    "type": kind,
                    "status": if *status { "True" } else { "False" },
                    "lastProbeTime": null,
                    "lastTransitionTime": since,
                });
                let reason = match (*kind, *status) {
                    ("Initialized", false) => Some(("ContainersNotInitialized", &uninitialized)),
                    ("Ready" | "ContainersReady", false) if settled => Some(("PodCompleted", &unready)),
                    ("Ready" | "ContainersReady", false) => Some(("ContainersNotReady", &unready)),
                    _ => None,
                };
                if let Some((reason, names)) = reason {
                    condition["reason"] = json!(reason);
                    if reason != "PodCompleted" {
                        let verb = if *kind == "Initialized" { "incomplete" } else { "unready" };
                        condition["message"] = json!(format!("containers with {verb} status: [{}]", names.join(" ")));
                    }
                }
                condition
            })
            .collect();
        let ip = self.lease.address.to_string();
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": self.start_time,
            "qosClass": qos_class(&self.pod),
            "containerStatuses": self.containers.iter().map(Container::status).collect::<Vec<_>>(),
        });
        if !self.init.is_empty() {
            status["initContainerStatuses"] = json!(self.init.iter().map(Container::status).collect::<Vec<_>>());
        }
        if let Some(message) = self.volume_error.as_ref().filter(|_| self.volumes.is_none()) {
            status["message"] = json!(message);
        }
        status
    }

    /// Writes the status when it changed.
    fn report(&mut self) {
        let status = self.status();
        if status == self.reported {
            return;
        }
        if self.write(|pod| pod["status"] = status.clone()) {
            self.reported = status;
        }
    }

    /// Edits the stored pod (this uid's), retrying on conflicts. False when it is gone.
    fn write(&self, edit: impl Fn(&mut Value)) -> bool {
        let store = &self.context.cluster.store;
        for _ in 0..10 {
            let Some(mut stored) = store.get(&self.key) else { return false };
            if stored["metadata"]["uid"] != self.pod["metadata"]["uid"] {
                return false;
            }
            edit(&mut stored);
            let expect = Expect::Version(resource_version(&stored));
            match store.write(&self.key, stored, expect) {
                Ok(_) => return true,
                Err(StoreError::Conflict { .. }) => continue,
                Err(_) => return false,
            }
        }
        false
    }

    /// Stops every container: SIGTERM, then SIGKILL once `grace` has passed (or at once if the
    /// pod is removed meanwhile). Returns false when the pod was removed under it.
    async fn terminate(&mut self, grace: Duration, updates: &mut watch::Receiver<Option<Value>>) -> bool {
        let start = Instant::now();
        let view = self.view();
        for container in self.containers.iter().chain(&self.init).filter(|c| c.running()) {
            record_event(
                &self.context,
                &view,
                Some(container),
                false,
                "Killing",
                &format!("Stopping container {}", container.name),
            );
        }
        for container in self.all() {
            container.terminating = true;
            container.stop(grace, start);
        }
        loop {
            let now = Instant::now();
            let shared = Shared {
                context: &self.context,
                pod: &view,
                dir: &self.dir,
                volumes: &[],
                ip: self.lease.address.into(),
            };
            for container in self.init.iter_mut().chain(self.containers.iter_mut()) {
                container.step(&shared, now);
            }
            self.report();
            if !self.init.iter().chain(&self.containers).any(Container::running) {
                return true;
            }
            tokio::select! {
                changed = updates.changed() => match (changed, updates.borrow_and_update().clone()) {
                    (Ok(()), Some(pod)) => self.pod = pod,
                    _ => return false,
                },
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }
}

/// `Guaranteed` when every container's requests equal its limits (and there are some),
/// `BestEffort` when none has any, else `Burstable`.
fn qos_class(pod: &Value) -> &'static str {
    let containers = pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
    let resources: Vec<&Value> = containers.iter().map(|c| &c["resources"]).collect();
    let empty = |v: &Value| v.as_object().is_none_or(|o| o.is_empty());
    if resources.iter().all(|r| empty(&r["limits"]) && empty(&r["requests"])) {
        return "BestEffort";
    }
    let guaranteed = resources.iter().all(|r| {
        let limits = &r["limits"];
        !empty(limits)
            && ["cpu", "memory"].iter().all(|k| !limits[k].is_null())
            && (empty(&r["requests"]) || r["requests"] == *limits)
    });
    if guaranteed { "Guaranteed" } else { "Burstable" }
}

/// ConfigMaps, Secrets (decoded) and claims of one namespace, read from the store.
struct StoreSources<'a> {
    store: &'a Store,
    namespace: &'a str,
}

impl Sources for StoreSources<'_> {
    fn data(&self, plural: &str, name: &str) -> Option<Vec<(String, String)>> {
        let key = ObjectKey {
            resource: ResourceKey::new("", plural),
            namespace: self.namespace.to_owned(),
            name: name.to_owned(),
        };
        let object = self.store.get(&key)?;
        let entries = |field: &str| object[field].as_object().cloned().unwrap_or_default().into_iter();
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Some(match plural {
            "secrets" => entries("data")
                .map(|(k, v)| {
                    let decoded = base64::engine::general_purpose::STANDARD.decode(text(&v)).unwrap_or_default();
                    (k, String::from_utf8_lossy(&decoded).into_owned())
                })
                .collect(),
            _ => entries("data").map(|(k, v)| (k, text(&v))).collect(),
        })
    }
}

/// Records an Event about the pod (and one of its containers), counting repeats of the same
/// one instead of adding another.
fn record_event(
    context: &Context,
    pod: &Value,
    container: Option<&Container>,
    warning: bool,
    reason: &str,
    message: &str,
) {
    let store = &context.cluster.store;
    let metadata = &pod["metadata"];
    let namespace = metadata["namespace"].as_str().unwrap_or_default();
    let field_path =
        container.map(|c| format!("spec.{}{{{}}}", if c.init { "initContainers" } else { "containers" }, c.name));
    let mut hasher = DefaultHasher::new();
    (metadata["uid"].as_str(), &field_path, reason, message).hash(&mut hasher);
    let name = format!("{}.{:016x}", metadata["name"].as_str().unwrap_or_default(), hasher.finish());
    let key =
        ObjectKey { resource: ResourceKey::new("", "events"), namespace: namespace.to_owned(), name: name.clone() };
    let now = objects::now();
    if let Some(mut event) = store.get(&key) {
        event["count"] = json!(event["count"].as_u64().unwrap_or(1) + 1);
        event["lastTimestamp"] = json!(now);
        let expect = Expect::Version(resource_version(&event));
        let _ = store.write(&key, event, expect);
        return;
    }
    let Some(events) = context.cluster.registry.find("", "v1", "events") else { return };
    let mut involved = json!({
        "kind": "Pod", "apiVersion": "v1", "namespace": namespace,
        "name": metadata["name"], "uid": metadata["uid"],
    });
    if let Some(path) = field_path {
        involved["fieldPath"] = json!(path);
    }
    let body = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name},
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "type": if warning { "Warning" } else { "Normal" },
        "source": {"component": "kubelet", "host": NODE_NAME},
        "reportingComponent": "kubelet",
        "reportingInstance": NODE_NAME,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    match objects::prepare_create(&events, Some(namespace), body, &now) {
        Ok(event) => {
            let _ = store.write(&key, event, Expect::Absent);
        }
        Err(error) => tracing::warn!(?error, "recording an event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_classes_follow_requests_and_limits() {
        let pod = |resources: Value| json!({"spec": {"containers": [{"resources": resources}]}});
        assert_eq!(qos_class(&pod(json!({}))), "BestEffort");
        assert_eq!(qos_class(&pod(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))), "Guaranteed");
        assert_eq!(qos_class(&pod(json!({"requests": {"cpu": "1"}}))), "Burstable");
    }

    #[test]
    fn absolute_commands_from_the_image_run_its_executable() {
        let executable = Path::new("/work/target/debug/lantern-worker");
        assert_eq!(program_for("/usr/local/bin/lantern-worker", executable), "/work/target/debug/lantern-worker");
        assert_eq!(program_for("sh", executable), "sh");
        assert_eq!(program_for("/bin/sh", executable), "/bin/sh");
    }
}
