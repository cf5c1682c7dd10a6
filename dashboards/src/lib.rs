//! Lantern's Grafana dashboards, as code: **serving** (per model and version: requests, errors by
//! code, latency, time to first token and between tokens, tokens/s, queue depth, KV-cache and
//! prefix-cache use, batch sizes, loads, and stable beside canary with the rollouts' steps and
//! verdicts as annotations), **training** (step, loss, learning rate, tokens/s, the newest
//! version's held-out metrics, restarts) and **operator** (reconcile rate and latency, the work
//! queue as reconciles in flight and retries, leadership, Events).
//!
//! `cargo run -p lantern-dashboards --bin dashgen` writes them to `charts/lantern/dashboards/`,
//! which the chart ships as ConfigMaps for Grafana's dashboard sidecar; a test fails when the
//! files differ from what this crate builds, and the e2e suite checks every metric a query names
//! against real scrapes of a worker, a training rank and the operator
//! (`e2e/tests/operations.rs`). The JSON is built with `serde_json` alone: no maintained Rust
//! crate models Grafana's dashboard schema.

pub mod grafana;

use grafana::{Annotation, Panel, Variable, dashboard, query};
use serde_json::Value;

/// Where the chart keeps the dashboards, relative to the workspace.
pub const CHART_DIR: &str = "charts/lantern/dashboards";

/// Every dashboard, by file name.
pub fn all() -> Vec<(&'static str, Value)> {
    vec![("serving.json", serving()), ("training.json", training()), ("operator.json", operator())]
}

/// Requests of the chosen models, per `by` labels, over Grafana's rate interval.
fn rate(metric: &str, filter: &str, by: &str) -> String {
    format!("sum by ({by}) (rate({metric}{{model=~\"$model\"{filter}}}[$__rate_interval]))")
}

/// The `q` quantile of histogram `metric` per version.
fn quantile(q: f64, metric: &str) -> String {
    format!(
        "histogram_quantile({q}, sum by (version, le) (rate({metric}_bucket{{model=~\"$model\"}}[$__rate_interval])))"
    )
}

/// The share `part` is of `whole` per version, each a (metric, extra label matchers) counter.
fn share(title: &'static str, description: &'static str, part: (&str, &str), whole: (&str, &str)) -> Panel {
    let expr = format!("{} / {}", rate(part.0, part.1, "version"), rate(whole.0, whole.1, "version"));
    Panel { title, description, unit: "percentunit", queries: vec![query(expr, "v{{version}}")] }
}

/// p50 and p99 of `metric` per version.
fn latency(title: &'static str, description: &'static str, metric: &str) -> Panel {
    Panel {
        title,
        description,
        unit: "s",
        queries: vec![
            query(quantile(0.5, metric), "p50 v{{version}}"),
            query(quantile(0.99, metric), "p99 v{{version}}"),
        ],
    }
}

