-- Migration 4: a bad line's own id (`custom_id`, else `id`) when it has a readable one, so its error record can
-- be matched to the line; NULL when it has none (and for bad lines recorded before this migration).
ALTER TABLE bad_lines ADD COLUMN custom_id TEXT;
