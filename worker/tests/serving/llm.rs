//! Language-model serving on the real SmolLM2 GGUF: the OpenAI HTTP API (JSON and SSE), gRPC
//! `Generate`, OIP `ModelInfer` with BYTES text, hot reload under running streams, and every
//! bad-input case, each checked for not disturbing the other streams.

use std::time::Duration;

use lantern_proto::lantern::v1::generate_request::Input;
use lantern_proto::lantern::v1::generation_service_client::GenerationServiceClient;
use lantern_proto::lantern::v1::{self as pb, VersionState};
use lantern_runtime::llm::chat::Message;
use lantern_runtime::llm::codec::TextCodec;
use lantern_runtime::repository::{self, PublishRequest, Repository};
use lantern_serve::engine::EngineSettings;
use serde_json::{Value, json};
use tonic::Code;

use crate::fixtures::{Harness, assert_openai_errors, fast_settings, local_options, post_json};

pub const MODEL: &str = "smollm2";

/// A server with SmolLM2 published as version 1 and available, or `None` when the model is not
/// fetched. `engine` adjusts the continuous-batching settings.
pub async fn serving_smollm2(engine: impl FnOnce(&mut EngineSettings)) -> Option<Harness> {
    let gguf = lantern_runtime::test_models::smollm2_path()?;
    let mut settings = fast_settings();
    settings.engine = EngineSettings { kv_cache_bytes: 64 << 20, ..EngineSettings::default() };
    engine(&mut settings.engine);
    let harness = Harness::start_with(settings, local_options(), |root| {
        publish_gguf(root, &gguf);
    })
    .await;
    harness.wait_for(MODEL, 1, VersionState::Available).await;
    Some(harness)
}

fn publish_gguf(root: &std::path::Path, gguf: &std::path::Path) -> u64 {
    repository::publish(&PublishRequest {
        repository: &Repository::new(root),
        model: MODEL,
        source: gguf,
        version: None,
        metrics: &[],
    })
    .unwrap()
}

fn chat_body(question: &str, max_tokens: u64, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

/// The `data:` payloads of an SSE response, read as they arrive, until the stream ends.
async fn sse_events(mut response: reqwest::Response) -> Vec<String> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            events.extend(event.lines().filter_map(|line| line.strip_prefix("data: ")).map(str::to_owned));
        }
    }
    events
}

/// A greedy chat streamed in the background; resolves to its SSE payloads.
fn spawn_chat_stream(harness: &Harness, question: &str, max_tokens: u64) -> tokio::task::JoinHandle<Vec<String>> {
    let request = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", harness.url()))
        .json(&chat_body(question, max_tokens, true));
    tokio::spawn(async move { sse_events(request.send().await.unwrap()).await })
}

/// The text of the streamed chat chunks.
fn chat_text(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["delta"]["content"].as_str().map(str::to_owned)
        })
        .collect()
}

