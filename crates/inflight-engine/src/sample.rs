//! A job's sampler: greedy at temperature 0, otherwise llama-server's default chain (top-k 40, top-p,
//! min-p 0.05, temperature, a seeded draw), behind a grammar when the job gives a JSON Schema.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;

use crate::{JobError, Params};

/// llama-server's `top_k` and `min_p` defaults.
const TOP_K: i32 = 40;
const MIN_P: f32 = 0.05;

/// A job's sampling settings, checked before the job reaches the worker.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    temperature: f32,
    top_p: f32,
    seed: u32,
    grammar: Option<String>,
}

impl Settings {
    pub fn new(params: &Params) -> Result<Settings, JobError> {
        let grammar = match &params.json_schema {
            Some(schema) => Some(
                llama_cpp_2::json_schema_to_grammar(schema)
                    .map_err(|e| JobError::Invalid(format!("the JSON Schema cannot be turned into a grammar: {e}")))?,
            ),
            None => None,
        };
        let seed = params.seed.unwrap_or_else(rand_seed);
        Ok(Settings { temperature: params.temperature, top_p: params.top_p, seed, grammar })
    }

    pub fn sampler(&self, model: &LlamaModel) -> Result<LlamaSampler, JobError> {
        let mut chain = Vec::new();
        if let Some(grammar) = &self.grammar {
            chain.push(
                LlamaSampler::grammar(model, grammar, "root")
                    .map_err(|e| JobError::Invalid(format!("llama.cpp rejected the schema's grammar: {e}")))?,
            );
        }
        if self.temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            chain.push(LlamaSampler::top_k(TOP_K));
            chain.push(LlamaSampler::top_p(self.top_p, 1));
            chain.push(LlamaSampler::min_p(MIN_P, 1));
            chain.push(LlamaSampler::temp(self.temperature));
            chain.push(LlamaSampler::dist(self.seed));
        }
        Ok(LlamaSampler::chain_simple(chain))
    }
}

fn rand_seed() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}
