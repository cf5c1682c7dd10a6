//! Startup, liveness and readiness probes: when each is due, how results count against its
//! thresholds, and the four handlers (httpGet, tcpSocket, grpc, exec).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::process::Launch;

/// A probe's settings, with the kubelet's defaults.
#[derive(Clone, Debug)]
pub struct Settings {
    pub handler: Value,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Settings {
    pub fn from_spec(spec: &Value) -> Option<Self> {
        if !spec.is_object() {
            return None;
        }
        let seconds = |field: &str, default: u64| Duration::from_secs(spec[field].as_u64().unwrap_or(default));
        let count = |field: &str, default: u64| spec[field].as_u64().unwrap_or(default).max(1) as u32;
        Some(Self {
            handler: spec.clone(),
            initial_delay: seconds("initialDelaySeconds", 0),
            period: seconds("periodSeconds", 10).max(Duration::from_secs(1)),
            timeout: seconds("timeoutSeconds", 1).max(Duration::from_secs(1)),
            success_threshold: count("successThreshold", 1),
            failure_threshold: count("failureThreshold", 3),
        })
    }
}

/// A probe's running tally.
pub struct Probe {
    pub settings: Settings,
    next: Instant,
    successes: u32,
    failures: u32,
    running: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

/// What a finished check changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The success threshold was just reached.
    Passed,
    /// The failure threshold was just reached; the message says why the last check failed.
    Failed(String),
    /// A failure below the threshold.
    Failing(String),
    Unchanged,
}

impl Probe {
    /// A probe for a container that started at `started`.
    pub fn new(settings: Settings, started: Instant) -> Self {
        let next = started + settings.initial_delay;
        Self { settings, next, successes: 0, failures: 0, running: None }
    }

    /// Starts a check when one is due and none is running; collects a finished one.
    pub fn poll(&mut self, now: Instant, target: &Target) -> Verdict {
        if let Some(running) = &self.running
            && running.is_finished()
        {
            let running = self.running.take().expect("checked above");
            let result = futures::FutureExt::now_or_never(running)
                .expect("the task has finished")
                .unwrap_or_else(|e| Err(format!("the probe task failed: {e}")));
            return self.count(result);
        }
        if self.running.is_none() && now >= self.next {
            self.next = now + self.settings.period;
            let (handler, target, timeout) = (self.settings.handler.clone(), target.clone(), self.settings.timeout);
            self.running = Some(tokio::spawn(async move {
                match tokio::time::timeout(timeout, check(&handler, &target)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("timeout after {}s", timeout.as_secs())),
                }
            }));
        }
        Verdict::Unchanged
    }

    fn count(&mut self, result: Result<(), String>) -> Verdict {
        match result {
            Ok(()) => {
                self.failures = 0;
                self.successes += 1;
                match self.successes == self.settings.success_threshold {
                    true => Verdict::Passed,
                    false => Verdict::Unchanged,
                }
            }
            Err(reason) => {
                self.successes = 0;
                self.failures += 1;
                match self.failures == self.settings.failure_threshold {
                    true => Verdict::Failed(reason),
                    false => Verdict::Failing(reason),
                }
            }
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.abort();
        }
    }
}

/// Where a container's probes go: its pod's IP, its named ports, and how to run an exec probe
/// in its environment.
#[derive(Clone, Debug)]
pub struct Target {
    pub ip: IpAddr,
    pub ports: Vec<(String, u16)>,
    pub launch: Launch,
}

impl Target {
    fn port(&self, port: &Value) -> Result<u16, String> {
        match port {
            Value::Number(n) => {
                n.as_u64().and_then(|n| u16::try_from(n).ok()).ok_or_else(|| format!("invalid port {n}"))
            }
            Value::String(name) => match name.parse::<u16>() {
                Ok(number) => Ok(number),
                Err(_) => self
                    .ports
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, p)| *p)
                    .ok_or_else(|| format!("the container has no port named {name:?}")),
            },
            _ => Err("the probe names no port".to_owned()),
        }
    }

    fn address(&self, handler: &Value) -> Result<SocketAddr, String> {
        let ip = match handler["host"].as_str().filter(|h| !h.is_empty()) {
            Some(host) => host.parse().map_err(|_| format!("probe host {host:?} is not an IP address"))?,
            None => self.ip,
        };
        Ok(SocketAddr::new(ip, self.port(&handler["port"])?))
    }
}

