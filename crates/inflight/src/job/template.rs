//! `--template FILE`: a Jinja-style prompt template rendered over each input line's fields.
//!
//! Undefined variables are errors (strict mode), so a line missing a field the template uses becomes a bad
//! line with a clear message instead of a prompt with a silent hole in it.

use minijinja::{Environment, UndefinedBehavior};

/// A compiled prompt template.
#[derive(Clone)]
pub struct Template {
    env: Environment<'static>,
}

/// A template that does not compile, or a line it cannot render.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(String);

fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

impl Template {
    /// Compiles `source`; a syntax error is reported with its line.
    pub fn new(source: String) -> Result<Template, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(false);
        env.add_template_owned("prompt", source).map_err(|e| TemplateError(describe(&e)))?;
        Ok(Template { env })
    }

    /// Renders the template with `fields` (a JSON object) as its variables.
    pub fn render(&self, fields: &serde_json::Value) -> Result<String, TemplateError> {
        let tmpl = self.env.get_template("prompt").map_err(|e| TemplateError(describe(&e)))?;
        tmpl.render(fields).map_err(|e| TemplateError(describe(&e)))
    }

    /// The variables the template reads, with their attribute paths (`steps.extract.output`): how a workflow
    /// finds which steps a step depends on.
    pub fn variables(&self) -> std::collections::BTreeSet<String> {
        match self.env.get_template("prompt") {
            Ok(t) => t.undeclared_variables(true).into_iter().collect(),
            Err(_) => Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_fields() {
        let t = Template::new("Claims in: {{ segment }} ({{ meta.n }})".into()).unwrap();
        assert_eq!(t.render(&json!({"segment": "x", "meta": {"n": 2}})).unwrap(), "Claims in: x (2)");
    }

    #[test]
    fn missing_field_is_an_error() {
        let t = Template::new("{{ segment }}".into()).unwrap();
        let err = t.render(&json!({"other": 1})).unwrap_err();
        assert!(err.to_string().contains("undefined"), "{err}");
    }

    #[test]
    fn variables_have_their_paths() {
        let t = Template::new("{{ a }} {{ steps.x.output }}{% set b = 1 %}{{ b }}".into()).unwrap();
        assert_eq!(t.variables().into_iter().collect::<Vec<_>>(), ["a", "steps.x.output"]);
    }

    #[test]
    fn syntax_error_is_reported() {
        assert!(Template::new("{{ x ".into()).is_err());
    }
}
