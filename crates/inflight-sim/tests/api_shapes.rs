//! The JSON shapes of both APIs, as clients of the real servers expect them.

mod common;

use common::{get, post};
use inflight_sim::{Api, Profile, SimConfig, SimServer};
use serde_json::{json, Value};

fn fast(p: Profile) -> SimConfig {
    SimConfig::profile(p).with_time_scale(100.0)
}

#[tokio::test]
async fn openai_chat_completion_and_stream() {
    let server = SimServer::start(fast(Profile::Lanes4)).await.unwrap();
    let url = format!("{}/v1/chat/completions", server.url());
    let req =
        json!({"model": "m", "messages": [{"role": "user", "content": "Hello there, simulator"}], "max_tokens": 5});
    let (status, v) = post(&url, &req).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "m");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"].as_str().unwrap().split_whitespace().count(), 5);
    assert_eq!(choice["finish_reason"], "length");
    let usage = &v["usage"];
    assert_eq!(usage["completion_tokens"], 5);
    assert_eq!(usage["prompt_tokens"], 6);
    assert_eq!(usage["total_tokens"], 11);

    let (_, v) = post(&url, &json!({"messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 64);
    assert_eq!(v["model"], "sim-model");

    let mut stream_req = req.clone();
    stream_req["stream"] = true.into();
    let text = reqwest::Client::new().post(&url).json(&stream_req).send().await.unwrap().text().await.unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("SSE data line"))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks.len(), 6);
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert!(chunks[..5].iter().all(|c| c["choices"][0]["delta"]["content"].is_string()));
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[5]["usage"]["completion_tokens"], 5);

    let stats = server.stats();
    assert_eq!((stats.requests, stats.ok, stats.completion_tokens), (3, 3, 74));
    server.shutdown().await;
}

