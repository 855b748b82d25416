//! Reading FLOW.yaml: the steps, in file order, with the line each came from.
//!
//! The YAML is walked as a marked tree (marked-yaml) rather than deserialized with serde, for two reasons:
//! every error can name its line, and plain scalars get YAML's types (`0.2` a number, `"0.2"` a string) where
//! they become JSON (generation parameters, the JSON Schema).

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::Node;
use serde_json::{Map, Value};

use super::WorkflowError;

/// One step as written in the file, before its template is compiled and its dependencies are found.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSpec {
    /// The step's name (its key under `steps`).
    pub name: String,
    /// Line of the step's key.
    pub line: usize,
    /// `model`.
    pub model: String,
    /// `template` source.
    pub template: String,
    /// Line where the template's text starts.
    pub template_line: usize,
    /// `system`.
    pub system: Option<String>,
    /// `max_tokens`, `temperature`, `seed` and everything under `params`, as request fields.
    pub params: Map<String, Value>,
    /// `server`: the URL of one of the `--server` flags.
    pub server: Option<String>,
    /// `schema` (implies `output: json`) or `{}` for `output: json` without one.
    pub json_schema: Option<Value>,
}

const STEP_KEYS: &[&str] =
    &["model", "template", "system", "max_tokens", "temperature", "seed", "params", "server", "output", "schema"];

fn line_of(node: &Node) -> usize {
    node.span().start().map(|m| m.line()).unwrap_or(0)
}

fn scalar_line(s: &MarkedScalarNode) -> usize {
    s.span().start().map(|m| m.line()).unwrap_or(0)
}

fn err(line: usize, message: impl Into<String>) -> WorkflowError {
    WorkflowError::Invalid { line, message: message.into() }
}

/// Parses the text of a workflow file into its steps, in file order.
pub fn parse(text: &str) -> Result<Vec<StepSpec>, WorkflowError> {
    // Quoted scalars stay strings; a step named twice is an error, not a silent override.
    let options = marked_yaml::LoaderOptions::default().prevent_coercion(true).error_on_duplicate_keys(true);
    let root = marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| {
        let message = e.to_string();
        // marked-yaml prefixes its message with `source:line:column: `; keep the line, drop the rest.
        let line = message.split(':').nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0);
        err(line, format!("not valid YAML: {message}"))
    })?;
    let root = root.as_mapping().ok_or_else(|| err(1, "the workflow must be a mapping with `steps:`"))?;
    for (key, _) in root.iter() {
        if key.as_str() != "steps" {
            return Err(err(scalar_line(key), format!("unknown key {:?} (a workflow has `steps:`)", key.as_str())));
        }
    }
    let steps = root.get_node("steps").ok_or_else(|| err(1, "the workflow has no `steps:`"))?;
    let steps = steps.as_mapping().ok_or_else(|| err(line_of(steps), "`steps:` must map step names to steps"))?;
    if steps.is_empty() {
        return Err(err(line_of(&Node::Mapping(steps.clone())), "`steps:` is empty"));
    }
    steps.iter().map(|(name, node)| step(name, node)).collect()
}

