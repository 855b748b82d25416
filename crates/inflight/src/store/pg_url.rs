//! A PostgreSQL state URL, `postgres://USER[:PASSWORD]@HOST[:PORT]/DB?run=NAME`: the connection settings and
//! the run's name. Its `Display` and `Debug` show `***` for the password, so neither a log line, an error nor a
//! `{:?}` of something that holds it can print it; the password leaves only in the connection's handshake.

use std::fmt;
use std::str::FromStr;

use super::StoreError;

/// Where a shared run's state lives, and which run.
#[derive(Clone)]
pub struct PgUrl {
    config: postgres::Config,
    run: String,
    /// The URL with its password replaced by `***`.
    shown: String,
}

/// The longest run name taken (a name is a row's key, and is shown in `status`).
const MAX_RUN: usize = 100;

impl PgUrl {
    /// Whether `text` names a PostgreSQL state (rather than a state file's path).
    pub fn is_postgres(text: &str) -> bool {
        ["postgres://", "postgresql://"]
            .iter()
            .any(|scheme| text.get(..scheme.len()).is_some_and(|s| s.eq_ignore_ascii_case(scheme)))
    }

    /// The PostgreSQL state a `--state` value names, if it names one (else it is a state file's path).
    pub fn from_state(state: &std::path::Path) -> Result<Option<PgUrl>, StoreError> {
        match state.to_str().filter(|s| PgUrl::is_postgres(s)) {
            Some(text) => PgUrl::parse(text).map(Some),
            None => Ok(None),
        }
    }

    /// Parses a state URL. The run (`run=NAME`: letters, digits, `.`, `_`, `-`) is required; other query
    /// parameters are PostgreSQL's own connection settings (`sslmode`, `connect_timeout`, …). An error never
    /// repeats the URL, which may hold a password.
    pub fn parse(text: &str) -> Result<PgUrl, StoreError> {
        let bad = |why: String| StoreError::BadUrl(format!("{why} (expected postgres://USER@HOST/DB?run=NAME)"));
        if !PgUrl::is_postgres(text) {
            return Err(bad("the state URL must start with postgres://".into()));
        }
        let mut url = url::Url::parse(text).map_err(|e| bad(format!("the state URL is not a URL: {e}")))?;
        let mut shown = url.clone();
        let mut run = None;
        let mut rest = Vec::new();
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "run" => run = Some(value.into_owned()),
                _ => rest.push((key.into_owned(), value.into_owned())),
            }
        }
        let run = run.ok_or_else(|| bad("the state URL names no run (add ?run=NAME)".into()))?;
        let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if run.is_empty() || run.len() > MAX_RUN || !run.chars().all(name_ok) {
            return Err(bad(format!("the run name {run:?} is not 1 to {MAX_RUN} letters, digits, '.', '_' or '-'")));
        }
        if rest.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(&rest);
        }
        let config = postgres::Config::from_str(url.as_str()).map_err(|e| {
            bad(format!("the state URL's settings are not PostgreSQL's: {}", e.to_string().replace(text, "…")))
        })?;
        if shown.password().is_some() {
            // Setting a password fails only on URLs that cannot have one, which this one, having one, is not.
            let _ = shown.set_password(Some("***"));
        }
        Ok(PgUrl { config, run, shown: shown.to_string() })
    }

    /// The run's name.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The connection settings (the password among them: for the connection alone).
    pub(super) fn config(&self) -> &postgres::Config {
        &self.config
    }
}

impl FromStr for PgUrl {
    type Err = StoreError;

    fn from_str(text: &str) -> Result<PgUrl, StoreError> {
        PgUrl::parse(text)
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({})", self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_shown_as_stars_and_the_run_is_taken_out() {
        let url = PgUrl::parse("postgres://ana:s3cret-pw@db.local:5433/jobs?run=night-1&connect_timeout=5").unwrap();
        assert_eq!(url.run(), "night-1");
        assert_eq!(url.to_string(), "postgres://ana:***@db.local:5433/jobs?run=night-1&connect_timeout=5");
        let debug = format!("{url:?} {:?}", Some(&url));
        assert!(!debug.contains("s3cret-pw"), "{debug}");
        assert_eq!(url.config().get_user(), Some("ana"));
        assert_eq!(url.config().get_dbname(), Some("jobs"));
        assert_eq!(url.config().get_password(), Some(&b"s3cret-pw"[..]), "the connection still gets it");
        assert_eq!(url.config().get_connect_timeout(), Some(&std::time::Duration::from_secs(5)));
    }

    #[test]
    fn a_url_without_a_password_is_shown_as_given() {
        let url = PgUrl::parse("postgresql://ana@127.0.0.1/jobs?run=r").unwrap();
        assert_eq!(url.to_string(), "postgresql://ana@127.0.0.1/jobs?run=r");
    }

    #[test]
    fn bad_urls_are_refused_without_repeating_the_password() {
        for text in [
            "postgres://ana:s3cret-pw@host/db",
            "postgres://ana:s3cret-pw@host/db?run=",
            "postgres://ana:s3cret-pw@host/db?run=a%20b",
            "postgres://ana:s3cret-pw@host:notaport/db?run=a",
            "postgres://ana:s3cret-pw@host/db?run=a&nosuchsetting=1",
            "mysql://ana:s3cret-pw@host/db?run=a",
        ] {
            let err = PgUrl::parse(text).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(matches!(err, StoreError::BadUrl(_)), "{text}: {shown}");
            assert!(!shown.contains("s3cret-pw"), "{text}: {shown}");
        }
    }

    #[test]
    fn postgres_urls_are_told_from_paths() {
        assert!(PgUrl::is_postgres("postgres://h/db?run=a"));
        assert!(PgUrl::is_postgres("PostgreSQL://h/db?run=a"));
        assert!(!PgUrl::is_postgres("out.inflight.db"));
        assert!(!PgUrl::is_postgres("postgres"));
    }
}
