//! Wire compatibility with the stock clients users already run, installed by
//! `scripts/setup-test-deps.sh`: tritonclient's gRPC client (Open Inference Protocol), the KServe
//! SDK (REST with binary tensor data, gRPC) and the OpenAI Python library.

use std::path::PathBuf;
use std::process::Command;

use lantern_proto::lantern::v1::VersionState;

use crate::fixtures::{Harness, infer_request, output_values};

/// The Python site holding `package`, or `None` with a loud message when it is not installed.
fn python_site(package: &str) -> Option<PathBuf> {
    let site = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/python/site");
    if site.join(package).is_dir() {
        return Some(site);
    }
    eprintln!("SKIPPED: {package} is not installed; run scripts/setup-test-deps.sh (the test command does)");
    None
}

/// Runs `tests/serving/<script>` with `args` on the installed site and returns its stdout.
async fn run_python(site: PathBuf, script: &str, args: Vec<String>) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/serving").join(script);
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3").arg(script).args(args).env("PYTHONPATH", site).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "python check failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_talks_to_the_worker_unchanged() {
    let Some(site) = python_site("tritonclient") else { return };
    let harness = Harness::start().await;
    harness.publish("m", 1);
    harness.wait_for("m", 1, VersionState::Available).await;
    let stdout = run_python(site, "tritonclient_check.py", vec![harness.server.local_addr().to_string()]).await;

    // The Python client saw exactly what a Rust client sees.
    let from_python: Vec<f32> = stdout.split_whitespace().map(|v| v.parse().unwrap()).collect();
    let mut request = infer_request("m", "", 2);
    request.inputs[0].contents.as_mut().unwrap().fp32_contents = (0..8).map(|i| i as f32 / 10.0).collect();
    let from_rust = output_values(&harness.grpc().await.model_infer(request).await.unwrap().into_inner());
    for (p, r) in from_python.iter().zip(&from_rust) {
        assert!((p - r).abs() < 1e-5, "python {from_python:?} vs rust {from_rust:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_library_chats_with_the_worker_with_every_parameter_honoured() {
    let Some(site) = python_site("openai") else { return };
    let Some(harness) = crate::llm::serving_smollm2(|_| {}).await else { return };
    let eos = crate::llm::smollm2_tokenizer().eos()[0];
    let args = vec![harness.server.local_addr().to_string(), crate::llm::MODEL.to_owned(), eos.to_string()];
    let report: serde_json::Value = serde_json::from_str(&run_python(site, "openai_check.py", args).await).unwrap();
    assert!(!report["whole"].as_str().unwrap().is_empty(), "{report}");
    assert_eq!(report["streamed"], report["whole"], "greedy: the stream spells the same answer");
    assert_eq!(report["whole_finish"], report["stream_finish"]);
    assert_eq!(report["whole_usage"], report["stream_usage"]);
    assert_eq!(report["completion_tokens"], 4);
    assert_eq!(report["models"], serde_json::json!([crate::llm::MODEL]));

    // Greedy: each chosen token is its own most likely alternative, and the tokens spell the text.
    let logprobs = report["logprobs"].as_array().unwrap();
    assert!(!logprobs.is_empty() && logprobs.len() <= 4, "{report}");
    let mut spelled = Vec::new();
    for entry in logprobs {
        let top = entry["top"].as_array().unwrap();
        assert_eq!(top.len(), 2, "{entry}");
        assert_eq!(top[0][0], entry["token"], "{entry}");
        assert_eq!(top[0][1], entry["logprob"], "{entry}");
        let logprob = entry["logprob"].as_f64().unwrap();
        assert!(logprob <= 0.0 && top[1][1].as_f64().unwrap() <= logprob, "{entry}");
        spelled.extend(entry["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8));
    }
    assert_eq!(String::from_utf8_lossy(&spelled), report["logprobs_text"].as_str().unwrap());
    let streamed: Vec<serde_json::Value> =
        logprobs.iter().map(|e| serde_json::json!([e["token"], e["logprob"]])).collect();
    assert_eq!(report["streamed_logprobs"], serde_json::json!(streamed), "streamed logprobs are the same");
    let legacy = &report["legacy"];
    assert_eq!(legacy["tokens"].as_array().unwrap().len(), 3, "{legacy}");
    assert_eq!(legacy["text_offset"][0], 0, "{legacy}");
    assert!(legacy["top_logprobs"].as_array().unwrap().iter().all(|top| top.as_object().unwrap().len() == 2));
    // echo with logprobs: every prompt token then the generated one, the first without a score.
    let scored = &report["scored"];
    let prompt_tokens = scored["prompt_tokens"].as_u64().unwrap() as usize;
    let tokens: Vec<&str> = scored["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tokens.len(), prompt_tokens + 1, "{scored}");
    assert_eq!(tokens[..prompt_tokens].concat(), "The sky is blue", "{scored}");
    assert!(scored["text"].as_str().unwrap().starts_with("The sky is blue"), "{scored}");
    let logprobs = scored["token_logprobs"].as_array().unwrap();
    assert!(logprobs[0].is_null() && logprobs[1..].iter().all(|l| l.as_f64().unwrap() <= 0.0), "{scored}");
    assert_eq!(scored["text_offset"][prompt_tokens], "The sky is blue".len(), "{scored}");

    // n choices, each indexed, whole and streamed; best_of answers one choice and counts all.
    let many = report["many"].as_array().unwrap();
    assert_eq!(many.iter().map(|c| c[0].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2], "{report}");
    assert!(report["many_usage"].as_u64().unwrap() > 6, "three choices' tokens: {report}");
    assert_eq!(report["many_streamed"].as_object().unwrap().len(), 2, "{report}");
    assert_eq!(report["best"][1], serde_json::Value::Null, "best_of's logprobs are not reported unasked");
    assert!(report["best"][2].as_u64().unwrap() > 4, "{report}");

    // Structured output is JSON matching the schema.
    let person: serde_json::Value = serde_json::from_str(report["structured"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {report}"));
    let fields: Vec<&String> = person.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["name", "age"], "{person}");
    assert!(person["name"].is_string() && person["age"].is_i64(), "{person}");
    assert!(report["json_object"].as_str().unwrap().starts_with('{'), "{report}");

    // Required and named tool calls are calls of the function with arguments matching its schema.
    let called = &report["called"];
    assert_eq!((&called[0], &called[1], &called[2]), (&"tool_calls".into(), &"function".into(), &"get_weather".into()));
    assert!(called[4].as_str().unwrap().starts_with("call_"), "{called}");
    let streamed = &report["streamed_call"];
    assert_eq!((&streamed[0], &streamed[1]), (&"tool_calls".into(), &"get_weather".into()), "{streamed}");
    for arguments in [&called[3], &streamed[2]] {
        let arguments: serde_json::Value = serde_json::from_str(arguments.as_str().unwrap()).unwrap();
        assert!(arguments["city"].is_string() && arguments.as_object().unwrap().len() == 1, "{arguments}");
    }
    assert!(["stop", "length", "tool_calls"].contains(&report["answered"].as_str().unwrap()), "{report}");
    if report["answered"] != "tool_calls" {
        let pieces: Vec<&str> = report["answer"][1].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        assert_eq!(pieces.concat(), report["answer"][0].as_str().unwrap(), "{report}");
        assert!(pieces.len() > 1, "an answer in words is streamed as it comes: {pieces:?}");
    }

    // The biased end-of-sequence token ends the answer at once, after min_tokens, or never.
    assert_eq!(report["ends_now"], serde_json::json!(["stop", 1]));
    assert_eq!(report["ends_later"], serde_json::json!(["stop", 4]));
    assert_eq!(report["never_ends"], serde_json::json!(["length", 5]));
    let [plain, penalized] = [&report["repeating"][0], &report["repeating"][1]];
    assert_ne!(plain, penalized, "penalties steer away from what was generated: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kserve_sdk_sends_binary_tensor_data_and_string_parameters() {
    let Some(site) = python_site("kserve") else { return };
    let Some(harness) = crate::llm::serving_smollm2(|_| {}).await else { return };
    harness.publish("m", 1);
    harness.wait_for("m", 1, VersionState::Available).await;
    let args = vec![harness.server.local_addr().to_string(), "m".to_owned(), crate::llm::MODEL.to_owned()];
    let report: serde_json::Value = serde_json::from_str(&run_python(site, "kserve_check.py", args).await).unwrap();
    assert_eq!(report["binary"], report["json"], "binary data in and out reads as JSON does: {report}");
    assert_eq!(report["binary"].as_array().unwrap().len(), 2, "{report}");
    assert!(report["binary_header"].as_str().is_some_and(|n| n.parse::<usize>().is_ok()), "{report}");
    let body =
        serde_json::json!({"model": crate::llm::MODEL, "prompt": "The sky is", "max_tokens": 4, "temperature": 0});
    let completion: serde_json::Value =
        crate::fixtures::post_json(&harness, "/v1/completions", &body).await.json().await.unwrap();
    let expected = &completion["choices"][0]["text"];
    assert_eq!(&report["grpc_text"][0], expected, "the temperature string was read as 0: {report}");
    assert_eq!(&report["rest_text"][0], expected, "{report}");
}
