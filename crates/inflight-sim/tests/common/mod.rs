//! Helpers shared by the HTTP tests.

use serde_json::Value;

/// POSTs JSON and returns the status and the parsed body.
pub async fn post(url: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new().post(url).json(body).send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json body"))
}

/// GETs a JSON document.
pub async fn get(url: &str) -> Value {
    reqwest::get(url).await.expect("request").json().await.expect("json body")
}
