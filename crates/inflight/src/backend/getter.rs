//! Plain HTTP for questions to the server outside the backends' translation: short GETs of what it says about
//! itself (doctor's facts, the busy-count sampler of [`super::busy`]), and raw Ollama requests whose answers
//! doctor needs whole (`load_duration`).

use std::time::Duration;

use serde_json::Value;

use super::ApiKey;

/// A client for one server; any failure reads as "not offered".
#[derive(Clone)]
pub struct Getter {
    client: reqwest::Client,
    base: String,
    api_key: Option<ApiKey>,
}

impl Getter {
    /// A client for `base` with a per-request `timeout`.
    pub fn new(base: &str, api_key: Option<&ApiKey>, timeout: Duration) -> Getter {
        let client = reqwest::Client::builder().timeout(timeout).build().unwrap_or_default();
        Getter { client, base: base.to_owned(), api_key: api_key.cloned() }
    }

    /// The body of a 2xx answer to `GET path`.
    pub async fn text(&self, path: &str) -> Option<String> {
        self.send(self.client.get(format!("{}{path}", self.base))).await
    }

    /// The JSON body of a 2xx answer to `GET path`.
    pub async fn json(&self, path: &str) -> Option<Value> {
        serde_json::from_str(&self.text(path).await?).ok()
    }

    /// The JSON body of a 2xx answer to `POST path` with `body`.
    pub async fn post(&self, path: &str, body: &Value) -> Option<Value> {
        serde_json::from_str(&self.send(self.client.post(format!("{}{path}", self.base)).json(body)).await?).ok()
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Option<String> {
        let resp = ApiKey::authorize(self.api_key.as_ref(), req).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.text().await.ok()
    }
}