/// One check; `Err` says why it failed, as the kubelet's Unhealthy events do.
pub async fn check(probe: &Value, target: &Target) -> Result<(), String> {
    if let Some(http) = probe.get("httpGet") {
        return http_get(http, target).await;
    }
    if let Some(tcp) = probe.get("tcpSocket") {
        let address = target.address(tcp)?;
        return tokio::net::TcpStream::connect(address).await.map(drop).map_err(|e| format!("dial tcp {address}: {e}"));
    }
    if let Some(grpc) = probe.get("grpc") {
        return grpc_health(grpc, target).await;
    }
    if let Some(command) = probe["exec"]["command"].as_array() {
        return exec(command, target).await;
    }
    Err("the probe has no handler".to_owned())
}

async fn http_get(http: &Value, target: &Target) -> Result<(), String> {
    let address = target.address(http)?;
    let scheme = http["scheme"].as_str().unwrap_or("HTTP").to_lowercase();
    let path = http["path"].as_str().unwrap_or("/");
    let url = format!("{scheme}://{address}{}{path}", if path.starts_with('/') { "" } else { "/" });
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let mut request = client.get(&url).header("user-agent", "kube-probe/1.33");
    for header in http["httpHeaders"].as_array().into_iter().flatten() {
        request =
            request.header(header["name"].as_str().unwrap_or_default(), header["value"].as_str().unwrap_or_default());
    }
    let response = request.send().await.map_err(|e| format!("Get \"{url}\": {e}"))?;
    let status = response.status().as_u16();
    match (200..400).contains(&status) {
        true => Ok(()),
        false => Err(format!("HTTP probe failed with statuscode: {status}")),
    }
}

async fn grpc_health(grpc: &Value, target: &Target) -> Result<(), String> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let address = target.address(grpc)?;
    let service = grpc["service"].as_str().unwrap_or_default().to_owned();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("failed to connect service {address:?}: {e}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest { service })
        .await
        .map_err(|status| format!("health rpc failed: {} {}", status.code(), status.message()))?;
    match response.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("service unhealthy (responded with {other:?})")),
    }
}

async fn exec(command: &[Value], target: &Target) -> Result<(), String> {
    let words: Vec<String> = command.iter().filter_map(|w| w.as_str().map(str::to_owned)).collect();
    let (program, args) = words.split_first().ok_or("the exec probe has an empty command")?;
    let mut command = match &target.launch.container {
        // In the container, as `podman exec` runs it.
        Some(container) => {
            let mut command = tokio::process::Command::new("podman");
            command.args(["--runtime", "runc", "exec", container.as_str(), program]);
            command
        }
        None => tokio::process::Command::new(program),
    };
    let output = command
        .args(args)
        .env_clear()
        .envs(target.launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&target.launch.dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("exec {program:?}: {e}"))?;
    match output.status.success() {
        true => Ok(()),
        false => {
            let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            Err(format!(
                "command {words:?} exited with {}: {said}",
                super::process::Exit::from(output.status).reported_code()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn thresholds_count_consecutive_results() {
        let settings =
            Settings::from_spec(&json!({"tcpSocket": {"port": 1}, "failureThreshold": 2, "successThreshold": 2}))
                .unwrap();
        let mut probe = Probe::new(settings, Instant::now());
        assert_eq!(probe.count(Err("no".into())), Verdict::Failing("no".into()));
        assert_eq!(probe.count(Ok(())), Verdict::Unchanged);
        assert_eq!(probe.count(Ok(())), Verdict::Passed);
        assert_eq!(probe.count(Err("a".into())), Verdict::Failing("a".into()));
        assert_eq!(probe.count(Err("b".into())), Verdict::Failed("b".into()));
        assert_eq!(Settings::from_spec(&json!({"exec": {}})).unwrap().period, Duration::from_secs(10));
    }
}