/// A metric's value for the served version, from `/metrics`.
async fn metric(harness: &Harness, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", harness.url())).await.unwrap().text().await.unwrap();
    let prefix = format!("lantern_{name}{{model=\"{MODEL}\",version=\"1\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .parse()
        .unwrap()
}

/// `lantern_requests_total` of the served version with `code`, and the version's request count
/// in `GetModelStatus` (what the canary gate reads), read together.
async fn counted(harness: &Harness, code: &str) -> (f64, u64) {
    let text = reqwest::get(format!("{}/metrics", harness.url())).await.unwrap().text().await.unwrap();
    let prefix = format!("lantern_requests_total{{model=\"{MODEL}\",version=\"1\",code=\"{code}\"}} ");
    let total = text.lines().find_map(|line| line.strip_prefix(&prefix)).map_or(0.0, |v| v.parse().unwrap());
    let status = harness.version_status(MODEL, 1).await.unwrap();
    (total, status.requests.unwrap_or_default().total)
}

/// Runs `request` and checks it moved the `code` series and the version's stats by exactly one.
async fn counts_once<F: std::future::Future<Output = ()>>(harness: &Harness, code: &str, request: F) {
    let (total, stats) = counted(harness, code).await;
    request.await;
    assert_eq!(counted(harness, code).await, (total + 1.0, stats + 1), "{code}");
}

/// Waits (up to 20 s) until a metric satisfies `done`.
async fn wait_metric(harness: &Harness, name: &str, done: impl Fn(f64) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let value = metric(harness, name).await;
        if done(value) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} stayed at {value}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Prompt tokens of a one-question chat, counted with the model's own template and tokenizer.
fn chat_prompt_tokens(question: &str) -> usize {
    let mut file = std::fs::File::open(lantern_runtime::test_models::smollm2_path().unwrap()).unwrap();
    let metadata = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap().metadata;
    let codec = TextCodec::from_gguf(&metadata).unwrap();
    codec.encode_chat(&[Message::new("user", question)]).unwrap().len()
}

#[tokio::test]
async fn chat_completion_answers_with_the_chat_template_applied_and_usage() {
    let Some(harness) = serving_smollm2(|_| {}).await else { return };
    let response =
        post_json(&harness, "/v1/chat/completions", &chat_body("What is the capital of France?", 12, false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-lantern-model-version"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert!(!body["choices"][0]["message"]["content"].as_str().unwrap().is_empty(), "{body}");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    // ChatML with SmolLM2's default system prompt around the question.
    let prompt = chat_prompt_tokens("What is the capital of France?") as u64;
    assert!(prompt > 20, "the system prompt is part of the template");
    assert_eq!(body["usage"]["prompt_tokens"], prompt, "{body}");
    let completion = body["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&completion));
    assert_eq!(body["usage"]["total_tokens"], prompt + completion);
    let models: Value = reqwest::get(format!("{}/v1/models", harness.url())).await.unwrap().json().await.unwrap();
    assert_eq!(models["data"][0]["id"], MODEL, "{models}");
    // The finished generation counts for the version, as the operator's canary analysis reads it.
    let status = harness.version_status(MODEL, 1).await.unwrap();
    let requests = status.requests.expect("request stats");
    assert_eq!((requests.total, requests.errors), (1, 0));
}

#[tokio::test]
async fn streamed_chat_equals_the_whole_answer_and_concurrent_streams_equal_lone_ones() {
    let Some(harness) = serving_smollm2(|e| e.max_step_tokens = 24).await else { return };
    let questions = ["Name three colours.", "Write a sentence about the sea."];
    let mut alone = Vec::new();
    for question in questions {
        let body: Value =
            post_json(&harness, "/v1/chat/completions", &chat_body(question, 16, false)).await.json().await.unwrap();
        alone.push(body["choices"][0]["message"]["content"].as_str().unwrap().to_owned());
    }
    // Both at once, streamed: the prompts are prefilled in chunks of 24 tokens beside each other.
    let streams = questions.map(|q| {
        let harness_url = harness.url();
        tokio::spawn(async move {
            let response = reqwest::Client::new()
                .post(format!("{harness_url}/v1/chat/completions"))
                .json(&chat_body(q, 16, true))
                .send()
                .await
                .unwrap();
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            sse_events(response).await
        })
    });
    for (stream, lone) in streams.into_iter().zip(&alone) {
        let events = stream.await.unwrap();
        assert_eq!(&chat_text(&events), lone);
        let first: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(events.last().unwrap(), "[DONE]");
        let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 16);
        let finish: Value = serde_json::from_str(&events[events.len() - 3]).unwrap();
        assert_eq!(finish["choices"][0]["finish_reason"], "length");
    }
}

#[tokio::test]
async fn a_repeated_prompt_prefix_comes_from_the_cache_and_answers_the_same() {
    let Some(harness) = serving_smollm2(|_| {}).await else { return };
    let ask = |question: &str| {
        let body = chat_body(question, 12, false);
        let harness = &harness;
        async move { post_json(harness, "/v1/chat/completions", &body).await.json::<Value>().await.unwrap() }
    };
    let question = "What is the capital of France?";
    let first = ask(question).await;
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0, "a fresh server has nothing cached");
    let again = ask(question).await;
    let prompt = chat_prompt_tokens(question);
    // Every full 16-token block but the one holding the last prompt token, whose logits are needed.
    let reusable = (prompt - 1) / 16 * 16;
    assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"], reusable, "{again}");
    assert_eq!(again["choices"][0]["message"], first["choices"][0]["message"], "the cache changes no output");
    // Another question shares the template's system prompt.
    let other = ask("Name a large river.").await;
    let shared = other["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(shared >= 16, "the system prompt's blocks are shared: {other}");
    assert_eq!(metric(&harness, "prefix_cache_hit_tokens_total").await, (reusable as u64 + shared) as f64);
}

#[tokio::test]
async fn grpc_generate_and_oip_bytes_give_the_completions_text() {
    let Some(harness) = serving_smollm2(|_| {}).await else { return };
    let prompt = "The three primary colours are";
    let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 10, "temperature": 0, "stop": ["\n\n"]});
    let completion: Value = post_json(&harness, "/v1/completions", &body).await.json().await.unwrap();
    let expected = completion["choices"][0]["text"].as_str().unwrap().to_owned();
    assert!(!expected.is_empty());

    let mut client = GenerationServiceClient::connect(harness.url()).await.unwrap();
    let request = pb::GenerateRequest {
        model_name: MODEL.into(),
        input: Some(Input::Prompt(prompt.into())),
        max_tokens: Some(10),
        temperature: Some(0.0),
        stop: vec!["\n\n".into()],
        ..Default::default()
    };
    let mut stream = client.generate(request).await.unwrap().into_inner();
    let (mut text, mut ids, mut last) = (String::new(), 0, None);
    while let Some(message) = stream.message().await.unwrap() {
        assert_eq!(message.model_version, 1);
        text.push_str(&message.text);
        ids += message.token_ids.len();
        last = Some(message);
    }
    let last = last.unwrap();
    assert_eq!(text, expected);
    assert_eq!(last.usage.unwrap().completion_tokens as usize, ids);
    assert_ne!(last.finish_reason, pb::FinishReason::Unspecified as i32);

    // Held to a JSON schema over gRPC as well; a schema that is not JSON is INVALID_ARGUMENT.
    let schema = r#"{"type": "object", "properties": {"colours": {"type": "array", "items": {"type": "string"}, "maxItems": 3}}, "required": ["colours"], "additionalProperties": false}"#;
    let constrained = pb::GenerateRequest {
        model_name: MODEL.into(),
        input: Some(Input::Prompt(prompt.into())),
        max_tokens: Some(48),
        temperature: Some(0.0),
        json_schema: Some(schema.into()),
        ..Default::default()
    };
    let mut stream = client.generate(constrained.clone()).await.unwrap().into_inner();
    let mut json = String::new();
    while let Some(message) = stream.message().await.unwrap() {
        json.push_str(&message.text);
    }
    let value: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
    assert!(value["colours"].is_array(), "{value}");
    let broken = pb::GenerateRequest { json_schema: Some("{".into()), ..constrained.clone() };
    assert_eq!(client.generate(broken).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    // n choices from one prefill, each with its own text, finish_reason and usage; greedy, so
    // all three the same.
    let three = pb::GenerateRequest { n: Some(3), json_schema: None, max_tokens: Some(10), ..constrained };
    let mut stream = client.generate(three.clone()).await.unwrap().into_inner();
    let (mut texts, mut finished) = (vec![String::new(); 3], vec![None; 3]);
    while let Some(message) = stream.message().await.unwrap() {
        let choice = message.choice as usize;
        assert!(finished[choice].is_none(), "choice {choice} went on after its end");
        texts[choice].push_str(&message.text);
        if let Some(usage) = message.usage {
            finished[choice] = Some((message.finish_reason, usage.prompt_tokens));
        }
    }
    assert!(!texts[0].is_empty() && texts.iter().all(|t| *t == texts[0]), "{texts:?}");
    let prompt_tokens = finished[0].unwrap().1;
    assert!(finished.iter().all(|f| f.is_some_and(|(_, p)| p == prompt_tokens)), "{finished:?}");
    for n in [0, 129] {
        let refused = client.generate(pb::GenerateRequest { n: Some(n), ..three.clone() }).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "n = {n}");
        assert!(refused.message().starts_with("n "), "{}", refused.message());
    }

    let infer = json!({
        "inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": [prompt]}],
        "parameters": {"max_tokens": 10, "temperature": 0, "stop": "\n\n"},
    });
    let answer: Value = post_json(&harness, &format!("/v2/models/{MODEL}/infer"), &infer).await.json().await.unwrap();
    assert_eq!(answer["outputs"][0]["name"], "text_output", "{answer}");
    assert_eq!(answer["outputs"][0]["data"][0], expected.as_str());
}

