-- The response cache: one answer per exact request, shared by every run of this user.
CREATE TABLE IF NOT EXISTS responses (
    key BLOB PRIMARY KEY,            -- SHA-256 of the request (see cache::key)
    endpoint TEXT NOT NULL,
    model TEXT,
    status_code INTEGER NOT NULL,
    request_id TEXT,
    body TEXT NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    finish_reason TEXT,
    created_ms INTEGER NOT NULL,
    used_ms INTEGER NOT NULL         -- last time a run took it (prune goes by this)
) WITHOUT ROWID;
