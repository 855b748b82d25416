-- Run before the migrations, under the migration lock: the schema inflight's tables live in, and the record of
-- which migrations a database has had.
CREATE SCHEMA IF NOT EXISTS inflight;
CREATE TABLE IF NOT EXISTS inflight.migrations (
    version    integer     PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
