INSERT OR IGNORE INTO bad_lines (line, code, message, out_ord) VALUES (?1, ?2, ?3, ?4)