#[tokio::test]
async fn completions_take_token_ids_and_lists_of_prompts_and_echo_them() {
    let Some(harness) = serving_smollm2(|_| {}).await else { return };
    let greedy = |prompt: Value, extra: Value| {
        let mut body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 6, "temperature": 0});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let text: Value =
        post_json(&harness, "/v1/completions", &greedy(json!("The sky is"), json!({}))).await.json().await.unwrap();
    let expected = text["choices"][0]["text"].as_str().unwrap().to_owned();
    let prompt_tokens = text["usage"]["prompt_tokens"].as_u64().unwrap();
    // The same prompt as its token ids (SmolLM2 adds no BOS), alone and in a list with text.
    let ids = smollm2_tokenizer().encode("The sky is").unwrap();
    let tokens: Value =
        post_json(&harness, "/v1/completions", &greedy(json!(ids), json!({}))).await.json().await.unwrap();
    assert_eq!(tokens["choices"][0]["text"], expected.as_str());
    let listed = greedy(json!(["The sky is", "Water is"]), json!({"n": 2, "echo": true, "stream": true}));
    let events = sse_events(post_json(&harness, "/v1/completions", &listed).await).await;
    let mut texts = vec![String::new(); 4];
    let mut usage = Value::Null;
    for event in events.iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(event).unwrap();
        for choice in chunk["choices"].as_array().unwrap() {
            texts[choice["index"].as_u64().unwrap() as usize].push_str(choice["text"].as_str().unwrap());
        }
        usage = chunk.get("usage").cloned().unwrap_or(usage);
    }
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(texts[..2], [format!("The sky is{expected}"), format!("The sky is{expected}")], "{texts:?}");
    assert!(texts[2].starts_with("Water is") && texts[2] == texts[3], "{texts:?}");
    let whole = greedy(json!([ids, ids]), json!({"stream_options": null}));
    let whole: Value = post_json(&harness, "/v1/completions", &whole).await.json().await.unwrap();
    assert_eq!(whole["choices"].as_array().unwrap().len(), 2);
    assert_eq!(whole["choices"][1]["index"], 1);
    assert_eq!(whole["usage"]["prompt_tokens"].as_u64(), Some(2 * prompt_tokens), "each prompt counted once");
    assert_eq!(usage, Value::Null, "no usage chunk unasked");
    let outside = greedy(json!([1, 99_999]), json!({}));
    let response = post_json(&harness, "/v1/completions", &outside).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("outside this model's vocabulary"), "{error}");
}