pub fn serving() -> Value {
    let variables = [Variable { name: "model", label: "model", metric: "lantern_requests_total" }];
    let rollouts = Annotation {
        name: "Rollouts",
        expr: "sum by (reason) (increase(lantern_operator_events_total{kind=\"InferenceService\", \
               reason=~\"RolloutStarted|TrafficShifted|Promoted|RolledBack\"}[1m])) > 0"
            .to_owned(),
        title: "{{reason}}",
    };
    let panels = [
        Panel {
            title: "Traffic: stable and canary",
            description: "Percent of each model's requests per version, as the operator splits them",
            unit: "percent",
            queries: vec![query(
                "max by (model, version, role) (lantern_operator_traffic_percent{model=~\"$model\"})",
                "{{model}} {{role}} v{{version}}",
            )],
        },
        Panel {
            title: "Requests",
            description: "Requests per second, per version",
            unit: "reqps",
            queries: vec![query(rate("lantern_requests_total", "", "version"), "v{{version}}")],
        },
        Panel {
            title: "Errors by code",
            description: "Requests per second that did not end OK, per version and gRPC code",
            unit: "reqps",
            queries: vec![query(
                rate("lantern_requests_total", ", code!=\"OK\"", "version, code"),
                "v{{version}} {{code}}",
            )],
        },
        share(
            "Error ratio",
            "Share of requests that did not end OK, per version",
            ("lantern_requests_total", ", code!=\"OK\""),
            ("lantern_requests_total", ""),
        ),
        latency("Request latency", "Inside the worker, from routing to response", "lantern_request_duration_seconds"),
        latency(
            "Time to first token",
            "From a generation request's arrival to its first token",
            "lantern_time_to_first_token_seconds",
        ),
        latency(
            "Inter-token latency",
            "Between consecutive tokens of one sequence",
            "lantern_inter_token_latency_seconds",
        ),
        Panel {
            title: "Tokens",
            description: "Prompt tokens prefilled and tokens generated per second, per version",
            unit: "short",
            queries: vec![
                query(rate("lantern_generated_tokens_total", "", "version"), "generated v{{version}}"),
                query(rate("lantern_prompt_tokens_total", "", "version"), "prompt v{{version}}"),
            ],
        },
        Panel {
            title: "Queue depth",
            description: "Generation requests waiting to start and sequences in the batch",
            unit: "short",
            queries: vec![
                query("sum by (version) (lantern_waiting_sequences{model=~\"$model\"})", "waiting v{{version}}"),
                query("sum by (version) (lantern_running_sequences{model=~\"$model\"})", "running v{{version}}"),
            ],
        },
        Panel {
            title: "KV cache in use",
            description: "Share of the KV-cache blocks held by sequences",
            unit: "percentunit",
            queries: vec![query(
                "sum by (version) (lantern_kv_cache_blocks_used{model=~\"$model\"}) / (sum by (version) \
                 (lantern_kv_cache_blocks_used{model=~\"$model\"}) + sum by (version) \
                 (lantern_kv_cache_blocks_free{model=~\"$model\"}))",
                "v{{version}}",
            )],
        },
        share(
            "Prefix-cache hits",
            "Share of prompt tokens whose keys and values came from the prefix cache",
            ("lantern_prefix_cache_hit_tokens_total", ""),
            ("lantern_prompt_tokens_total", ""),
        ),
        Panel {
            title: "Batch size",
            description: "Rows per executed batch of tensor models: mean and p99",
            unit: "short",
            queries: vec![
                query(
                    format!(
                        "{} / {}",
                        rate("lantern_batch_size_rows_sum", "", "version"),
                        rate("lantern_batch_size_rows_count", "", "version")
                    ),
                    "mean v{{version}}",
                ),
                query(quantile(0.99, "lantern_batch_size_rows"), "p99 v{{version}}"),
            ],
        },
        Panel {
            title: "Versions loaded and failed loads",
            description: "Versions available per model, and failed loads per second",
            unit: "short",
            queries: vec![
                query("sum by (model) (lantern_loaded_versions{model=~\"$model\"})", "loaded {{model}}"),
                query(rate("lantern_model_load_failures_total", "", "model, version"), "failed {{model}} v{{version}}"),
            ],
        },
    ];
    dashboard("lantern-serving", "Lantern / Serving", &variables, &[rollouts], &panels)
}

pub fn training() -> Value {
    let variables = [Variable { name: "model", label: "model", metric: "lantern_training_step" }];
    let gauge = |metric: &str| format!("max by (model) ({metric}{{model=~\"$model\"}})");
    let panels = [
        Panel {
            title: "Step",
            description: "Optimizer steps done, of the job's steps",
            unit: "short",
            queries: vec![
                query(gauge("lantern_training_step"), "{{model}}"),
                query(gauge("lantern_training_total_steps"), "{{model}} of"),
            ],
        },
        Panel {
            title: "Loss",
            description: "Mean training loss of the last step over all ranks",
            unit: "short",
            queries: vec![query(gauge("lantern_training_loss"), "{{model}}")],
        },
        Panel {
            title: "Learning rate",
            description: "The schedule's learning rate at the last step",
            unit: "short",
            queries: vec![query(gauge("lantern_training_learning_rate"), "{{model}}")],
        },
        Panel {
            title: "Tokens per second",
            description: "Over all ranks, since the run (or its resume) began",
            unit: "short",
            queries: vec![query(gauge("lantern_training_tokens_per_second"), "{{model}}")],
        },
        Panel {
            title: "Held-out metrics of the newest version",
            description: "eval_loss, eval_accuracy, … of each version as it is published",
            unit: "short",
            queries: vec![
                query(
                    "max by (model, metric) (lantern_training_published_metric{model=~\"$model\"})",
                    "{{model}} {{metric}}",
                ),
                query(gauge("lantern_training_published_version"), "{{model}} version"),
            ],
        },
        Panel {
            title: "Restarts",
            description: "Gang restarts after a rank failed (all jobs)",
            unit: "short",
            queries: vec![query(
                "sum (increase(lantern_operator_events_total{kind=\"TrainingJob\", reason=\"RankFailed\"}[$__rate_interval]))",
                "restarts",
            )],
        },
    ];
    dashboard("lantern-training", "Lantern / Training", &variables, &[], &panels)
}

