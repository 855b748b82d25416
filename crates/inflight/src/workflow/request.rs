//! One step of one job as a request: the template rendered over the input line's fields and the outputs of
//! the steps it reads, the step's parameters, and for `output: json` the schema in the form the server
//! understands; and the answer checked back against that schema.

use serde_json::{json, Map, Value};

use super::Step;
use crate::backend::Api;
use crate::job::TemplateError;
use crate::output::answer_output;

/// One step of one job, as read from the store when it is ready.
#[derive(Debug, Clone)]
pub struct Unit {
    /// The job's store sequence number.
    pub seq: i64,
    /// The job's id.
    pub id: String,
    /// The job's input line number.
    pub line: i64,
    /// Index of the step.
    pub step: usize,
    /// The input line's fields (a JSON object, as text).
    pub fields: String,
    /// The job's finished steps as `{name: {output, usage, latency_ms}}` (JSON text).
    pub done: String,
    /// Attempts the step has spent so far (in earlier sessions too).
    pub attempts: u32,
}

/// Renders the request body for `unit`. `reseed` counts the answers refused so far: each retry after an
/// invalid answer asks with another seed, since the same seed would give the same answer.
pub fn render(step: &Step, unit: &Unit, api: Api, reseed: u32) -> Result<String, TemplateError> {
    let mut ctx: Map<String, Value> = serde_json::from_str(&unit.fields).unwrap_or_default();
    ctx.insert("steps".into(), serde_json::from_str(&unit.done).unwrap_or(Value::Object(Map::new())));
    let prompt = step.template.render(&Value::Object(ctx))?;
    let mut messages = Vec::new();
    if let Some(system) = &step.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": prompt}));
    let mut body = step.params.clone();
    body.insert("model".into(), step.model.clone().into());
    body.insert("messages".into(), Value::Array(messages));
    if reseed > 0 {
        let base = body.get("seed").and_then(Value::as_i64).unwrap_or(0);
        body.insert("seed".into(), base.wrapping_add(i64::from(reseed)).into());
    }
    if let Some((schema, _)) = &step.schema {
        let any = schema.as_object().is_some_and(Map::is_empty);
        match (api, any) {
            // Ollama constrains decoding with `format`: a schema, or "json" for any JSON.
            (Api::Ollama, true) => body.insert("format".into(), "json".into()),
            (Api::Ollama, false) => body.insert("format".into(), schema.clone()),
            // llama-server, vLLM and LM Studio take OpenAI's `response_format`.
            (Api::Openai, true) => body.insert("response_format".into(), json!({"type": "json_object"})),
            (Api::Openai, false) => body.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": step.name, "schema": schema, "strict": true}}),
            ),
        };
    }
    Ok(Value::Object(body).to_string())
}

/// The step's output from an answer body: the text, or for `output: json` the parsed and validated JSON.
/// `Err` says why the answer is refused.
pub fn output_of(step: &Step, answer_body: &str) -> Result<Value, String> {
    let body: Value = serde_json::from_str(answer_body).map_err(|e| format!("answer is not JSON: {e}"))?;
    let output = answer_output(&body);
    let Some((_, validator)) = &step.schema else { return Ok(output) };
    let text = output.as_str().unwrap_or_default().trim();
    // Models asked for JSON without constrained decoding like to wrap it in a Markdown fence.
    let text = text.strip_prefix("```json").or_else(|| text.strip_prefix("```")).unwrap_or(text);
    let text = text.strip_suffix("```").unwrap_or(text);
    let value: Value = serde_json::from_str(text).map_err(|e| format!("output is not valid JSON: {e}"))?;
    let errors: Vec<String> = validator.iter_errors(&value).take(3).map(|e| e.to_string()).collect();
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(format!("output does not match the schema: {}", errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::Workflow;

    const FLOW: &str = "steps:\n  a:\n    model: A\n    template: 'Say {{ x }}'\n    seed: 5\n  b:\n    model: B\n    \
        system: sys\n    template: 'Check {{ steps.a.output }}'\n    schema: {type: object, required: [ok]}\n";

    fn unit(step: usize, done: Value) -> Unit {
        Unit {
            seq: 1,
            id: "j".into(),
            line: 1,
            step,
            fields: r#"{"x": "hi"}"#.into(),
            done: done.to_string(),
            attempts: 0,
        }
    }

    #[test]
    fn renders_fields_and_earlier_outputs_with_the_schema_for_each_api() {
        let w = Workflow::parse(FLOW).unwrap();
        let a: Value =
            serde_json::from_str(&render(&w.steps[0], &unit(0, json!({})), Api::Openai, 2).unwrap()).unwrap();
        assert_eq!(a["messages"], json!([{"role": "user", "content": "Say hi"}]));
        assert_eq!((a["model"].as_str(), a["seed"].as_i64()), (Some("A"), Some(7)), "a retry gets another seed");
        let done = json!({"a": {"output": "hello"}});
        let b: Value =
            serde_json::from_str(&render(&w.steps[1], &unit(1, done.clone()), Api::Openai, 0).unwrap()).unwrap();
        assert_eq!(b["messages"][1]["content"], "Check hello");
        assert_eq!(b["response_format"]["json_schema"]["schema"]["required"], json!(["ok"]));
        let o: Value = serde_json::from_str(&render(&w.steps[1], &unit(1, done), Api::Ollama, 0).unwrap()).unwrap();
        assert_eq!(o["format"]["type"], "object");
        assert!(render(&w.steps[1], &unit(1, json!({})), Api::Openai, 0).is_err(), "a missing output is an error");
    }

    #[test]
    fn json_outputs_are_parsed_and_validated() {
        let w = Workflow::parse(FLOW).unwrap();
        let answer = |content: &str| json!({"choices": [{"message": {"content": content}}]}).to_string();
        assert_eq!(output_of(&w.steps[1], &answer("```json\n{\"ok\": 1}\n```")), Ok(json!({"ok": 1})));
        assert!(output_of(&w.steps[1], &answer("{\"ok\": ")).unwrap_err().contains("not valid JSON"));
        assert!(output_of(&w.steps[1], &answer("{\"no\": 1}")).unwrap_err().contains("schema"));
        assert_eq!(output_of(&w.steps[0], &answer("plain")), Ok(json!("plain")));
    }
}
