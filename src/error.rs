//! One error type for the crate. Every variant names what the user gave us
//! (a file, a tensor, a config field, an argument) so the message is actionable.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    /// A file exists but its contents are not what the format promises.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// A config field is missing or has an impossible value.
    #[error("{path}: field `{field}`: {msg}")]
    Config { path: PathBuf, field: String, msg: String },
    /// A tensor is missing, or has the wrong shape or dtype.
    #[error("tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("invalid argument `{arg}`: {msg}")]
    Argument { arg: String, msg: String },
    #[error("prompt has {tokens} tokens but the session's max_context is {max_context} (tokens already in context: {used})")]
    ContextFull { tokens: usize, used: usize, max_context: usize },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    /// No adapter, adapter limits too small, device lost, out of GPU memory.
    #[error("gpu: {0}")]
    Gpu(String),
    #[error("model download: {0}")]
    Fetch(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: msg.into() }
    }
    pub fn tensor(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor { name: name.into(), msg: msg.into() }
    }
    pub fn arg(arg: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Argument { arg: arg.into(), msg: msg.into() }
    }
}
