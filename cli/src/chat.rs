//! `lantern chat NAME[:VERSION|:LABEL]`: an interactive chat with an InferenceService's model over
//! its OpenAI API (`/v1/chat/completions`, streamed: each token is printed as it comes). The
//! conversation is kept and sent again with every turn; an empty line is skipped, Ctrl-D or
//! `/exit` ends it. The service is reached at its Service's cluster IP (as from a pod, or the
//! devcluster's loopback proxy), or at `--url` (through `kubectl port-forward` from a laptop).
//! A model or version the service does not serve gets the server's own message, and exit 1.

use std::io::{IsTerminal, Write};

use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use lantern_operator::crd::InferenceService;
use tokio::io::AsyncBufReadExt;

use crate::status::Health;

/// The port the Service exposes the workers' serving port on.
const SERVING_PORT: u16 = 8500;

/// `NAME[:VERSION|:LABEL]` → (the service's name, what follows the colon).
pub fn split(target: &str) -> (&str, Option<&str>) {
    match target.split_once(':') {
        Some((name, choice)) if !choice.is_empty() => (name, Some(choice)),
        _ => (target.trim_end_matches(':'), None),
    }
}

/// The text of one streamed chunk (`data: {…}`), if it carries any.
fn delta(line: &str) -> Option<String> {
    let data = line.strip_prefix("data:")?.trim();
    let chunk: serde_json::Value = serde_json::from_str(data).ok()?;
    chunk["choices"][0]["delta"]["content"].as_str().map(str::to_owned)
}

/// The server's message in an OpenAI error body, or the body itself.
fn error_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    parsed.and_then(|v| v["error"]["message"].as_str().map(str::to_owned)).unwrap_or_else(|| body.trim().to_owned())
}

/// The sampling settings sent with every turn; unset ones are the server's.
pub struct Sampling {
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
}

pub async fn chat(
    client: &kube::Client,
    namespace: &str,
    target: &str,
    url: Option<String>,
    sampling: Sampling,
) -> anyhow::Result<Health> {
    let (name, choice) = split(target);
    let services: Api<InferenceService> = Api::namespaced(client.clone(), namespace);
    let Some(service) = services.get_opt(name).await? else {
        anyhow::bail!("inferenceservice {name:?} not found in namespace {namespace:?}")
    };
    let model = match choice {
        Some(choice) => format!("{}:{choice}", service.spec.model),
        None => service.spec.model.clone(),
    };
    let base = match url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let kubernetes: Api<Service> = Api::namespaced(client.clone(), namespace);
            let ip =
                kubernetes.get(name).await?.spec.and_then(|s| s.cluster_ip).filter(|ip| !ip.is_empty() && ip != "None");
            let Some(ip) = ip else { anyhow::bail!("service {name:?} has no cluster IP; pass --url") };
            format!("http://{ip}:{SERVING_PORT}")
        }
    };
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        println!("chatting with {model} at {base} (Ctrl-D or /exit ends)");
    }
    let http = reqwest::Client::new();
    let mut messages: Vec<serde_json::Value> = Vec::new();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        if interactive {
            print!("you> ");
            std::io::stdout().flush()?;
        }
        let Some(line) = lines.next_line().await? else { break };
        let line = line.trim();
        if line == "/exit" {
            break;
        }
        if line.is_empty() {
            continue;
        }
        messages.push(serde_json::json!({"role": "user", "content": line}));
        let mut body = serde_json::json!({"model": model, "messages": messages, "stream": true});
        if let Some(temperature) = sampling.temperature {
            body["temperature"] = serde_json::json!(temperature);
        }
        if let Some(max_tokens) = sampling.max_tokens {
            body["max_tokens"] = serde_json::json!(max_tokens);
        }
        let mut response = http.post(format!("{base}/v1/chat/completions")).json(&body).send().await?;
        if !response.status().is_success() {
            let status = response.status();
            let message = error_message(&response.text().await.unwrap_or_default());
            println!("error: {status}: {message}");
            // A model or version the service does not serve will not answer the next turn either.
            if status == reqwest::StatusCode::NOT_FOUND {
                return Ok(Health::Degraded);
            }
            messages.pop();
            continue;
        }
        let mut reply = String::new();
        let mut pending = String::new();
        while let Some(bytes) = response.chunk().await? {
            pending.push_str(&String::from_utf8_lossy(&bytes));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                if let Some(text) = delta(line.trim_end()) {
                    print!("{text}");
                    std::io::stdout().flush()?;
                    reply.push_str(&text);
                }
            }
        }
        println!();
        messages.push(serde_json::json!({"role": "assistant", "content": reply}));
    }
    if interactive {
        println!();
    }
    Ok(Health::Healthy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_chunks_and_errors_read_as_the_api_writes_them() {
        assert_eq!(split("chat"), ("chat", None));
        assert_eq!(split("chat:3"), ("chat", Some("3")));
        assert_eq!(split("chat:canary"), ("chat", Some("canary")));
        assert_eq!(split("chat:"), ("chat", None));
        assert_eq!(delta(r#"data: {"choices":[{"delta":{"content":"Hi"}}]}"#), Some("Hi".to_owned()));
        assert_eq!(delta(r#"data: {"choices":[{"delta":{"role":"assistant"}}]}"#), None);
        assert_eq!(delta("data: [DONE]"), None);
        assert_eq!(
            error_message(r#"{"error":{"message":"model \"x\" not found","type":"not_found"}}"#),
            "model \"x\" not found"
        );
        assert_eq!(error_message("plain"), "plain");
    }
}