#[tokio::test]
async fn echo_with_logprobs_scores_the_prompt_as_sampling_scores_the_same_token() {
    let Some(harness) = serving_smollm2(|settings| settings.max_step_tokens = 5).await else { return };
    let completion = |prompt: Value, extra: Value| {
        let mut body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 2});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    // The greedy next token after a prompt, with its log-probability as sampled.
    let mut ids = smollm2_tokenizer().encode("The capital of France is the city of").unwrap();
    let next: Value =
        post_json(&harness, "/v1/completions", &completion(json!(ids), json!({}))).await.json().await.unwrap();
    let sampled = next["choices"][0]["logprobs"]["token_logprobs"][0].as_f64().unwrap();
    let next_text = next["choices"][0]["text"].as_str().unwrap().to_owned();
    ids.push(smollm2_tokenizer().encode(&next_text).unwrap()[0]);

    // Scored as part of a prompt (prefilled in 5-token chunks), it gets the same value; twice,
    // the second time with the prompt's blocks in the prefix cache.
    let echo = completion(json!(ids), json!({"echo": true}));
    for _ in 0..2 {
        let scored: Value = post_json(&harness, "/v1/completions", &echo).await.json().await.unwrap();
        let logprobs = &scored["choices"][0]["logprobs"];
        let values = logprobs["token_logprobs"].as_array().unwrap();
        assert_eq!(values.len(), ids.len() + 1, "{scored}");
        assert!(values[0].is_null() && logprobs["top_logprobs"][0].is_null(), "{scored}");
        let last = values[ids.len() - 1].as_f64().unwrap();
        assert!((last - sampled).abs() < 1e-2, "scored {last}, sampled {sampled}");
        assert_eq!(logprobs["top_logprobs"][1].as_object().unwrap().len(), 2, "{scored}");
        let offsets: Vec<u64> =
            logprobs["text_offset"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).collect();
        assert!(offsets[0] == 0 && offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    }

    // Streamed, with two choices: each opens with the echoed prompt and its scores.
    let events = sse_events(
        post_json(&harness, "/v1/completions", &completion(json!(ids), json!({"echo": true, "stream": true, "n": 2})))
            .await,
    )
    .await;
    let mut opened = [false; 2];
    for event in events.iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(event).unwrap();
        for choice in chunk["choices"].as_array().unwrap() {
            let index = choice["index"].as_u64().unwrap() as usize;
            if !opened[index] {
                opened[index] = true;
                assert_eq!(choice["logprobs"]["tokens"].as_array().unwrap().len(), ids.len(), "{chunk}");
                assert!(choice["logprobs"]["token_logprobs"][0].is_null(), "{chunk}");
                assert!(choice["text"].as_str().unwrap().starts_with("The capital of France"), "{chunk}");
            }
        }
    }
    assert_eq!(opened, [true, true]);
}

