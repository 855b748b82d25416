//! The step graph: compiled templates, the dependencies they imply, the check for cycles, and each step's
//! fingerprint.
//!
//! A step depends on the steps its template reads (`{{ steps.extract.output }}`): minijinja lists the
//! variables a template uses, so nobody declares dependencies by hand and they cannot drift from the
//! templates. A step's fingerprint hashes what shapes its request (model, template, system, parameters,
//! schema) and its dependencies' fingerprints, so editing one step changes the fingerprints of exactly it and
//! the steps downstream of it: those are sent again, the rest are reused.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::spec::{self, StepSpec};
use super::WorkflowError;
use crate::job::{hex, Template};

/// One step, ready to render.
pub struct Step {
    /// Its name.
    pub name: String,
    /// Line of its key in the workflow file.
    pub line: usize,
    /// The model it runs on.
    pub model: String,
    /// The prompt template.
    pub template: Template,
    /// The system message, if any.
    pub system: Option<String>,
    /// Request fields (`max_tokens`, `temperature`, `seed`, `params`).
    pub params: Map<String, Value>,
    /// The server URL it names, if any.
    pub server: Option<String>,
    /// For `output: json`: the schema and its compiled validator.
    pub schema: Option<(Value, Arc<jsonschema::Validator>)>,
    /// Indices of the steps it reads.
    pub deps: Vec<usize>,
    /// Hash of what shapes its requests, its dependencies' fingerprints included.
    pub fingerprint: String,
}

/// A validated workflow: steps in file order, no cycles, every reference resolved.
pub struct Workflow {
    /// The steps.
    pub steps: Vec<Step>,
}

impl Workflow {
    /// Parses and validates the text of a workflow file.
    pub fn parse(text: &str) -> Result<Workflow, WorkflowError> {
        let specs = spec::parse(text)?;
        let mut steps = Vec::with_capacity(specs.len());
        for s in &specs {
            steps.push(compile(s, &specs)?);
        }
        let order = topological(&steps)?;
        for i in order {
            let deps: Vec<&str> = steps[i].deps.iter().map(|&d| steps[d].fingerprint.as_str()).collect();
            let fp = fingerprint(&specs[i], &deps);
            steps[i].fingerprint = fp;
        }
        Ok(Workflow { steps })
    }

    /// The step named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// The names of the steps step `s` reads.
    pub fn dep_names(&self, s: usize) -> Vec<&str> {
        self.steps[s].deps.iter().map(|&d| self.steps[d].name.as_str()).collect()
    }
}

fn compile(s: &StepSpec, all: &[StepSpec]) -> Result<Step, WorkflowError> {
    let template = Template::new(s.template.clone()).map_err(|e| WorkflowError::Invalid {
        line: s.template_line,
        message: format!("step {}: the template does not compile: {e}", s.name),
    })?;
    let mut deps = Vec::new();
    for var in template.variables() {
        let Some(path) = var.strip_prefix("steps") else { continue };
        let Some(name) = path.strip_prefix('.').and_then(|p| p.split('.').next()) else {
            return Err(WorkflowError::Invalid {
                line: s.template_line,
                message: format!("step {}: refer to another step as `steps.NAME.output`", s.name),
            });
        };
        let Some(dep) = all.iter().position(|o| o.name == name) else {
            let known: Vec<&str> = all.iter().map(|o| o.name.as_str()).collect();
            return Err(WorkflowError::Invalid {
                line: s.template_line,
                message: format!("step {}: unknown step `{name}` (steps: {})", s.name, known.join(", ")),
            });
        };
        if !deps.contains(&dep) {
            deps.push(dep);
        }
    }
    // spec::parse has checked the schema compiles, naming its line.
    let schema = s.json_schema.as_ref().and_then(|v| Some((v.clone(), Arc::new(jsonschema::validator_for(v).ok()?))));
    Ok(Step {
        name: s.name.clone(),
        line: s.line,
        model: s.model.clone(),
        template,
        system: s.system.clone(),
        params: s.params.clone(),
        server: s.server.clone(),
        schema,
        deps,
        fingerprint: String::new(),
    })
}

