//! The API key: text whose `Debug` shows no secret, so neither a log line, a panic message nor a `{:?}` of the
//! arguments that hold it can print it. It has no `Display`; the text leaves only as the `Authorization`
//! header, marked sensitive so that HTTP logging redacts it too.

use std::fmt;

use reqwest::header::HeaderValue;

/// A bearer token for servers that need one (`--api-key`, `INFLIGHT_API_KEY`).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The key, for the one place that needs its text: the `Authorization` header.
    fn expose(&self) -> &str {
        &self.0
    }

    /// `Bearer KEY`, marked sensitive (reqwest and hyper print sensitive header values as `Sensitive`).
    pub fn bearer(&self) -> Option<HeaderValue> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.expose())).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// Adds the `Authorization` header to `req`.
    pub fn authorize(key: Option<&ApiKey>, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match key.and_then(ApiKey::bearer) {
            Some(value) => req.header(reqwest::header::AUTHORIZATION, value),
            None => req,
        }
    }
}

impl From<String> for ApiKey {
    fn from(key: String) -> ApiKey {
        ApiKey(key)
    }
}

/// How clap reads `--api-key`.
impl std::str::FromStr for ApiKey {
    type Err = std::convert::Infallible;

    fn from_str(key: &str) -> Result<ApiKey, Self::Err> {
        Ok(ApiKey(key.to_owned()))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_the_header_show_no_key() {
        let key: ApiKey = "sk-secret-1".parse().unwrap();
        assert_eq!(format!("{key:?} {:?}", Some(&key)), "ApiKey(redacted) Some(ApiKey(redacted))");
        let header = key.bearer().unwrap();
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains("sk-secret-1"), "{header:?}");
        assert_eq!(header.to_str().unwrap(), "Bearer sk-secret-1", "the server still gets it");
    }
}