/// SmolLM2's own tokenizer, read from the GGUF file.
pub fn smollm2_tokenizer() -> lantern_runtime::llm::tokenizer::Tokenizer {
    let path = lantern_runtime::test_models::smollm2_path().unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut std::fs::File::open(path).unwrap()).unwrap();
    lantern_runtime::llm::tokenizer::Tokenizer::from_gguf(&content.metadata).unwrap()
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_frees_its_kv_blocks_at_once() {
    let Some(harness) = serving_smollm2(|_| {}).await else { return };
    let survivor = spawn_chat_stream(&harness, "Count to ten.", 24);
    let leaver = post_json(&harness, "/v1/chat/completions", &chat_body("Tell me a long story.", 200, true)).await;
    wait_metric(&harness, "generated_tokens_total", |tokens| tokens >= 4.0).await;
    assert!(metric(&harness, "kv_cache_blocks_used").await > 0.0);
    // GetModelStatus reports the engine's load (what the operator's autoscaler reads).
    let engine = harness.version_status(MODEL, 1).await.unwrap().engine.unwrap();
    assert!(engine.running_sequences >= 1 && engine.kv_cache_blocks_used > 0, "{engine:?}");
    assert!(engine.kv_cache_blocks_used < engine.kv_cache_blocks_total, "{engine:?}");
    drop(leaver);
    let events = survivor.await.unwrap();
    assert_eq!(events.last().unwrap(), "[DONE]", "the other stream is undisturbed");
    wait_metric(&harness, "kv_cache_blocks_used", |blocks| blocks == 0.0).await;
    assert_eq!(metric(&harness, "running_sequences").await, 0.0);
    let engine = harness.version_status(MODEL, 1).await.unwrap().engine.unwrap();
    assert_eq!((engine.running_sequences, engine.waiting_sequences, engine.kv_cache_blocks_used), (0, 0, 0));
    let generated = metric(&harness, "generated_tokens_total").await;
    assert!(generated < 24.0 + 200.0, "the cancelled stream stopped generating ({generated} tokens)");
}

