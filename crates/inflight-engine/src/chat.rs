//! The model's own chat template (the Jinja text in its GGUF), rendered as llama-server renders it with
//! `--jinja`: messages, `add_generation_prompt`, the model's BOS and EOS text.

use minijinja::{Environment, ErrorKind, Value};

use crate::{JobError, Message};

/// A compiled chat template.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos` and `eos` are the model's special tokens as text.
    pub fn new(source: String, bos: String, eos: String) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        // Templates written for Python's Jinja call str methods (`.strip()`, `.startswith()`) and these helpers.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |_fmt: String| -> String { String::new() });
        env.add_template_owned("chat", source).map_err(|e| e.to_string())?;
        Ok(ChatTemplate { env, bos, eos })
    }

    /// The prompt for `messages`, ending with the assistant's turn opened.
    pub fn render(&self, messages: &[Message]) -> Result<String, JobError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| minijinja::context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        let template = self.env.get_template("chat").map_err(|e| JobError::Invalid(e.to_string()))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos.as_str(),
                eos_token => self.eos.as_str(),
            })
            .map_err(|e| JobError::Invalid(format!("the model's chat template failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}\
        {{ '<|im_start|>system\\nYou are helpful<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + \
        '\\n' + message['content'].strip() + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}\
        {{ '<|im_start|>assistant\\n' }}{% endif %}";

    fn msg(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }

    #[test]
    fn renders_a_chatml_template_with_python_string_methods() {
        let t = ChatTemplate::new(CHATML.into(), String::new(), "<|im_end|>".into()).unwrap();
        let got = t.render(&[msg("user", " hi ")]).unwrap();
        assert_eq!(
            got,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_template_that_raises_gives_the_jobs_error() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}".into(), String::new(), String::new())
            .unwrap();
        let err = t.render(&[msg("user", "x")]).unwrap_err();
        assert!(err.to_string().contains("roles must alternate"), "{err}");
    }
}