pub fn operator() -> Value {
    let panels = [
        Panel {
            title: "Reconciles",
            description: "Reconciles per second, by kind and result",
            unit: "ops",
            queries: vec![query(
                "sum by (kind, result) (rate(lantern_operator_reconciles_total[$__rate_interval]))",
                "{{kind}} {{result}}",
            )],
        },
        Panel {
            title: "Reconcile latency",
            description: "p50 and p99 of a reconcile, by kind",
            unit: "s",
            queries: vec![
                query(
                    "histogram_quantile(0.5, sum by (kind, le) (rate(lantern_operator_reconcile_duration_seconds_bucket[$__rate_interval])))",
                    "p50 {{kind}}",
                ),
                query(
                    "histogram_quantile(0.99, sum by (kind, le) (rate(lantern_operator_reconcile_duration_seconds_bucket[$__rate_interval])))",
                    "p99 {{kind}}",
                ),
            ],
        },
        Panel {
            title: "Work queue",
            description: "Reconciles running now, and the errors each retried after 5 s (kube-rs exposes no queue depth)",
            unit: "short",
            queries: vec![
                query("sum by (kind) (lantern_operator_reconciles_in_flight)", "in flight {{kind}}"),
                query(
                    "sum by (kind) (rate(lantern_operator_reconciles_total{result=\"error\"}[$__rate_interval]))",
                    "retries/s {{kind}}",
                ),
            ],
        },
        Panel {
            title: "Leader",
            description: "1 on the replica holding the Lease; exactly one should",
            unit: "short",
            queries: vec![
                query("lantern_operator_leader", "{{instance}}"),
                query("sum (lantern_operator_leader)", "leaders"),
            ],
        },
        Panel {
            title: "Events",
            description: "Events recorded per second, by kind and reason",
            unit: "short",
            queries: vec![query(
                "sum by (kind, reason) (rate(lantern_operator_events_total[$__rate_interval]))",
                "{{kind}} {{reason}}",
            )],
        },
    ];
    dashboard("lantern-operator", "Lantern / Operator", &[], &[], &panels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_holds_what_this_crate_builds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(CHART_DIR);
        for (file, dashboard) in all() {
            // Compared as JSON: the order of keys depends on serde_json's features in the build.
            let checked_in: Option<Value> =
                std::fs::read_to_string(dir.join(file)).ok().and_then(|text| serde_json::from_str(&text).ok());
            assert!(
                checked_in == Some(dashboard),
                "{file} is stale: run `cargo run -p lantern-dashboards --bin dashgen`"
            );
        }
    }

    #[test]
    fn panels_sit_two_to_a_row_and_every_query_is_listed() {
        let serving = serving();
        let panels = serving["panels"].as_array().unwrap();
        assert_eq!(panels[3]["gridPos"], serde_json::json!({"h": 8, "w": 12, "x": 12, "y": 8}));
        let expressions = grafana::expressions(&serving);
        assert!(expressions.contains(&"lantern_requests_total".to_owned()), "the variable's metric");
        assert!(expressions.iter().any(|e| e.contains("lantern_operator_events_total")), "the annotation");
        let queries: usize = panels.iter().map(|p| p["targets"].as_array().unwrap().len()).sum();
        assert_eq!(expressions.len(), queries + 2);
    }
}