#[tokio::test]
async fn identical_streams_that_outgrow_the_cache_together_all_finish() {
    // 16 MiB holds 22 blocks of 16 tokens: one 300-token completion fits, four at once do not.
    // Greedy and from one prompt, they write the same tokens, so a preempted one re-prefills
    // onto the blocks of those still running: preempting it frees only what it holds alone.
    let Some(harness) = serving_smollm2(|engine| engine.kv_cache_bytes = 16 << 20).await else { return };
    let body = json!({"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 300, "temperature": 0, "stream": true});
    let streams: Vec<_> = (0..4)
        .map(|_| {
            let request = reqwest::Client::new().post(format!("{}/v1/completions", harness.url())).json(&body);
            tokio::spawn(async move { sse_events(request.send().await.unwrap()).await })
        })
        .collect();
    let all = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(streams)).await;
    let all = all.expect("the streams stalled: the engine preempted for room that never came");
    for events in all {
        let events = events.unwrap();
        assert_eq!(events.last().unwrap(), "[DONE]");
        let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "length");
    }
    assert!(metric(&harness, "preemptions_total").await > 0.0, "the cache was never short");
}

#[tokio::test]
async fn a_new_version_hot_loads_while_streams_finish_on_theirs() {
    let Some(harness) = serving_smollm2(|_| {}).await else { return };
    let mut client = GenerationServiceClient::connect(harness.url()).await.unwrap();
    let request = pb::GenerateRequest {
        model_name: MODEL.into(),
        input: Some(Input::Prompt("Once upon a time".into())),
        max_tokens: Some(48),
        temperature: Some(0.0),
        ..Default::default()
    };
    let mut old = client.generate(request.clone()).await.unwrap().into_inner();
    let first = old.message().await.unwrap().unwrap();
    assert_eq!(first.model_version, 1);
    publish_gguf(harness.repo.path(), &lantern_runtime::test_models::smollm2_path().unwrap());
    harness.server.manager().reconcile_now();
    harness.wait_for(MODEL, 2, VersionState::Available).await;
    let mut new = client.generate(request).await.unwrap().into_inner();
    assert_eq!(new.message().await.unwrap().unwrap().model_version, 2);
    let mut tokens = first.token_ids.len();
    while let Some(message) = old.message().await.unwrap() {
        assert_eq!(message.model_version, 1);
        tokens += message.token_ids.len();
    }
    assert_eq!(tokens, 48, "the stream on version 1 ran to its end");
    harness.wait_for(MODEL, 1, VersionState::End).await;
}

