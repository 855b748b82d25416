//! Prefix-aware order: within each page of pending jobs (a bounded window, so memory stays flat), jobs whose
//! prompts share a long prefix are sent one after another, so a server's prefix cache (llama-server's slots and
//! its prompt cache, vLLM's and SGLang's prefix caches) still holds the shared part when the next one arrives.
//!
//! Sorting the page by its prompts' text does that: strings in lexicographic order put those with the longest
//! common prefix next to each other (a trie's walk), twenty questions about one document end up together, and
//! jobs sharing one instruction block keep it shared. Equal prompts keep their file order (a stable sort). The
//! output files stay in commit order; only the order of sending changes.

use serde_json::Value;

use crate::store::PendingJob;

/// Reorders a page of pending jobs so that prompts sharing a prefix are adjacent.
pub fn by_prefix(page: &mut [PendingJob]) {
    page.sort_by_cached_key(|job| prompt_text(&job.body));
}

/// The text a request's prompt is made of, in the order the server reads it: each chat message's role and
/// content, a completion's prompt, an embedding's input; the body itself when it has none of those (or is not
/// JSON), so no job is ever dropped or refused here.
fn prompt_text(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else { return body.to_owned() };
    let mut text = String::new();
    if let Some(messages) = v["messages"].as_array() {
        for m in messages {
            text.push_str(m["role"].as_str().unwrap_or(""));
            text.push('\u{1}');
            push_content(&mut text, &m["content"]);
            text.push('\u{2}');
        }
        return text;
    }
    for key in ["prompt", "input"] {
        if !v[key].is_null() {
            push_content(&mut text, &v[key]);
            return text;
        }
    }
    body.to_owned()
}

/// A content value as text: a string as it is, a list of parts (or of inputs) one after another.
fn push_content(text: &mut String, content: &Value) {
    match content {
        Value::String(s) => text.push_str(s),
        Value::Array(parts) => {
            for p in parts {
                match p {
                    Value::Object(_) => push_content(text, &p["text"]),
                    other => push_content(text, other),
                }
            }
        }
        Value::Null => {}
        other => text.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Endpoint;
    use serde_json::json;

    fn job(seq: i64, body: Value) -> PendingJob {
        PendingJob {
            seq,
            id: format!("j{seq}"),
            endpoint: Endpoint::Chat,
            body: body.to_string(),
            attempts: 0,
            line: seq,
        }
    }

    fn chat(doc: usize, question: usize) -> Value {
        json!({"model": "m", "messages": [
            {"role": "system", "content": "Answer from the document."},
            {"role": "user", "content": format!("Document {doc}: {}\n\nQuestion {question}?", "text ".repeat(50))}
        ]})
    }

    #[test]
    fn shuffled_families_come_out_together_in_file_order_within_each() {
        // 5 documents × 4 questions, interleaved as a shuffled file would have them.
        let mut page: Vec<PendingJob> = (0..20).map(|i| job(i as i64, chat(i % 5, i / 5))).collect();
        by_prefix(&mut page);
        let docs: Vec<usize> = page.iter().map(|j| j.seq as usize % 5).collect();
        let runs = docs.windows(2).filter(|w| w[0] != w[1]).count() + 1;
        assert_eq!(runs, 5, "each document's questions are adjacent: {docs:?}");
        for family in page.chunks(4) {
            let seqs: Vec<i64> = family.iter().map(|j| j.seq).collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "questions keep their order: {seqs:?}");
        }
        let mut seqs: Vec<i64> = page.iter().map(|j| j.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (0..20).collect::<Vec<_>>(), "every job once");
    }

    #[test]
    fn equal_prompts_keep_file_order_and_an_unreadable_body_is_sorted_by_itself() {
        let mut page = vec![job(1, json!({"prompt": "same"})), job(2, json!({"prompt": "same"}))];
        page.push(PendingJob { body: "not json".into(), ..job(3, json!({})) });
        page.push(job(4, json!({"prompt": "a first"})));
        by_prefix(&mut page);
        assert_eq!(page.iter().map(|j| j.seq).collect::<Vec<_>>(), vec![4, 3, 1, 2]);
    }

    #[test]
    fn the_prompt_text_is_what_the_server_reads_first() {
        assert_eq!(prompt_text(&json!({"prompt": "abc", "model": "z"}).to_string()), "abc");
        assert_eq!(prompt_text(&json!({"input": ["a", "b"]}).to_string()), "ab");
        let parts = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
        assert_eq!(prompt_text(&parts.to_string()), "user\u{1}hi\u{2}");
        // The model comes after the prompt in the body, so it does not split families of the same prompt.
        assert!(prompt_text(&chat(1, 1).to_string()).starts_with("system\u{1}Answer"));
    }
}
