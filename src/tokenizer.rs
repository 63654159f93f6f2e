//! Tokenizer: HF `tokenizer.json` or GGUF metadata, both as a `tokenizers::Tokenizer`.

/// Tokenizer description as stored in GGUF metadata (`tokenizer.ggml.*`). The GGUF reader fills
/// it; `Tokenizer::from_gguf` turns it into a `tokenizers` tokenizer.
#[derive(Debug, Clone, Default)]
pub struct GgufTokenizerSpec {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: pre-tokenizer name, e.g. "smollm", "llama-bpe", "default".
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    /// ggml token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub chat_template: Option<String>,
}