fn step(name: &MarkedScalarNode, node: &Node) -> Result<StepSpec, WorkflowError> {
    let line = scalar_line(name);
    let name = name.as_str().to_owned();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(err(line, format!("step name {name:?}: use letters, digits and `_` (templates say steps.NAME)")));
    }
    let map = node.as_mapping().ok_or_else(|| err(line, format!("step {name}: must be a mapping")))?;
    for (key, _) in map.iter() {
        if !STEP_KEYS.contains(&key.as_str()) {
            return Err(err(
                scalar_line(key),
                format!("step {name}: unknown key {:?} (known: {})", key.as_str(), STEP_KEYS.join(", ")),
            ));
        }
    }
    let text = |key: &str| -> Result<Option<(String, usize)>, WorkflowError> {
        match map.get_node(key) {
            None => Ok(None),
            Some(Node::Scalar(s)) => Ok(Some((s.as_str().to_owned(), scalar_line(s)))),
            Some(other) => Err(err(line_of(other), format!("step {name}: `{key}` must be text"))),
        }
    };
    let required = |key: &str| -> Result<(String, usize), WorkflowError> {
        text(key)?.ok_or_else(|| err(line, format!("step {name}: `{key}` is required")))
    };
    let (model, _) = required("model")?;
    let (template, template_line) = required("template")?;
    let mut params = Map::new();
    for key in ["max_tokens", "temperature", "seed"] {
        if let Some(v) = map.get_node(key) {
            let value = to_json(v);
            if !value.is_number() {
                return Err(err(line_of(v), format!("step {name}: `{key}` must be a number")));
            }
            params.insert(key.into(), value);
        }
    }
    if let Some(p) = map.get_node("params") {
        match to_json(p) {
            Value::Object(extra) => params.extend(extra),
            _ => return Err(err(line_of(p), format!("step {name}: `params` must be a mapping"))),
        }
    }
    let schema = map.get_node("schema");
    let json_schema = match text("output")? {
        Some((o, _)) if o == "json" => Some(schema.map(to_json).unwrap_or(Value::Object(Map::new()))),
        None => schema.map(to_json),
        Some((o, _)) if o == "text" && schema.is_none() => None,
        Some((o, l)) => {
            return Err(err(l, format!("step {name}: `output: {o}` (use `text`, or `json` with a schema)")))
        }
    };
    if let Some(schema) = &json_schema {
        jsonschema::validator_for(schema).map_err(|e| {
            err(map.get_node("schema").map(line_of).unwrap_or(line), format!("step {name}: bad JSON Schema: {e}"))
        })?;
    }
    let system = text("system")?.map(|(s, _)| s);
    let server = text("server")?.map(|(s, _)| s);
    Ok(StepSpec { name, line, model, template, template_line, system, params, server, json_schema })
}

/// A YAML node as JSON, with YAML's types for plain scalars.
fn to_json(node: &Node) -> Value {
    match node {
        Node::Scalar(s) => scalar(s),
        Node::Sequence(items) => Value::Array(items.iter().map(to_json).collect()),
        Node::Mapping(map) => mapping(map),
    }
}

fn mapping(map: &MarkedMappingNode) -> Value {
    Value::Object(map.iter().map(|(k, v)| (k.as_str().to_owned(), to_json(v))).collect())
}

fn scalar(s: &MarkedScalarNode) -> Value {
    let text = s.as_str();
    if !s.may_coerce() {
        return Value::String(text.to_owned());
    }
    match text {
        "null" | "~" | "" => return Value::Null,
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::from(i);
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Value::from(f),
        _ => Value::String(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FLOW: &str = "steps:
  extract:
    model: A
    template: |
      Claims in: {{ segment }}
    max_tokens: 32
    params: {top_p: 0.9, stop: [\"\\n\"], tag: \"7\"}
  judge:
    model: B
    system: be fair
    template: 'Judge {{ steps.extract.output }}'
    output: json
    schema: {type: object, required: [ok]}
";

    #[test]
    fn steps_in_file_order_with_lines_and_typed_values() {
        let steps = parse(FLOW).unwrap();
        assert_eq!(steps.len(), 2);
        let (e, j) = (&steps[0], &steps[1]);
        assert_eq!((e.name.as_str(), e.line, e.model.as_str()), ("extract", 2, "A"));
        assert_eq!(e.template, "Claims in: {{ segment }}\n");
        assert_eq!(
            Value::Object(e.params.clone()),
            json!({"max_tokens": 32, "top_p": 0.9, "stop": ["\n"], "tag": "7"})
        );
        assert_eq!(e.json_schema, None);
        assert_eq!((j.line, j.system.as_deref()), (8, Some("be fair")));
        assert_eq!(j.json_schema, Some(json!({"type": "object", "required": ["ok"]})));
    }

    #[test]
    fn errors_name_the_line() {
        let line = |text: &str| match parse(text) {
            Err(WorkflowError::Invalid { line, message }) => (line, message),
            other => panic!("{other:?}"),
        };
        assert_eq!(line("steps:\n  a:\n    model: A\n").0, 2, "missing template");
        let (l, m) = line("steps:\n  a:\n    model: A\n    template: x\n    temprature: 1\n");
        assert_eq!(l, 5);
        assert!(m.contains("temprature"), "{m}");
        assert_eq!(line("steps:\n  a:\n    model: A\n    template: x\n    output: xml\n").0, 5);
        assert_eq!(line("stepz: {}\n").0, 1);
        assert!(line("steps:\n  a: [1\n").1.contains("YAML"));
        assert!(line("steps:\n  a: {model: A, template: x}\n  a: {model: B, template: y}\n").1.contains("Duplicate"));
    }
}
