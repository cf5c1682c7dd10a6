//! Sentence embeddings served from the real all-MiniLM-L6-v2 checkpoint, published as is (no
//! manifest): OpenAI `/v1/embeddings` (float and base64), gRPC `Embed`, OIP `ModelInfer` with
//! BYTES texts, and the bad inputs.

use lantern_proto::lantern::v1::embedding_service_client::EmbeddingServiceClient;
use lantern_proto::lantern::v1::{self as pb, VersionState};
use lantern_runtime::repository::{self, PublishRequest, Repository};
use serde_json::{Value, json};
use tonic::Code;

use crate::fixtures::{Harness, assert_openai_errors, post_json};

const MODEL: &str = "minilm";

async fn serving_minilm() -> Option<Harness> {
    let dir = lantern_runtime::test_models::minilm_dir()?;
    let harness = Harness::start().await;
    let request = PublishRequest {
        repository: &Repository::new(harness.repo.path()),
        model: MODEL,
        source: &dir,
        version: None,
        metrics: &[],
    };
    repository::publish(&request).unwrap();
    harness.server.manager().reconcile_now();
    harness.wait_for(MODEL, 1, VersionState::Available).await;
    Some(harness)
}

fn floats(value: &Value) -> Vec<f32> {
    value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

fn decode_base64(text: &str) -> Vec<f32> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let mut bytes = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let n = chunk
            .iter()
            .filter(|&&c| c != b'=')
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | u32::from(value(c)) << (18 - 6 * i));
        let real = chunk.iter().filter(|&&c| c != b'=').count() - 1;
        bytes.extend((0..real).map(|i| (n >> (16 - 8 * i)) as u8));
    }
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

