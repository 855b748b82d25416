INSERT OR IGNORE INTO bad_lines (line, code, message, out_ord, custom_id) VALUES (?1, ?2, ?3, ?4, ?5)
