//! Opaque ids: a prefix and 24 random hex digits. They name rows, never paths: a path under the data directory
//! is made only from an id read back from the metadata, and only after [`is_valid`] checked its shape.

/// The prefix of file ids.
pub const FILE: &str = "file-";
/// The prefix of batch ids.
pub const BATCH: &str = "batch_";

const HEX_DIGITS: usize = 24;

/// A fresh id with `prefix`.
pub fn new(prefix: &str) -> String {
    let bytes: [u8; HEX_DIGITS / 2] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

/// Whether `id` is `prefix` followed by exactly the hex digits [`new`] makes.
pub fn is_valid(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .is_some_and(|h| h.len() == HEX_DIGITS && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_hex_and_nothing_else_passes() {
        let id = new(FILE);
        assert!(is_valid(FILE, &id), "{id}");
        assert_ne!(id, new(FILE));
        assert!(!is_valid(BATCH, &id));
        for bad in ["file-../../etc/passwd", "file-", "file-0123456789abcdef0123456G", "file-0123456789abcdef01234567/"]
        {
            assert!(!is_valid(FILE, bad), "{bad}");
        }
    }
}