#[tokio::test]
async fn the_three_apis_return_the_same_unit_embeddings() {
    let Some(harness) = serving_minilm().await else { return };
    let texts = ["A cat sits on the mat.", "Stock prices rose today."];
    let response = post_json(&harness, "/v1/embeddings", &json!({"model": MODEL, "input": texts})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-lantern-model-version"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][1]["index"], 1);
    let openai: Vec<Vec<f32>> = (0..2).map(|i| floats(&body["data"][i]["embedding"])).collect();
    assert_eq!(openai[0].len(), 384);
    let tokens = body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(tokens > 10, "{body}");
    assert_eq!(body["usage"]["total_tokens"], tokens);

    let base64: Value =
        post_json(&harness, "/v1/embeddings", &json!({"model": MODEL, "input": texts[0], "encoding_format": "base64"}))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(decode_base64(base64["data"][0]["embedding"].as_str().unwrap()), openai[0]);

    // Token ids, as the model's tokenizer spells "hello" ([CLS] hello [SEP]), one list or several.
    let harness = &harness;
    let embed = |input: Value| async move {
        let body: Value =
            post_json(harness, "/v1/embeddings", &json!({"model": MODEL, "input": input})).await.json().await.unwrap();
        (floats(&body["data"][0]["embedding"]), body["usage"]["prompt_tokens"].clone(), body["data"].clone())
    };
    let (from_text, text_tokens, _) = embed(json!("hello")).await;
    let (from_ids, id_tokens, _) = embed(json!([101, 7592, 102])).await;
    let (_, _, lists) = embed(json!([[101, 7592, 102], [101, 102]])).await;
    assert_eq!((from_ids.clone(), id_tokens), (from_text, text_tokens));
    assert_eq!(floats(&lists[0]["embedding"]), from_ids);
    assert_eq!(lists.as_array().unwrap().len(), 2);

    let mut client = EmbeddingServiceClient::connect(harness.url()).await.unwrap();
    let request =
        pb::EmbedRequest { model_name: MODEL.into(), texts: texts.map(String::from).to_vec(), ..Default::default() };
    let grpc = client.embed(request).await.unwrap().into_inner();
    assert_eq!(grpc.model_version, 1);
    assert_eq!(u64::from(grpc.prompt_tokens), tokens);
    for (from_grpc, from_http) in grpc.embeddings.iter().zip(&openai) {
        assert_eq!(&from_grpc.values, from_http);
    }

    let infer = json!({"inputs": [{"name": "text_input", "shape": [2], "datatype": "BYTES", "data": texts}]});
    let answer: Value = post_json(harness, &format!("/v2/models/{MODEL}/infer"), &infer).await.json().await.unwrap();
    assert_eq!(answer["outputs"][0]["name"], "embedding", "{answer}");
    assert_eq!(answer["outputs"][0]["shape"], json!([2, 384]));
    assert_eq!(floats(&answer["outputs"][0]["data"])[384..], openai[1][..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_share_forward_passes_and_get_what_each_would_alone() {
    let Some(harness) = serving_minilm().await else { return };
    let texts: Vec<String> =
        (0..24).map(|i| format!("Sentence number {i} is about {}.", ["cats", "stocks", "rain"][i % 3])).collect();
    let embed = |text: String| {
        let harness = &harness;
        async move {
            let body: Value = post_json(harness, "/v1/embeddings", &json!({"model": MODEL, "input": text}))
                .await
                .json()
                .await
                .unwrap();
            floats(&body["data"][0]["embedding"])
        }
    };
    let mut alone = Vec::new();
    for text in &texts {
        alone.push(embed(text.clone()).await);
    }
    let metrics = || async {
        let text = reqwest::get(format!("{}/metrics", harness.url())).await.unwrap().text().await.unwrap();
        let value = |series: &str| -> f64 {
            text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
        };
        (
            value(r#"lantern_batch_size_rows_sum{model="minilm",version="1"}"#),
            value(r#"lantern_batch_size_rows_count{model="minilm",version="1"}"#),
        )
    };
    let (rows_before, passes_before) = metrics().await;
    assert_eq!(rows_before, passes_before, "one text per pass when requests come one at a time");
    let together = futures::future::join_all(texts.iter().cloned().map(embed)).await;
    for (i, (shared, own)) in together.iter().zip(&alone).enumerate() {
        let gap = shared.iter().zip(own).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(gap < 1e-5, "text {i} differs by {gap} in a shared pass");
    }
    let (rows, passes) = metrics().await;
    assert_eq!(rows - rows_before, texts.len() as f64);
    assert!(
        passes - passes_before < texts.len() as f64,
        "24 concurrent requests took {} passes",
        passes - passes_before
    );
}

#[tokio::test]
async fn bad_embedding_requests_get_precise_errors() {
    let Some(harness) = serving_minilm().await else { return };
    let cases = [
        (json!({"model": MODEL, "input": []}), 400, "no input"),
        (json!({"model": MODEL, "input": ["fine", ""]}), 400, "input 1 is empty"),
        (json!({"model": MODEL, "input": [[101, 102], []]}), 400, "input 1 is empty"),
        (json!({"model": MODEL, "input": [101, 40000, 102]}), 400, "token 40000"),
        (json!({"model": MODEL, "input": [vec![101; 300]]}), 400, "at most 256"),
        (json!({"model": MODEL, "input": [101, -1]}), 400, "input"),
        (json!({"model": MODEL, "input": "word ".repeat(300)}), 400, "at most 256"),
        (json!({"model": MODEL, "input": "x", "encoding_format": "int8"}), 400, "encoding_format"),
        (json!({"model": "nope", "input": "x"}), 404, "nope"),
        (json!({"model": MODEL}), 400, "input"),
        (json!({"model": MODEL, "input": vec!["x"; 2049]}), 400, "at most 2048"),
        (json!({"model": MODEL, "input": "x", "dimensions": 64}), 400, "dimensions"),
    ];
    assert_openai_errors(&harness, "/v1/embeddings", cases.to_vec()).await;
    // A generation request to an embedding model is refused, and the model keeps serving.
    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    let refused = post_json(&harness, "/v1/chat/completions", &chat).await;
    assert_eq!(refused.status(), 400);
    let mut client = EmbeddingServiceClient::connect(harness.url()).await.unwrap();
    let empty = pb::EmbedRequest { model_name: MODEL.into(), ..Default::default() };
    assert_eq!(client.embed(empty).await.unwrap_err().code(), Code::InvalidArgument);
    let ok = post_json(&harness, "/v1/embeddings", &json!({"model": MODEL, "input": "still here"})).await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn a_request_larger_than_one_batch_answers_in_order_as_if_each_text_were_alone() {
    let Some(harness) = serving_minilm().await else { return };
    // 40 texts (more than the 32 of one batch) of lengths in no particular order.
    let texts: Vec<String> = (0..40).map(|i| format!("sentence {i} {}", "word ".repeat((i * 7) % 13))).collect();
    let body: Value =
        post_json(&harness, "/v1/embeddings", &json!({"model": MODEL, "input": texts})).await.json().await.unwrap();
    for (i, text) in texts.iter().enumerate().step_by(9) {
        assert_eq!(body["data"][i]["index"], i);
        let alone: Value =
            post_json(&harness, "/v1/embeddings", &json!({"model": MODEL, "input": text})).await.json().await.unwrap();
        let (batched, alone) = (floats(&body["data"][i]["embedding"]), floats(&alone["data"][0]["embedding"]));
        let largest = batched.iter().zip(&alone).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(largest < 1e-4, "text {i} differs by {largest} batched");
    }
}
