//! A GGUF model, loaded once and shared: what it is, and how a prompt becomes tokens.

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;

use crate::chat::ChatTemplate;
use crate::{EngineConfig, JobError, LoadError, Prompt};

/// How an embedding is pooled from a sequence's token vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean of all tokens.
    Mean,
    /// The first token's vector.
    Cls,
    /// The last token's vector.
    Last,
}

impl Pooling {
    pub(crate) fn llama(self) -> llama_cpp_2::context::params::LlamaPoolingType {
        use llama_cpp_2::context::params::LlamaPoolingType as P;
        match self {
            Pooling::Mean => P::Mean,
            Pooling::Cls => P::Cls,
            Pooling::Last => P::Last,
        }
    }

    fn from_gguf(code: &str) -> Option<Pooling> {
        match code.trim() {
            "1" => Some(Pooling::Mean),
            "2" => Some(Pooling::Cls),
            "3" => Some(Pooling::Last),
            _ => None,
        }
    }
}

/// What the model file says about itself.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// `general.name`, or the file name.
    pub name: String,
    /// The architecture (`llama`, `qwen2`, ...).
    pub architecture: String,
    /// The context the model was trained with.
    pub n_ctx_train: u32,
    /// Layers.
    pub n_layer: u32,
    /// Bytes of KV cache one token takes (f16 K and V in every layer).
    pub kv_bytes_per_token: u64,
    /// Bytes of weights.
    pub size: u64,
    /// The pooling embeddings use: `--pooling`, else the model's own; `None`: the model cannot embed.
    pub pooling: Option<Pooling>,
    /// Whether the file carries a chat template.
    pub has_chat_template: bool,
}

pub(crate) struct Loaded {
    pub model: LlamaModel,
    pub info: ModelInfo,
    template: Option<ChatTemplate>,
}

/// llama.cpp's process-wide backend: initialized once, never torn down.
pub(crate) fn backend() -> Result<&'static LlamaBackend, LoadError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| LoadError::Context(format!("llama.cpp backend: {e}")))
}

/// Checks that `path` is a readable GGUF file before llama.cpp sees it, so a wrong path or a truncated
/// download gets a one-line reason, not a loader log. Cheap (reads four bytes): callers that load a model
/// later use it to refuse a bad path before anything runs.
pub fn check_file(path: &Path) -> Result<(), LoadError> {
    let mut file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LoadError::Missing(path.to_owned()),
        _ => LoadError::Unreadable { path: path.to_owned(), why: e.to_string() },
    })?;
    let mut magic = [0u8; 4];
    match file.read_exact(&mut magic) {
        Ok(()) if &magic == b"GGUF" => Ok(()),
        Ok(()) => Err(LoadError::Corrupt { path: path.to_owned(), why: "the file does not start with GGUF".into() }),
        Err(_) => {
            Err(LoadError::Corrupt { path: path.to_owned(), why: "the file is shorter than a GGUF header".into() })
        }
    }
}

impl Loaded {
    pub fn open(config: &EngineConfig) -> Result<Loaded, LoadError> {
        let path = config.model.as_path();
        check_file(path)?;
        let backend = backend()?;
        let mut params = LlamaModelParams::default();
        let gpu_layers = match config.gpu_layers {
            Some(n) => n,
            None if backend.supports_gpu_offload() => 999,
            None => 0,
        };
        params = params.with_n_gpu_layers(gpu_layers);
        let model = LlamaModel::load_from_file(backend, path, &params).map_err(|e| LoadError::Corrupt {
            path: path.to_owned(),
            why: format!("llama.cpp could not load it: {e}"),
        })?;
        let meta = |key: &str| model.meta_val_str(key).ok();
        let architecture = meta("general.architecture").unwrap_or_default();
        let name = meta("general.name")
            .unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
        let own_pooling = meta(&format!("{architecture}.pooling_type")).and_then(|p| Pooling::from_gguf(&p));
        let n_layer = model.n_layer();
        let n_head = model.n_head().max(1);
        let head_dim = (model.n_embd() as u64) / n_head as u64;
        let kv_bytes_per_token = 2 * n_layer as u64 * model.n_head_kv() as u64 * head_dim * 2;
        let template = match model.chat_template(None).ok().and_then(|t| t.to_string().ok()) {
            Some(source) => {
                let text = |t| String::from_utf8_lossy(&model.vocab().token_to_piece(t, true, None)).into_owned();
                let (bos, eos) = (text(model.vocab().bos()), text(model.vocab().eos()));
                Some(ChatTemplate::new(source, bos, eos).map_err(|why| LoadError::Corrupt {
                    path: path.to_owned(),
                    why: format!("its chat template does not compile: {why}"),
                })?)
            }
            None => None,
        };
        let info = ModelInfo {
            name,
            architecture,
            n_ctx_train: model.n_ctx_train(),
            n_layer,
            kv_bytes_per_token,
            size: model.size(),
            pooling: config.pooling.or(own_pooling),
            has_chat_template: template.is_some(),
        };
        Ok(Loaded { model, info, template })
    }

    /// The tokens of a prompt, as llama-server tokenizes it (special tokens added where the model asks for
    /// them, and parsed in the text).
    pub fn tokens(&self, prompt: &Prompt) -> Result<Vec<i32>, JobError> {
        let text = match prompt {
            Prompt::Text(text) => text.clone(),
            Prompt::Chat(messages) => match &self.template {
                Some(template) => template.render(messages)?,
                None => return Err(JobError::Invalid(no_template(&self.info.name))),
            },
        };
        let tokens = self.tokenize(&text);
        if tokens.is_empty() {
            return Err(JobError::Invalid("the prompt is empty".into()));
        }
        Ok(tokens)
    }

    pub fn embed_tokens(&self, text: &str) -> Result<Vec<i32>, JobError> {
        let tokens = self.tokenize(text);
        if tokens.is_empty() {
            return Err(JobError::Invalid("an input to embed is empty".into()));
        }
        Ok(tokens)
    }

    fn tokenize(&self, text: &str) -> Vec<i32> {
        self.model.vocab().tokenize(text.as_bytes(), true, true).into_iter().map(|t| t.0).collect()
    }

    /// Whether embeddings can be made, or why not.
    pub fn can_pool(&self) -> Result<Pooling, JobError> {
        self.info.pooling.ok_or_else(|| JobError::Invalid(cannot_pool(&self.info.name)))
    }

    /// The bytes of one token's text (special tokens as nothing, as llama-server returns content).
    pub fn piece(&self, token: i32) -> Vec<u8> {
        self.model.vocab().token_to_piece(llama_cpp_2::token::LlamaToken(token), false, None)
    }

    pub fn is_eog(&self, token: i32) -> bool {
        self.model.vocab().is_eog(llama_cpp_2::token::LlamaToken(token))
    }
}

/// The message for a chat request on a model without a chat template.
pub fn no_template(model: &str) -> String {
    format!("{model} has no chat template: use completion lines (`prompt`) or a model with one")
}

/// The message for an embedding request on a model that does not pool.
pub fn cannot_pool(model: &str) -> String {
    format!("{model} does not say how to pool embeddings: pass --pooling mean|cls|last")
}