#[tokio::test]
async fn openai_completions_embeddings_and_metadata() {
    let server = SimServer::start(fast(Profile::Lanes4)).await.unwrap();
    let base = server.url();
    let (status, v) =
        post(&format!("{base}/v1/completions"), &json!({"model": "m", "prompt": "Once upon", "max_tokens": 3})).await;
    assert_eq!(status, 200);
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["choices"][0]["text"].as_str().unwrap().split_whitespace().count(), 3);

    let (status, v) = post(&format!("{base}/v1/embeddings"), &json!({"model": "m", "input": ["a", "bb"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(v["usage"]["prompt_tokens"], v["usage"]["total_tokens"]);

    assert_eq!(get(&format!("{base}/health")).await, json!({"status": "ok"}));
    assert_eq!(get(&format!("{base}/props")).await["total_slots"], 4);
    assert_eq!(get(&format!("{base}/v1/models")).await["data"][0]["id"], "sim-model");

    let resp =
        reqwest::Client::new().post(format!("{base}/v1/chat/completions")).body("{not json").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    server.shutdown().await;
}

#[tokio::test]
async fn ollama_chat_generate_embed_and_model_residency() {
    let cfg = fast(Profile::Lanes4).with_api(Api::Ollama);
    let server = SimServer::start(cfg).await.unwrap();
    let base = server.url();
    assert_eq!(reqwest::get(&base).await.unwrap().text().await.unwrap(), "Ollama is running");
    assert_eq!(get(&format!("{base}/api/version")).await["version"], "0.12.0");
    assert_eq!(get(&format!("{base}/api/tags")).await["models"][0]["name"], "sim-model:latest");

    let req = json!({
        "model": "sim-model", "stream": false,
        "messages": [{"role": "user", "content": "why is the sky blue?"}],
        "options": {"num_predict": 7, "temperature": 0.2, "seed": 1},
    });
    let (status, v) = post(&format!("{base}/api/chat"), &req).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "sim-model");
    assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["message"]["role"], "assistant");
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], "length");
    assert_eq!(v["eval_count"], 7);
    assert_eq!(v["prompt_eval_count"], 5);
    let load = v["load_duration"].as_u64().unwrap();
    assert!(load >= 400_000_000, "first request pays the load: {v}");
    for key in ["total_duration", "prompt_eval_duration", "eval_duration"] {
        assert!(v[key].as_u64().unwrap() > 0, "{key}: {v}");
    }
    let (_, again) = post(&format!("{base}/api/chat"), &req).await;
    assert_eq!(again["load_duration"], 0);

    // Streaming is Ollama's default: NDJSON lines, the last one done.
    let text = reqwest::Client::new()
        .post(format!("{base}/api/generate"))
        .json(&json!({"model": "sim-model", "prompt": "hi", "options": {"num_predict": 4}}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5);
    assert!(lines[..4].iter().all(|l| l["done"] == false && l["response"].is_string()));
    assert_eq!(lines[4]["done"], true);
    assert_eq!(lines[4]["eval_count"], 4);

    let (status, v) =
        post(&format!("{base}/api/embed"), &json!({"model": "sim-model", "input": ["x", "y", "z"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["embeddings"].as_array().unwrap().len(), 3);
    assert!(v["prompt_eval_count"].is_u64() && v["total_duration"].is_u64());

    let ps = get(&format!("{base}/api/ps")).await;
    assert_eq!(ps["models"][0]["name"], "sim-model:latest");
    assert!(ps["models"][0]["expires_at"].is_string());

    // A different context size restarts the runner.
    let mut bigger = req.clone();
    bigger["options"]["num_ctx"] = 8192.into();
    let (_, v) = post(&format!("{base}/api/chat"), &bigger).await;
    assert!(v["load_duration"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(server.stats().model_loads, 2);

    // keep_alive 0 unloads as soon as the request is done.
    let mut unload = req.clone();
    unload["keep_alive"] = 0.into();
    unload["options"]["num_ctx"] = 8192.into();
    post(&format!("{base}/api/chat"), &unload).await;
    assert_eq!(get(&format!("{base}/api/ps")).await["models"], json!([]));
    server.shutdown().await;
}

#[tokio::test]
async fn missing_models_answer_404_in_each_api() {
    let missing = vec!["ghost".to_string()];
    let server = SimServer::start(fast(Profile::Serial).with_missing_models(missing.clone())).await.unwrap();
    let (status, v) =
        post(&format!("{}/v1/chat/completions", server.url()), &json!({"model": "ghost", "messages": []})).await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["message"], "model 'ghost' not found");
    assert_eq!(server.stats().not_found, 1);
    server.shutdown().await;

    let cfg = fast(Profile::Serial).with_api(Api::Ollama).with_missing_models(missing);
    let server = SimServer::start(cfg).await.unwrap();
    let (status, v) =
        post(&format!("{}/api/chat", server.url()), &json!({"model": "ghost", "messages": [], "stream": false})).await;
    assert_eq!(status, 404);
    assert_eq!(v, json!({"error": "model \"ghost\" not found, try pulling it first"}));
    server.shutdown().await;
}

#[tokio::test]
async fn api_key_is_required_when_configured() {
    let cfg = SimConfig::zero_latency().with_api_key(Some("sekret".into()));
    let server = SimServer::start(cfg).await.unwrap();
    let url = format!("{}/v1/chat/completions", server.url());
    let body = json!({"messages": [{"role": "user", "content": "x"}]});
    let client = reqwest::Client::new();
    let denied = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(denied.status().as_u16(), 401);
    let allowed = client.post(&url).bearer_auth("sekret").json(&body).send().await.unwrap();
    assert_eq!(allowed.status().as_u16(), 200);
    assert_eq!(server.stats().unauthorized, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn json_answers_ignore_the_schema_and_are_invalid_for_a_seeded_share_of_requests() {
    for api in [Api::OpenAi, Api::Ollama] {
        let cfg = fast(Profile::Lanes4).with_api(api).with_json_answers(0.2).with_seed(7);
        let server = SimServer::start(cfg).await.unwrap();
        let (path, content) = match api {
            Api::OpenAi => ("/v1/chat/completions", "/choices/0/message/content"),
            Api::Ollama => ("/api/chat", "/message/content"),
        };
        let mut invalid = 0;
        for i in 0..200 {
            let req = json!({"model": "sim-model", "messages": [{"role": "user", "content": format!("q{i}")}],
                             "max_tokens": 4, "stream": false, "format": {"type": "object"}});
            let (status, v) = post(&format!("{}{path}", server.url()), &req).await;
            assert_eq!(status, 200, "{v}");
            let text = v.pointer(content).and_then(Value::as_str).unwrap().to_owned();
            match serde_json::from_str::<Value>(&text) {
                Ok(answer) => assert!(answer["answer"].is_string(), "{answer}"),
                Err(_) => invalid += 1,
            }
        }
        assert_eq!(server.stats().invalid_json, invalid, "the counter counts what was sent");
        assert!((20..=60).contains(&invalid), "about a fifth invalid: {invalid}");
        server.shutdown().await;
    }
}