#[tokio::test]
async fn bad_generation_requests_get_precise_errors_and_streams_keep_going() {
    let Some(harness) = serving_smollm2(|_| {}).await else { return };
    let running = spawn_chat_stream(&harness, "Say hello.", 24);
    let long_prompt = "word ".repeat(9000);
    let cases = [
        (json!({"model": MODEL, "prompt": long_prompt}), 400, "context is"),
        (json!({"model": MODEL, "prompt": "Hi", "max_tokens": 9000}), 400, "max_tokens is 9000"),
        (json!({"model": MODEL, "prompt": "Hi", "temperature": -1}), 400, "temperature"),
        (json!({"model": MODEL, "prompt": "Hi", "top_p": 1.5}), 400, "top_p"),
        (json!({"model": MODEL, "prompt": ""}), 400, "prompt is empty"),
        (json!({"model": "nope", "prompt": "Hi"}), 404, "nope"),
        (json!({"model": MODEL, "prompt": "Hi", "n": 0}), 400, "n must be at least 1"),
        (json!({"model": MODEL, "prompt": "Hi", "n": 100, "max_tokens": 100}), 400, "100 choice(s)"),
        (json!({"model": MODEL, "prompt": "Hi", "logprobs": 21}), 400, "at most 20"),
        (json!({"model": MODEL, "prompt": "Hi", "logit_bias": {"999999": 5}}), 400, "outside this model's vocabulary"),
        (json!({"model": MODEL, "prompt": "Hi", "presence_penalty": 2.5}), 400, "between -2 and 2"),
        (json!({"model": MODEL, "prompt": "Hi", "best_of": 2, "stream": true}), 400, "cannot be streamed"),
        (json!({"prompt": "Hi"}), 400, "model"),
        // Near the integer limit: refused, not wrapped into a small number (which froze the engine).
        (json!({"model": MODEL, "prompt": "Once", "max_tokens": u64::MAX}), 400, "leaves"),
        (json!({"model": MODEL, "prompt": "Once", "max_tokens": u64::MAX - 3}), 400, "leaves"),
        (json!({"model": MODEL, "prompt": "Hi", "stop": vec!["x"; 1000]}), 400, "at most 16"),
        (json!({"model": MODEL, "prompt": "Hi", "suffix": "!"}), 400, "fill-in-the-middle"),
        (json!({"model": MODEL, "prompt": []}), 400, "prompt is empty"),
        (json!({"model": MODEL, "prompt": vec!["a"; 65], "n": 2}), 400, "at most 128"),
        (json!({"model": MODEL, "prompt": "x".repeat(5 << 20)}), 413, "length limit"),
    ];
    assert_openai_errors(&harness, "/v1/completions", cases.to_vec()).await;
    let hi = json!([{"role": "user", "content": "Hi"}]);
    let schema = |schema: Value| json!({"type": "json_schema", "json_schema": {"name": "s", "schema": schema}});
    let chat_cases = [
        (json!({"model": MODEL, "messages": hi, "tools": [{"type": "function"}]}), 400, "has no name"),
        (
            json!({"model": MODEL, "messages": hi, "tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]}),
            400,
            "parameters must be a JSON schema",
        ),
        (
            json!({"model": MODEL, "messages": hi, "response_format": schema(json!({"type": "object", "not": {"required": ["a"]}}))}),
            400,
            "Unimplemented keys: [\"not\"]",
        ),
        (json!({"model": MODEL, "messages": hi, "response_format": {"type": "xml"}}), 400, "unknown variant `xml`"),
        (json!({"model": MODEL, "messages": hi, "logprobs": true, "top_logprobs": 21}), 400, "at most 20"),
        (json!({"model": MODEL, "messages": hi, "top_logprobs": 2}), 400, "needs logprobs: true"),
    ];
    assert_openai_errors(&harness, "/v1/chat/completions", chat_cases.to_vec()).await;
    let model: Value =
        reqwest::get(format!("{}/v1/models/{MODEL}", harness.url())).await.unwrap().json().await.unwrap();
    assert_eq!((model["id"].as_str(), model["object"].as_str()), (Some(MODEL), Some("model")));
    assert_eq!(reqwest::get(format!("{}/v1/models/nope", harness.url())).await.unwrap().status(), 404);
    let invalid_utf8 = reqwest::Client::new()
        .post(format!("{}/v1/completions", harness.url()))
        .header("content-type", "application/json")
        .body(b"{\"model\": \"smollm2\", \"prompt\": \"\xff\xfe\"}".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(invalid_utf8.status(), 400);

    let mut client = GenerationServiceClient::connect(harness.url()).await.unwrap();
    let too_long =
        pb::GenerateRequest { model_name: MODEL.into(), input: Some(Input::Prompt(long_prompt)), ..Default::default() };
    let status = client.generate(too_long).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("context is"), "{}", status.message());
    let no_input = pb::GenerateRequest { model_name: MODEL.into(), ..Default::default() };
    assert_eq!(client.generate(no_input).await.unwrap_err().code(), Code::InvalidArgument);

    let events = running.await.unwrap();
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(!chat_text(&events).is_empty());
}

#[tokio::test]
async fn every_generation_request_is_counted_once_in_the_metrics_and_the_versions_stats() {
    let Some(harness) = serving_smollm2(|_| {}).await else { return };
    counts_once(&harness, "OK", async {
        let response = post_json(&harness, "/v1/chat/completions", &chat_body("Hi", 3, false)).await;
        assert_eq!(response.status(), 200);
    })
    .await;
    counts_once(&harness, "OK", async {
        let events = spawn_chat_stream(&harness, "Hi", 3).await.unwrap();
        assert_eq!(events.last().unwrap(), "[DONE]");
    })
    .await;
    counts_once(&harness, "OK", async {
        let request = lantern_proto::inference::ModelInferRequest {
            model_name: MODEL.into(),
            inputs: vec![lantern_proto::inference::model_infer_request::InferInputTensor {
                name: "text_input".into(),
                datatype: "BYTES".into(),
                shape: vec![1],
                contents: Some(lantern_proto::inference::InferTensorContents {
                    bytes_contents: vec![b"Hello".to_vec()],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            parameters: [(
                "max_tokens".to_owned(),
                lantern_proto::inference::InferParameter {
                    parameter_choice: Some(lantern_proto::inference::infer_parameter::ParameterChoice::Int64Param(3)),
                },
            )]
            .into(),
            ..Default::default()
        };
        harness.grpc().await.model_infer(request).await.unwrap();
    })
    .await;
    counts_once(&harness, "INVALID_ARGUMENT", async {
        let long = "word ".repeat(5000);
        let response = post_json(&harness, "/v1/chat/completions", &chat_body(&long, 3, false)).await;
        assert_eq!(response.status(), 400);
    })
    .await;
    counts_once(&harness, "CANCELLED", async {
        let leaver = post_json(&harness, "/v1/chat/completions", &chat_body("Tell me a long story.", 200, true)).await;
        wait_metric(&harness, "running_sequences", |running| running == 1.0).await;
        drop(leaver);
        wait_metric(&harness, "running_sequences", |running| running == 0.0).await;
        // The server sees the disconnect when it next writes; give it that step.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while counted(&harness, "CANCELLED").await.0 == 0.0 {
            assert!(tokio::time::Instant::now() < deadline, "the cancelled stream was never counted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_full_queue_answers_429_with_a_retry_hint() {
    let Some(harness) = serving_smollm2(|e| {
        e.max_running = 1;
        e.max_waiting = 1;
    })
    .await
    else {
        return;
    };
    let running = post_json(&harness, "/v1/chat/completions", &chat_body("Tell me a story.", 64, true)).await;
    // The role chunk comes before admission; the gauge says when the request is running.
    wait_metric(&harness, "running_sequences", |running| running == 1.0).await;
    let waiting = tokio::spawn({
        let url = harness.url();
        async move {
            let response =
                reqwest::Client::new().post(format!("{url}/v1/chat/completions")).json(&chat_body("Hi", 4, false));
            response.send().await.unwrap().status()
        }
    });
    wait_metric(&harness, "waiting_sequences", |waiting| waiting == 1.0).await;
    let (exhausted, stats) = counted(&harness, "RESOURCE_EXHAUSTED").await;
    let refused = post_json(&harness, "/v1/chat/completions", &chat_body("Hi", 4, false)).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(counted(&harness, "RESOURCE_EXHAUSTED").await, (exhausted + 1.0, stats + 1), "counted once");
    assert_eq!(refused.headers()["retry-after"], "1");
    let error: Value = refused.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("queue full"), "{error}");
    drop(running);
    assert_eq!(waiting.await.unwrap(), 200, "the queued request runs once the first one is gone");
}
