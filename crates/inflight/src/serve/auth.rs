//! API keys: `--api-keys FILE` holds one per line. A request's `Authorization: Bearer KEY` names its owner; the
//! owner is the key's SHA-256 (the key itself is never stored, logged or shown), and each owner sees only its
//! own files and batches. Without a keys file everyone is one owner, `local`, and `serve` listens only on
//! loopback.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::Shared;

/// The owner every request has when there are no keys.
pub const LOCAL: &str = "local";

/// The accepted keys, as their digests.
#[derive(Debug, Default)]
pub struct Keys {
    digests: Option<HashSet<String>>,
}

fn digest(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl Keys {
    /// No keys: every request is `local`'s.
    pub fn none() -> Keys {
        Keys { digests: None }
    }

    /// The keys of `path`: one per line, blank lines and `#` comments skipped. The message never quotes a key.
    pub fn load(path: &Path) -> Result<Keys, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read the keys file {}: {e}", path.display()))?;
        let digests: HashSet<String> =
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(digest).collect();
        if digests.is_empty() {
            return Err(format!("the keys file {} holds no key (one per line)", path.display()));
        }
        Ok(Keys { digests: Some(digests) })
    }

    /// Whether requests need a key.
    pub fn required(&self) -> bool {
        self.digests.is_some()
    }

    /// The owner an `Authorization` header value makes, or why it makes none.
    pub fn owner(&self, header: Option<&str>) -> Result<String, ApiError> {
        let Some(digests) = &self.digests else { return Ok(LOCAL.into()) };
        let Some(value) = header else {
            return Err(ApiError::unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.",
                "missing_api_key",
            ));
        };
        let key = value.strip_prefix("Bearer ").unwrap_or("").trim();
        let d = digest(key);
        match digests.contains(&d) {
            true => Ok(d),
            false => Err(ApiError::unauthorized("Incorrect API key provided.", "invalid_api_key")),
        }
    }
}

/// The owner of a request, from its key; extracting it first refuses a request without a valid key before
/// anything else of it is read.
pub struct Owner(pub String);

impl FromRequestParts<Arc<Shared>> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Shared>) -> Result<Owner, ApiError> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        state.keys.owner(header).map(Owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_owners_without_keeping_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# team\nsk-one\n\n  sk-two  \n").unwrap();
        let keys = Keys::load(&path).unwrap();
        let one = keys.owner(Some("Bearer sk-one")).unwrap();
        assert_ne!(one, keys.owner(Some("Bearer sk-two")).unwrap());
        assert!(!one.contains("sk-one"));
        assert_eq!(keys.owner(None).unwrap_err().status, 401);
        assert_eq!(keys.owner(Some("Bearer sk-three")).unwrap_err().status, 401);
        assert_eq!(keys.owner(Some("sk-one")).unwrap_err().status, 401, "a bare key is not a bearer token");
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(Keys::load(&path).is_err());
        assert_eq!(Keys::none().owner(None).unwrap(), LOCAL);
    }
}
