//! Running the operator as a Deployment of several replicas would: one leads (holds the Lease)
//! and reconciles, a standby takes over when it stops, and a leader that loses its Lease stops
//! at once. Each replica serves its metrics and health, and reconciles are exported as traces.

use std::time::Duration;

use lantern_e2e::{MODELS_CLAIM, OPERATOR_IDENTITY, Operator, Stack, claim_service};
use lantern_telemetry::collector::Collector;

/// A short Lease, so that the test sees a renewal and a takeover in seconds.
const LEASE: (&str, &str) = ("LANTERN_LEASE_DURATION_SECONDS", "6");

async fn holder(stack: &Stack) -> String {
    stack.field("lease/lantern-operator", ".spec.holderIdentity").await.unwrap_or_default()
}

async fn wait_for_holder(stack: &Stack, identity: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while holder(stack).await != identity {
        assert!(tokio::time::Instant::now() < deadline, "{identity} never held the Lease:\n{}", stack.operator_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(path, body)` of an operator's HTTP endpoint.
async fn scrape(operator: &Operator, path: &str) -> (u16, String) {
    let address = operator.metrics_address().await.unwrap();
    let response = reqwest::get(format!("http://{address}{path}")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn observed_generation(stack: &Stack, generation: i64) -> serde_json::Value {
    stack
        .wait_for("inferenceservice/idle", &format!("generation {generation} observed"), Duration::from_secs(20), |s| {
            s["status"]["observedGeneration"] == generation
        })
        .await
}

#[tokio::test]
async fn one_replica_leads_a_standby_takes_over_and_a_leader_that_loses_its_lease_stops() {
    let (collector, endpoint) = Collector::start().await.unwrap();
    let mut stack = Stack::start_with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), LEASE]).await.unwrap();
    wait_for_holder(&stack, OPERATOR_IDENTITY).await;
    let mut standby = Operator::start(&stack.cluster, stack.state.path(), "standby", &[LEASE]).unwrap();

    assert!(stack.apply(MODELS_CLAIM).await.unwrap().ok);
    assert!(stack.apply(&claim_service("idle", 0)).await.unwrap().ok);
    observed_generation(&stack, 1).await;
    // Re-applying the unchanged Service on every pass changes nothing (no reconcile loop).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stack.field("service/idle", ".metadata.generation").await.unwrap(), "1");

    // The leader reconciled and says so; the standby waits, ready, and has reconciled nothing.
    let (code, leader_metrics) = scrape(stack.operator(), "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(metric(&leader_metrics, "lantern_operator_leader"), Some(1.0), "{leader_metrics}");
    let reconciled = r#"lantern_operator_reconciles_total{kind="InferenceService",result="success"}"#;
    assert!(metric(&leader_metrics, reconciled).is_some_and(|n| n >= 1.0), "{leader_metrics}");
    let (_, standby_metrics) = scrape(&standby, "/metrics").await;
    assert_eq!(metric(&standby_metrics, "lantern_operator_leader"), Some(0.0), "{standby_metrics}");
    assert_eq!(metric(&standby_metrics, reconciled), None, "{standby_metrics}");
    assert_eq!(scrape(&standby, "/readyz").await, (200, "ok".to_owned()));
    assert_eq!(scrape(&standby, "/healthz").await, (200, "ok".to_owned()));
    assert!(standby.log().contains("waiting for the leader Lease"), "{}", standby.log());

    // SIGTERM: the leader stops, releases the Lease, and the standby takes over well before the
    // Lease would have expired; then it reconciles a change.
    assert!(stack.operator().terminate().await.unwrap().success(), "{}", stack.operator_log());
    assert!(stack.operator_log().contains("released the leader Lease"), "{}", stack.operator_log());
    wait_for_holder(&stack, "standby").await;
    let patch = r#"{"spec":{"rollout":{"stepSeconds":5}}}"#;
    assert!(stack.kubectl(&["patch", "inferenceservice/idle", "--type", "merge", "-p", patch]).await.unwrap().ok);
    observed_generation(&stack, 2).await;
    let (_, standby_metrics) = scrape(&standby, "/metrics").await;
    assert_eq!(metric(&standby_metrics, "lantern_operator_leader"), Some(1.0), "{standby_metrics}");

    // The stopped leader flushed its reconcile spans to the collector on the way out.
    let spans = collector.spans();
    assert!(
        spans.iter().any(|s| s.name == "reconcile InferenceService"),
        "spans received: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );

    // Another holder in the Lease (a partition healed, a replica that took over): the leader
    // notices at its next renewal and exits, rather than reconcile beside another leader.
    let intruder = r#"{"spec":{"holderIdentity":"intruder"}}"#;
    assert!(stack.kubectl(&["patch", "lease/lantern-operator", "--type", "merge", "-p", intruder]).await.unwrap().ok);
    let status = standby.exited(Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.code(), Some(1), "{}", standby.log());
    assert!(standby.log().contains("lost the leader Lease (now held by intruder)"), "{}", standby.log());
    stack.stop().await.unwrap();
}

/// The chart's alert rules: (alert, expression).
fn alert_rules() -> Vec<(String, String)> {
    let path = lantern_e2e::workspace().join("charts/lantern/rules/lantern.rules.yaml");
    let rules: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let groups = rules["groups"].as_array().unwrap().iter();
    let rules = groups.flat_map(|g| g["rules"].as_array().unwrap().iter());
    rules.map(|r| (r["alert"].as_str().unwrap().to_owned(), r["expr"].as_str().unwrap().to_owned())).collect()
}

/// The chart's alert rules fire and resolve as their runbooks say (promtool's unit tests on the
/// series each describes), each has its runbook in the README, and the chart's PrometheusRule
/// holds exactly those rules; its dashboard ConfigMaps hold the generated dashboards.
#[tokio::test]
async fn the_alert_rules_fire_and_resolve_as_their_runbooks_say_and_the_chart_ships_them() {
    let rules_dir = lantern_e2e::workspace().join("charts/lantern/rules");
    let readme = std::fs::read_to_string(lantern_e2e::workspace().join("README.md")).unwrap();
    let rules = alert_rules();
    assert!(rules.len() >= 9, "{rules:?}");
    for (alert, _) in &rules {
        assert!(readme.contains(&format!("\n### {alert}\n")), "no runbook section for {alert} in the README");
    }
    let stack = Stack::bare().await.unwrap();
    let rendered =
        stack.helm(&["template", "lantern", "charts/lantern", "--set", "monitoring.prometheusRule.enabled=true"]).await;
    let rendered = rendered.unwrap();
    let rule = rendered.split("\n---").find(|doc| doc.contains("kind: PrometheusRule")).expect("a PrometheusRule");
    let rule: serde_json::Value = serde_saphyr::from_str(rule).unwrap();
    let file: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(rules_dir.join("lantern.rules.yaml")).unwrap()).unwrap();
    assert_eq!(rule["spec"], file, "the PrometheusRule holds the rules file");
    // The dashboards, as ConfigMaps Grafana's sidecar picks up by its default label.
    let rendered =
        stack.helm(&["template", "lantern", "charts/lantern", "--set", "monitoring.dashboards.enabled=true"]).await;
    let rendered = rendered.unwrap();
    let maps: Vec<serde_json::Value> = rendered
        .split("\n---")
        .filter(|doc| doc.contains("kind: ConfigMap"))
        .map(|doc| serde_saphyr::from_str(doc).unwrap())
        .collect();
    for (file, dashboard) in lantern_dashboards::all() {
        let shipped =
            maps.iter().find(|m| m["data"][file].is_string()).unwrap_or_else(|| panic!("no ConfigMap holds {file}"));
        assert_eq!(shipped["metadata"]["labels"]["grafana_dashboard"], "1");
        let json: serde_json::Value = serde_json::from_str(shipped["data"][file].as_str().unwrap()).unwrap();
        assert_eq!(json, dashboard, "{file} as the chart ships it");
    }
    stack.stop().await.unwrap();

    let Ok(output) = std::process::Command::new("promtool")
        .args(["test", "rules", "lantern.rules.test.yaml"])
        .current_dir(&rules_dir)
        .output()
    else {
        eprintln!("SKIPPED: promtool is not installed (scripts/install-promtool.sh)");
        return;
    };
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool test rules:\n{said}");
}

/// The metric names a query selects: every vector and range selector's.
fn selected_metrics(expr: &str) -> Vec<String> {
    struct Names(Vec<String>);
    impl promql_parser::util::ExprVisitor for Names {
        type Error = std::convert::Infallible;
        fn pre_visit(&mut self, expr: &promql_parser::parser::Expr) -> Result<bool, Self::Error> {
            use promql_parser::parser::Expr;
            let selector = match expr {
                Expr::VectorSelector(selector) => Some(selector),
                Expr::MatrixSelector(matrix) => Some(&matrix.vs),
                _ => None,
            };
            self.0.extend(selector.and_then(|s| s.name.clone()));
            Ok(true)
        }
    }
    // Grafana's variables, as a query would have them filled in.
    let filled = expr.replace("$__rate_interval", "5m").replace("$model", ".*");
    let parsed = promql_parser::parser::parse(&filled).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let mut names = Names(Vec::new());
    promql_parser::util::walk_expr(&mut names, &parsed).unwrap();
    names.0
}

/// The metric names of every series in a Prometheus text exposition.
fn exported(text: &str) -> std::collections::BTreeSet<String> {
    let series = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    series.filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned)).collect()
}

/// `promtool check metrics` (Debian's prometheus, `scripts/install-promtool.sh`) finds nothing
/// to say of `what`'s exposition; SKIPPED without promtool.
fn lint(what: &str, text: &str) {
    use std::io::Write;
    let Ok(mut promtool) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("SKIPPED: promtool is not installed (scripts/install-promtool.sh)");
        return;
    };
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && said.trim().is_empty(), "promtool check metrics on {what}:\n{said}");
}

async fn metrics_of(address: &str) -> String {
    reqwest::get(format!("http://{address}/metrics")).await.unwrap().text().await.unwrap()
}

/// Every metric a dashboard's query names is one that a worker serving a tensor model and a
/// language model (with a failed load among its versions), a training rank 0 and the operator
/// export, scraped from the real processes: renaming a metric fails here. promtool finds each
/// exposition well-formed.
#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboards_query_is_exported_by_a_running_process_and_promtool_passes_them() {
    let worker = lantern_e2e::binary("lantern-worker").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repository = dir.path().join("models");
    let root = repository.to_str().unwrap();
    lantern_e2e::publish_mlp(root, &[], "adder", "2,8,1", 1, &[]).await.unwrap();
    lantern_e2e::publish_mlp(root, &[], "broken", "2,8,1", 1, &[]).await.unwrap();
    std::fs::write(repository.join("broken/1/model.safetensors"), b"not what the manifest says").unwrap();
    let gguf = lantern_e2e::workspace().join(".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    lantern_e2e::publish(root, &[], "chat", &gguf, &[]).await.unwrap();

    // A worker serving them, asked once of each model.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let serving = format!("127.0.0.1:{port}");
    let _server = tokio::process::Command::new(&worker)
        .args(["serve", "--repository", root, "--listen", &serving])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !client.get(format!("http://{serving}/v2/models/chat/ready")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(tokio::time::Instant::now() < deadline, "the worker never served chat");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tensor =
        serde_json::json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]});
    let answered = client.post(format!("http://{serving}/v2/models/adder/infer")).json(&tensor).send().await.unwrap();
    assert_eq!(answered.status(), 200);
    let text = serde_json::json!({"model": "chat", "prompt": "1, 2, 3,", "max_tokens": 3});
    let answered = client.post(format!("http://{serving}/v1/completions")).json(&text).send().await.unwrap();
    assert_eq!(answered.status(), 200);
    let worker_text = metrics_of(&serving).await;
    lint("the worker", &worker_text);
    let mut names = exported(&worker_text);

    // A training job's rank 0, once it has published a version.
    let job = serde_json::json!({
        "model": {"llama": {"hidden_size": 16, "intermediate_size": 32, "layers": 1, "heads": 2, "context": 16}},
        "data": {"addition": {"max_operand": 9, "train_examples": 200, "eval_examples": 10}},
        "schedule": {"steps": 100000, "global_batch": 8},
        "checkpoint": {"every_steps": 5, "state_dir": dir.path().join("state")},
        "output": {"repository": dir.path().join("trained"), "model": "adder"},
    });
    std::fs::write(dir.path().join("job.json"), job.to_string()).unwrap();
    let progress =
        format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let _training = tokio::process::Command::new(&worker)
        .args(["train", "--config"])
        .arg(dir.path().join("job.json"))
        .env("LANTERN_PROGRESS_ADDRESS", &progress)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let training = loop {
        let text = reqwest::get(format!("http://{progress}/metrics")).await;
        if let Ok(text) = text {
            let text = text.text().await.unwrap();
            if text.contains("lantern_training_published_metric{") {
                break text;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "rank 0 never published a version");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    lint("training rank 0", &training);
    names.extend(exported(&training));

    // The operator, having served an InferenceService (so it split traffic and recorded Events).
    let mut stack = Stack::start().await.unwrap();
    assert!(stack.apply(MODELS_CLAIM).await.unwrap().ok);
    stack.publish_mlp("models", "idle", "2,8,1", 1, &[]).await.unwrap();
    assert!(stack.apply(&claim_service("idle", 1)).await.unwrap().ok);
    let ready =
        |s: &serde_json::Value| s["status"]["served"]["stableVersion"] == 1 || s["status"]["stableVersion"] == 1;
    stack.wait_for("isvc/idle", "a stable version", Duration::from_secs(60), ready).await;
    let address = stack.operator().metrics_address().await.unwrap();
    let mut operator = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !operator.contains("lantern_operator_traffic_percent{") {
        assert!(tokio::time::Instant::now() < deadline, "the operator never exported the traffic split:\n{operator}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        operator = metrics_of(&address).await;
    }
    lint("the operator", &operator);
    names.extend(exported(&operator));

    let mut queries: Vec<(String, String)> = lantern_dashboards::all()
        .into_iter()
        .flat_map(|(file, dashboard)| {
            lantern_dashboards::grafana::expressions(&dashboard).into_iter().map(move |e| (file.to_owned(), e))
        })
        .collect();
    queries.extend(alert_rules().into_iter().map(|(alert, expr)| (format!("alert {alert}"), expr)));
    let mut queried = std::collections::BTreeSet::new();
    for (source, expr) in queries {
        for metric in selected_metrics(&expr) {
            assert!(names.contains(&metric), "{source} queries {metric} ({expr}), which nothing exports: {names:?}");
            queried.insert(metric);
        }
    }
    for metric in [
        "lantern_time_to_first_token_seconds_bucket",
        "lantern_training_loss",
        "lantern_operator_leader",
        "lantern_model_load_failures_total",
    ] {
        assert!(queried.contains(metric), "the selectors were read: {queried:?}");
    }
    stack.stop().await.unwrap();
}