/// An order in which every step comes after the steps it reads, or the error naming a cycle.
fn topological(steps: &[Step]) -> Result<Vec<usize>, WorkflowError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(i: usize, steps: &[Step], marks: &mut [Mark], path: &mut Vec<usize>, order: &mut Vec<usize>) -> bool {
        match marks[i] {
            Mark::Done => return true,
            Mark::Open => {
                path.push(i);
                return false;
            }
            Mark::New => {}
        }
        marks[i] = Mark::Open;
        path.push(i);
        for &d in &steps[i].deps {
            if !visit(d, steps, marks, path, order) {
                return false;
            }
        }
        path.pop();
        marks[i] = Mark::Done;
        order.push(i);
        true
    }
    let mut marks = vec![Mark::New; steps.len()];
    let mut order = Vec::with_capacity(steps.len());
    for i in 0..steps.len() {
        let mut path = Vec::new();
        if !visit(i, steps, &mut marks, &mut path, &mut order) {
            let last = *path.last().expect("a cycle has a step");
            let start = path.iter().position(|&p| p == last).unwrap_or(0);
            let names: Vec<&str> = path[start..].iter().map(|&p| steps[p].name.as_str()).collect();
            return Err(WorkflowError::Invalid {
                line: steps[last].line,
                message: format!("the steps form a cycle: {}", names.join(" → ")),
            });
        }
    }
    Ok(order)
}

fn fingerprint(s: &StepSpec, deps: &[&str]) -> String {
    let mut deps = deps.to_vec();
    deps.sort_unstable();
    let shape = json!({"model": s.model, "template": s.template, "system": s.system, "params": s.params,
                       "schema": s.json_schema, "deps": deps});
    hex(&Sha256::digest(shape.to_string().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(b_template: &str, c_model: &str) -> String {
        format!(
            "steps:\n  a:\n    model: A\n    template: '{{{{ text }}}}'\n  b:\n    model: B\n    template: '{b_template}'\n  \
             c:\n    model: {c_model}\n    template: '{{{{ steps.b.output }}}} {{{{ steps.a.output }}}}'\n"
        )
    }

    fn invalid(text: &str) -> (usize, String) {
        match Workflow::parse(text) {
            Err(WorkflowError::Invalid { line, message }) => (line, message),
            Ok(_) => panic!("accepted: {text}"),
        }
    }

    #[test]
    fn dependencies_come_from_the_templates() {
        let w = Workflow::parse(&flow("{{ steps.a.output }}", "A")).unwrap();
        assert_eq!(w.steps[1].deps, [0]);
        let mut c = w.steps[2].deps.clone();
        c.sort();
        assert_eq!(c, [0, 1]);
        assert!(w.steps[0].deps.is_empty());
    }

    #[test]
    fn an_edit_changes_the_fingerprints_of_the_step_and_its_dependents_only() {
        let before = Workflow::parse(&flow("{{ steps.a.output }}", "A")).unwrap();
        let after = Workflow::parse(&flow("Again: {{ steps.a.output }}", "A")).unwrap();
        let same: Vec<bool> = (0..3).map(|i| before.steps[i].fingerprint == after.steps[i].fingerprint).collect();
        assert_eq!(same, [true, false, false]);
        let c_only = Workflow::parse(&flow("{{ steps.a.output }}", "C")).unwrap();
        let same: Vec<bool> = (0..3).map(|i| before.steps[i].fingerprint == c_only.steps[i].fingerprint).collect();
        assert_eq!(same, [true, true, false]);
    }

    #[test]
    fn unknown_steps_cycles_and_template_errors_name_their_line() {
        let (line, message) = invalid(&flow("{{ steps.nope.output }}", "A"));
        assert_eq!(line, 7);
        assert!(message.contains("unknown step `nope`"), "{message}");
        let (line, message) = invalid(&flow("{{ steps.c.output }}", "A"));
        assert!(message.contains("cycle") && message.contains("b → c → b"), "{message}");
        assert!(line == 5 || line == 8, "{line}");
        let (line, message) = invalid(&flow("{{ steps.a.output ", "A"));
        assert_eq!(line, 7);
        assert!(message.contains("does not compile"), "{message}");
        let (_, message) = invalid(&flow("{{ steps }}", "A"));
        assert!(message.contains("steps.NAME"), "{message}");
    }
}
