//! A pod's `log` subresource: one container's output (its current run, or the one before with
//! `previous`), whole or its last `tailLines`, cut at `limitBytes`, and with `follow` streamed
//! until that run ends.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use serde_json::Value;

use super::{Cluster, Params, Target};
use crate::node;
use crate::status::{ApiError, ApiResult};

/// How often a followed log is checked for more output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

pub fn serve(cluster: &Arc<Cluster>, target: &Target, params: &Params) -> ApiResult<Response> {
    let pod = cluster.store.get(&target.key()).ok_or_else(|| target.not_found())?;
    let pod_name = target.name.clone().unwrap_or_default();
    let container = container_name(&pod, &pod_name, params.container.as_deref())?;
    let status = container_status(&pod, &container);
    let restarts = status["restartCount"].as_u64().unwrap_or(0);
    let previous = params.previous.unwrap_or(false);
    let run = match previous {
        true if status["lastState"]["terminated"].is_object() => restarts.saturating_sub(1),
        true => {
            return Err(ApiError::bad_request(format!(
                "previous terminated container \"{container}\" in pod \"{pod_name}\" not found"
            )));
        }
        false => restarts,
    };
    let path = node::log_path(&node::pod_dir(&cluster.state_dir, &pod), &container, run);
    if !path.exists()
        && let Some(reason) = status["state"]["waiting"]["reason"].as_str()
    {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{pod_name}\" is waiting to start: {reason}"
        )));
    }
    let content = std::fs::read(&path).unwrap_or_default();
    let mut shown = tail(&content, params.tail_lines).to_vec();
    if let Some(limit) = params.limit_bytes {
        shown.truncate(limit as usize);
    }
    let response = Response::builder().header(http::header::CONTENT_TYPE, "text/plain");
    if !params.follow.unwrap_or(false) || previous || params.limit_bytes.is_some() {
        return Ok(response.body(Body::from(shown)).expect("a static response is valid"));
    }
    let follow =
        Follow { cluster: cluster.clone(), target_key: target.key(), container, run, path, offset: content.len() };
    let first = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(shown)) });
    let rest = futures::stream::unfold(Some(follow), |state| async move {
        let mut follow = state?;
        loop {
            let running = follow.running();
            let more = follow.read_more();
            if !more.is_empty() {
                return Some((Ok(Bytes::from(more)), Some(follow).filter(|_| running)));
            }
            if !running {
                return None;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    });
    Ok(response.body(Body::from_stream(futures::StreamExt::chain(first, rest))).expect("a streamed response is valid"))
}

/// The container asked for, or the pod's only (or default) one.
fn container_name(pod: &Value, pod_name: &str, asked: Option<&str>) -> ApiResult<String> {
    let names = |field: &str| -> Vec<String> {
        let list = pod["spec"][field].as_array().cloned().unwrap_or_default();
        list.iter().filter_map(|c| c["name"].as_str().map(str::to_owned)).collect()
    };
    let (containers, init) = (names("containers"), names("initContainers"));
    if let Some(asked) = asked.filter(|a| !a.is_empty()) {
        return match containers.iter().chain(&init).any(|c| c == asked) {
            true => Ok(asked.to_owned()),
            false => Err(ApiError::bad_request(format!("container {asked} is not valid for pod {pod_name}"))),
        };
    }
    if let Some(default) = pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"].as_str() {
        return Ok(default.to_owned());
    }
    match containers.as_slice() {
        [only] => Ok(only.clone()),
        _ => {
            let mut message = format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                message.push_str(&format!(" or one of the init containers: [{}]", init.join(" ")));
            }
            Err(ApiError::bad_request(message))
        }
    }
}

fn container_status(pod: &Value, container: &str) -> Value {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .flat_map(|field| pod["status"][field].as_array().cloned().unwrap_or_default())
        .find(|s| s["name"] == container)
        .unwrap_or(Value::Null)
}

/// The last `lines` lines of `content` (all of it when not asked).
fn tail(content: &[u8], lines: Option<i64>) -> &[u8] {
    let Some(lines) = lines.and_then(|n| usize::try_from(n).ok()) else { return content };
    let body = content.strip_suffix(b"\n").unwrap_or(content);
    let mut seen = 0;
    for (index, byte) in body.iter().enumerate().rev() {
        if *byte == b'\n' {
            seen += 1;
            if seen == lines {
                return &content[index + 1..];
            }
        }
    }
    match lines {
        0 => &[],
        _ => content,
    }
}

/// A run's log being followed.
struct Follow {
    cluster: Arc<Cluster>,
    target_key: crate::store::ObjectKey,
    container: String,
    run: u64,
    path: std::path::PathBuf,
    offset: usize,
}

impl Follow {
    /// Whether the run may still write: its pod is there, on that run, and the container runs.
    fn running(&self) -> bool {
        let Some(pod) = self.cluster.store.get(&self.target_key) else { return false };
        let status = container_status(&pod, &self.container);
        status["restartCount"].as_u64() == Some(self.run) && status["state"]["running"].is_object()
    }

    fn read_more(&mut self) -> Vec<u8> {
        let content = std::fs::read(&self.path).unwrap_or_default();
        let more = content.get(self.offset..).unwrap_or_default().to_vec();
        self.offset += more.len();
        more
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tails_count_lines_from_the_end() {
        let log = b"a\nb\nc\n";
        assert_eq!(tail(log, Some(2)), b"b\nc\n");
        assert_eq!(tail(log, Some(5)), log);
        assert_eq!(tail(log, Some(0)), b"");
        assert_eq!(tail(log, None), log);
        assert_eq!(tail(b"a\nb", Some(1)), b"b");
    }

    #[test]
    fn a_pod_of_several_containers_needs_a_name() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        let error = container_name(&pod, "web", None).unwrap_err();
        assert!(error.message.contains("choose one of: [a b] or one of the init containers: [i]"), "{}", error.message);
        assert_eq!(container_name(&pod, "web", Some("i")).unwrap(), "i");
        assert!(container_name(&pod, "web", Some("z")).is_err());
        let single = json!({"spec": {"containers": [{"name": "only"}]}});
        assert_eq!(container_name(&single, "p", None).unwrap(), "only");
    }
}
