//! Tokenizer: HF `tokenizer.json` or GGUF metadata, both as a `tokenizers::Tokenizer`.
//!
//! Both sources end in one [`Tokenizer`]: a `tokenizers::Tokenizer` for the text <-> id mapping,
//! plus what generation needs around it (BOS to prepend, the set of ids that end a turn, the chat
//! template source). Special tokens are always added by us, never by the inner post-processor, so
//! the two sources behave the same.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::{NormalizerWrapper, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::chat_template::ChatTemplate;
use crate::error::{Error, Result};

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
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece only): prepend "▁" to the text. llama.cpp
    /// defaults it to true for "llama" models.
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.ggml.eot_token_id`: end-of-turn token, also a stop token.
    pub eot_id: Option<u32>,
}

/// ggml token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_UNKNOWN: i32 = 2;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;
const TOKEN_TYPE_BYTE: i32 = 6;

/// Special tokens that end a turn in common chat formats. Like llama.cpp, any of these present as
/// a special token is treated as end-of-generation, next to the declared EOS: an instruct model
/// may emit `<|eot_id|>` while its config names `<|end_of_text|>` (or the other way round).
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|end|>",
    "<end_of_turn>",
    "<EOT>",
];

/// Llama-3's split regex (the `pre_tokenizer` Split pattern of Meta-Llama-3's tokenizer.json, and
/// llama.cpp's LLAMA_VOCAB_PRE_TYPE_LLAMA3). Also the tiktoken cl100k pattern.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Pre-tokenizer names (`tokenizer.ggml.pre`) that use the Llama-3 split.
const LLAMA3_PRE_NAMES: &[&str] = &[
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "smaug-bpe",
    "dbrx",
    "pixtral",
];

/// Pre-tokenizer names that split every digit then apply the GPT-2 regex. In llama.cpp these share
/// the StarCoder regex list (`\p{N}` then the GPT-2 pattern); SmolLM2's HF tokenizer.json spells it
/// `Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false, use_regex=true)]`.
const DIGIT_SPLIT_PRE_NAMES: &[&str] = &["smollm", "starcoder", "refact", "codeshell"];

/// Pre-tokenizer names for plain GPT-2 byte-level splitting.
const GPT2_PRE_NAMES: &[&str] = &["gpt2", "gpt-2", "mpt", "olmo"];

/// llama.cpp's "default" BPE pre-tokenizer (also used when `tokenizer.ggml.pre` is absent) is the
/// Llama-3 split regex, without Llama-3's ignore_merges and BOS.
const DEFAULT_PRE_NAME: &str = "default";

/// The SentencePiece word-boundary marker.
const SPM_SPACE: char = '\u{2581}';

/// A text tokenizer with the special-token facts generation needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    /// Primary EOS first, then other end-of-turn ids; no duplicates.
    eos_ids: Vec<u32>,
    /// Ids to put before / after the text when `encode(.., add_special = true)`.
    prefix_ids: Vec<u32>,
    suffix_ids: Vec<u32>,
    chat_template: Option<String>,
    /// Largest id + 1 (the model's embedding rows), which may exceed the number of distinct
    /// token strings when a GGUF vocabulary spells two ids the same.
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_ids", &self.eos_ids)
            .field("prefix_ids", &self.prefix_ids)
            .field("suffix_ids", &self.suffix_ids)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Load from a Hugging Face model folder: `tokenizer.json` (required), `tokenizer_config.json`
    /// (bos/eos tokens, `add_bos_token`, `add_eos_token`, `chat_template`), and if present
    /// `chat_template.jinja`, `generation_config.json` and `config.json` (extra EOS ids).
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let tok_path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&tok_path).map_err(|e| Error::io(&tok_path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::format(&tok_path, format!("not a valid tokenizer.json: {e}")))?;

        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = read_optional_json(&cfg_path)?.unwrap_or(Json::Null);
        let token_id = |field: &str| -> Result<Option<u32>> {
            match special_token_content(&cfg, field) {
                None => Ok(None),
                Some(content) => {
                    inner
                        .token_to_id(&content)
                        .map(Some)
                        .ok_or_else(|| Error::Config {
                            path: cfg_path.clone(),
                            field: field.into(),
                            msg: format!("token {content:?} is not in tokenizer.json's vocabulary"),
                        })
                }
            }
        };
        let mut bos_id = token_id("bos_token")?;
        let mut eos_ids: Vec<u32> = token_id("eos_token")?.into_iter().collect();

        // Extra EOS ids: generation_config.json lists all stop ids for Llama-3 instruct models.
        let model_cfg = read_optional_json(&dir.join("config.json"))?.unwrap_or(Json::Null);
        let gen_cfg =
            read_optional_json(&dir.join("generation_config.json"))?.unwrap_or(Json::Null);
        for c in [&gen_cfg, &model_cfg] {
            eos_ids.extend(json_ids(c.get("eos_token_id")));
            if bos_id.is_none() {
                bos_id = json_ids(c.get("bos_token_id")).into_iter().next();
            }
        }

        let add_bos = cfg.get("add_bos_token").and_then(Json::as_bool);
        let add_eos = cfg.get("add_eos_token").and_then(Json::as_bool);
        let (prefix_ids, suffix_ids) =
            special_affixes(&inner, bos_id, eos_ids.first().copied(), add_bos, add_eos)
                .map_err(|msg| Error::format(&tok_path, msg))?;

        let mut chat_template = match cfg.get("chat_template") {
            Some(v) => {
                crate::chat_template::template_from_json(v).map_err(|msg| Error::Config {
                    path: cfg_path.clone(),
                    field: "chat_template".into(),
                    msg,
                })?
            }
            None => None,
        };
        let jinja_path = dir.join("chat_template.jinja");
        if chat_template.is_none() && jinja_path.is_file() {
            chat_template =
                Some(std::fs::read_to_string(&jinja_path).map_err(|e| Error::io(&jinja_path, e))?);
        }

        Ok(Self::assemble(
            inner,
            bos_id,
            eos_ids,
            prefix_ids,
            suffix_ids,
            chat_template,
        ))
    }

    /// Load a bare `tokenizer.json` (no config: BOS/EOS are whatever its post-processor adds).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::format(path, format!("not a valid tokenizer.json: {e}")))?;
        let (prefix_ids, suffix_ids) = special_affixes(&inner, None, None, None, None)
            .map_err(|msg| Error::format(path, msg))?;
        let bos_id = prefix_ids.first().copied();
        let eos_ids = suffix_ids.last().copied().into_iter().collect();
        Ok(Self::assemble(
            inner, bos_id, eos_ids, prefix_ids, suffix_ids, None,
        ))
    }

    /// Build from GGUF tokenizer metadata: "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE
    /// with byte fallback).
    pub fn from_gguf(spec: &GgufTokenizerSpec) -> Result<Self> {
        let n = spec.tokens.len();
        if n == 0 {
            return Err(gguf_err("tokenizer.ggml.tokens", "is empty".into()));
        }
        if !spec.token_types.is_empty() && spec.token_types.len() != n {
            return Err(gguf_err(
                "tokenizer.ggml.token_type",
                format!(
                    "has {} entries but there are {n} tokens",
                    spec.token_types.len()
                ),
            ));
        }
        for (field, id) in [
            ("tokenizer.ggml.bos_token_id", spec.bos_id),
            ("tokenizer.ggml.eos_token_id", spec.eos_id),
            ("tokenizer.ggml.unknown_token_id", spec.unk_id),
            ("tokenizer.ggml.padding_token_id", spec.pad_id),
            ("tokenizer.ggml.eot_token_id", spec.eot_id),
        ] {
            if let Some(id) = id {
                if id as usize >= n {
                    return Err(gguf_err(
                        field,
                        format!("is {id} but there are only {n} tokens"),
                    ));
                }
            }
        }
        let token_type = |i: usize| spec.token_types.get(i).copied().unwrap_or(1);

        let pre = spec.pre.as_deref().unwrap_or("default");
        let (mut inner, add_bos_default) = match spec.model.as_str() {
            "gpt2" => (build_byte_level_bpe(spec, pre)?, LLAMA3_PRE_NAMES.contains(&pre)),
            "llama" => (build_sentencepiece_bpe(spec)?, true),
            other => {
                return Err(Error::Unsupported(format!(
                    "GGUF tokenizer model {other:?} (tokenizer.ggml.model); supported: \"gpt2\" (byte-level BPE), \"llama\" (SentencePiece)"
                )))
            }
        };

        // Control tokens become special added tokens, user-defined ones plain added tokens
        // (matched whole in the text but shown when decoding), as transformers' GGUF loader does.
        // A byte-level vocab spells every real token in the byte alphabet; a "control" token that
        // does not is a conversion mislabel and would not round-trip, so it is left alone.
        let alphabet = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet();
        let byte_level = spec.model == "gpt2";
        let mut control = Vec::new();
        let mut user = Vec::new();
        for (i, tok) in spec.tokens.iter().enumerate() {
            match token_type(i) {
                TOKEN_TYPE_CONTROL if !byte_level || tok.chars().all(|c| alphabet.contains(&c)) => {
                    control.push(AddedToken::from(tok.clone(), true).normalized(false))
                }
                TOKEN_TYPE_USER_DEFINED => {
                    user.push(AddedToken::from(tok.clone(), false).normalized(false))
                }
                _ => {}
            }
        }
        inner.add_special_tokens(&control);
        inner.add_tokens(&user);

        let eos_ids: Vec<u32> = spec.eos_id.into_iter().chain(spec.eot_id).collect();
        let bos_id = spec.bos_id;
        let add_bos = spec.add_bos.unwrap_or(add_bos_default) && bos_id.is_some();
        let add_eos = spec.add_eos.unwrap_or(false) && spec.eos_id.is_some();
        let prefix_ids = if add_bos {
            bos_id.into_iter().collect()
        } else {
            vec![]
        };
        let suffix_ids = if add_eos {
            spec.eos_id.into_iter().collect()
        } else {
            vec![]
        };
        let mut tok = Self::assemble(
            inner,
            bos_id,
            eos_ids,
            prefix_ids,
            suffix_ids,
            spec.chat_template.clone(),
        );
        tok.vocab_size = tok.vocab_size.max(n);
        Ok(tok)
    }

    /// Common tail of the constructors: add the end-of-turn special tokens to the EOS set.
    fn assemble(
        inner: tokenizers::Tokenizer,
        bos_id: Option<u32>,
        declared_eos: Vec<u32>,
        prefix_ids: Vec<u32>,
        suffix_ids: Vec<u32>,
        chat_template: Option<String>,
    ) -> Self {
        let specials: HashMap<u32, AddedToken> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .collect();
        let mut eos_ids = Vec::new();
        let mut seen = HashSet::new();
        let turn_enders = END_OF_TURN_TOKENS.iter().filter_map(|t| {
            let id = inner.token_to_id(t)?;
            specials.contains_key(&id).then_some(id)
        });
        for id in declared_eos.into_iter().chain(turn_enders) {
            if seen.insert(id) {
                eos_ids.push(id);
            }
        }
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&m| m as usize + 1);
        Self {
            inner,
            bos_id,
            eos_ids,
            prefix_ids,
            suffix_ids,
            chat_template,
            vocab_size,
        }
    }

    /// Text to ids. `add_special` adds BOS (and EOS) as the model's config asks; special-token
    /// strings written in `text` (e.g. `<|im_start|>`) are recognised either way.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("encoding failed: {e}")))?;
        if !add_special {
            return Ok(enc.get_ids().to_vec());
        }
        let mut ids = Vec::with_capacity(enc.len() + self.prefix_ids.len() + self.suffix_ids.len());
        ids.extend_from_slice(&self.prefix_ids);
        ids.extend_from_slice(enc.get_ids());
        ids.extend_from_slice(&self.suffix_ids);
        Ok(ids)
    }

    /// Ids to text, leaving out special tokens (BOS, EOS, `<|im_start|>`...). Ids outside the
    /// vocabulary are skipped; incomplete UTF-8 at the end shows as U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_inner(ids, true)
    }

    /// Ids to text, special tokens included as their text.
    pub fn decode_with_special(&self, ids: &[u32]) -> String {
        self.decode_inner(ids, false)
    }

    fn decode_inner(&self, ids: &[u32], skip_special: bool) -> String {
        // The decoders we build or load (ByteLevel, Replace/ByteFallback/Fuse/Strip, Metaspace)
        // do not fail on any id sequence; unknown ids are dropped by `tokenizers` itself.
        self.inner.decode(ids, skip_special).unwrap_or_default()
    }

    /// Does this id end generation (EOS or an end-of-turn token)?
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// All ids that end generation, the declared EOS first.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether `encode(.., true)` puts BOS first.
    pub fn adds_bos(&self) -> bool {
        self.bos_id.is_some() && self.prefix_ids.first() == self.bos_id.as_ref()
    }

    /// BOS as text (for the chat template's `bos_token`).
    pub fn bos_token(&self) -> Option<String> {
        self.bos_id.and_then(|id| self.inner.id_to_token(id))
    }

    /// The declared EOS as text (for the chat template's `eos_token`).
    pub fn eos_token(&self) -> Option<String> {
        self.eos_ids
            .first()
            .and_then(|&id| self.inner.id_to_token(id))
    }

    /// Number of ids (largest id + 1), added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary entry of an id (byte-level spelling, e.g. "Ġthe", for BPE models).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The chat template source shipped with the model, if any.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The model's chat template with its BOS/EOS strings, or ChatML when it ships none.
    pub fn chat_template(&self) -> Result<ChatTemplate> {
        match &self.chat_template {
            Some(src) => ChatTemplate::new(
                src,
                &self.bos_token().unwrap_or_default(),
                &self.eos_token().unwrap_or_default(),
            ),
            None => Ok(ChatTemplate::chatml()),
        }
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// A decoder for a stream of generated ids that yields text only once it is complete UTF-8.
    pub fn stream(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tok: self,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }
}

/// Incremental detokenizer. A character may span several tokens (byte-level BPE splits emoji and
/// CJK into byte tokens; SentencePiece falls back to `<0xXX>` tokens), so each push decodes a short
/// window of recent ids and emits only the new text, holding it back while it ends in a broken
/// character (U+FFFD). Decoding a window rather than single tokens keeps the inter-token spaces that
/// SentencePiece decoders strip at the start of a text.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    /// `ids[prefix..read]` has been emitted and is decoded again only as context.
    prefix: usize,
    read: usize,
}

impl StreamDecoder<'_> {
    /// Add one generated id; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Option<String> {
        self.ids.push(id);
        let before = self.tok.decode(&self.ids[self.prefix..self.read]);
        let now = self.tok.decode(&self.ids[self.prefix..]);
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') {
            return None;
        }
        let out = new_suffix(&before, &now);
        self.prefix = self.read;
        self.read = self.ids.len();
        self.compact();
        (!out.is_empty()).then_some(out)
    }

    /// Emit whatever is held back (a trailing broken character shows as U+FFFD) and start over.
    pub fn flush(&mut self) -> Option<String> {
        let before = self.tok.decode(&self.ids[self.prefix..self.read]);
        let now = self.tok.decode(&self.ids[self.prefix..]);
        self.ids.clear();
        self.prefix = 0;
        self.read = 0;
        let out = new_suffix(&before, &now);
        (!out.is_empty()).then_some(out)
    }

    /// Drop ids that no window will look at again, so memory stays bounded.
    fn compact(&mut self) {
        if self.prefix > 64 {
            self.ids.drain(..self.prefix);
            self.read -= self.prefix;
            self.prefix = 0;
        }
    }
}

/// `now` minus its leading part equal to `before` (cut on a char boundary).
fn new_suffix(before: &str, now: &str) -> String {
    if let Some(rest) = now.strip_prefix(before) {
        return rest.to_string();
    }
    let common: usize = before
        .chars()
        .zip(now.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a.len_utf8())
        .sum();
    now[common..].to_string()
}

fn gguf_err(field: &str, msg: String) -> Error {
    Error::Tokenizer(format!("GGUF metadata `{field}` {msg}"))
}

/// Byte-level BPE (GPT-2 style) from GGUF tokens + merges, with the pre-tokenizer `pre` names.
fn build_byte_level_bpe(spec: &GgufTokenizerSpec, pre: &str) -> Result<tokenizers::Tokenizer> {
    if spec.merges.is_empty() {
        return Err(gguf_err(
            "tokenizer.ggml.merges",
            "is missing; a \"gpt2\" tokenizer needs merges".into(),
        ));
    }
    let vocab = vocab_map(&spec.tokens);
    let merges = parse_merges(&spec.merges)?;
    let llama3 = LLAMA3_PRE_NAMES.contains(&pre);
    let llama3_split = llama3 || pre == DEFAULT_PRE_NAME;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        // Llama-3's tokenizer.json sets ignore_merges: a whole pre-token in the vocab is taken as is.
        .ignore_merges(llama3)
        .build()
        .map_err(|e| {
            gguf_err(
                "tokenizer.ggml.merges",
                format!("do not fit the tokens: {e}"),
            )
        })?;

    let pre_tokenizer: PreTokenizerWrapper = if llama3_split {
        let split = Split::new(
            SplitPattern::Regex(LLAMA3_SPLIT.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::Tokenizer(format!("Llama-3 split regex: {e}")))?;
        PreSequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into()
    } else if DIGIT_SPLIT_PRE_NAMES.contains(&pre) {
        PreSequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into()
    } else if GPT2_PRE_NAMES.contains(&pre) {
        ByteLevel::new(false, true, true).into()
    } else {
        return Err(Error::Unsupported(format!(
            "GGUF pre-tokenizer {pre:?} (tokenizer.ggml.pre); supported: {}",
            [
                &[DEFAULT_PRE_NAME],
                LLAMA3_PRE_NAMES,
                DIGIT_SPLIT_PRE_NAMES,
                GPT2_PRE_NAMES
            ]
            .concat()
            .join(", ")
        )));
    };

    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(ByteLevel::new(false, true, true)));
    Ok(tok)
}

/// SentencePiece-style BPE with byte fallback, shaped like HF's Llama-2/Mistral tokenizer.json:
/// normalizer Prepend("▁") + Replace(" " -> "▁") (the space prefix goes before every text segment,
/// also right after a special token, as llama.cpp does), decoders Replace("▁" -> " "),
/// ByteFallback, Fuse, Strip(one leading space). (transformers' own GGUF conversion uses a
/// Metaspace pre-tokenizer with prepend_scheme "first" instead, which differs from llama.cpp on text
/// that follows a special token or starts with a space.)
fn build_sentencepiece_bpe(spec: &GgufTokenizerSpec) -> Result<tokenizers::Tokenizer> {
    let vocab = vocab_map(&spec.tokens);
    let merges = if spec.merges.is_empty() {
        merges_from_scores(spec)?
    } else {
        parse_merges(&spec.merges)?
    };
    let unk = spec
        .unk_id
        .or_else(|| {
            spec.token_types
                .iter()
                .position(|&t| t == TOKEN_TYPE_UNKNOWN)
                .map(|i| i as u32)
        })
        .map(|id| spec.tokens[id as usize].clone());
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder.build().map_err(|e| {
        gguf_err(
            "tokenizer.ggml.tokens",
            format!("do not make a SentencePiece BPE: {e}"),
        )
    })?;

    let space_prefix = spec.add_space_prefix.unwrap_or(true);
    let spaces = Replace::new(" ", SPM_SPACE.to_string())
        .map_err(|e| Error::Tokenizer(format!("normalizer: {e}")))?;
    let normalizer: NormalizerWrapper = if space_prefix {
        NormalizerSequence::new(vec![
            Prepend::new(SPM_SPACE.to_string()).into(),
            spaces.into(),
        ])
        .into()
    } else {
        spaces.into()
    };
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new(SPM_SPACE.to_string(), " ")
            .map_err(|e| Error::Tokenizer(format!("decoder: {e}")))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_normalizer(Some(normalizer));
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tok)
}

/// token -> id; on a duplicate spelling the first id wins (as in llama.cpp's token_to_id).
fn vocab_map(tokens: &[String]) -> Vocab {
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(i as u32);
    }
    vocab
}

fn parse_merges(merges: &[String]) -> Result<Merges> {
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut parts = m.splitn(2, ' ');
            match (parts.next(), parts.next()) {
                (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => {
                    Ok((a.to_string(), b.to_string()))
                }
                _ => Err(gguf_err(
                    "tokenizer.ggml.merges",
                    format!("entry {i} ({m:?}) is not two tokens separated by a space"),
                )),
            }
        })
        .collect()
}

/// A SentencePiece vocab has scores instead of merges: every way to cut a token into two vocab
/// tokens is a merge, ranked by the merged token's score (highest first), then by token id and by
/// the ids of the two halves. This is how transformers converts Llama/Mistral sentencepiece models.
fn merges_from_scores(spec: &GgufTokenizerSpec) -> Result<Merges> {
    if spec.scores.len() != spec.tokens.len() {
        return Err(gguf_err(
            "tokenizer.ggml.scores",
            format!(
                "has {} entries but there are {} tokens (needed to derive merges)",
                spec.scores.len(),
                spec.tokens.len()
            ),
        ));
    }
    let vocab = vocab_map(&spec.tokens);
    let mut ranked: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (id, tok) in spec.tokens.iter().enumerate() {
        let ty = spec.token_types.get(id).copied().unwrap_or(1);
        if matches!(
            ty,
            TOKEN_TYPE_CONTROL | TOKEN_TYPE_BYTE | TOKEN_TYPE_UNKNOWN
        ) {
            continue; // never the result of merging text pieces
        }
        for (cut, _) in tok.char_indices().skip(1) {
            let (l, r) = tok.split_at(cut);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                ranked.push((spec.scores[id], id as u32, li, ri));
            }
        }
    }
    ranked.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    Ok(ranked
        .into_iter()
        .map(|(_, _, l, r)| {
            (
                spec.tokens[l as usize].clone(),
                spec.tokens[r as usize].clone(),
            )
        })
        .collect())
}

/// Parse a JSON file that may be absent; a present but broken file is an error naming it.
fn read_optional_json(path: &PathBuf) -> Result<Option<Json>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::format(path, format!("not valid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// `bos_token`/`eos_token` in tokenizer_config.json: a string, `{"content": ...}`, or null.
pub(crate) fn special_token_content(cfg: &Json, field: &str) -> Option<String> {
    match cfg.get(field)? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// An id or list of ids in a config file.
fn json_ids(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n.as_u64().map(|x| x as u32).into_iter().collect(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

/// The ids `tokenizers`' post-processor puts around a text, found by encoding a probe with and
/// without special tokens, then adjusted to tokenizer_config's explicit `add_bos_token` /
/// `add_eos_token` when given.
fn special_affixes(
    inner: &tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: Option<bool>,
    add_eos: Option<bool>,
) -> std::result::Result<(Vec<u32>, Vec<u32>), String> {
    let probe = "a";
    let plain = inner
        .encode(probe, false)
        .map_err(|e| format!("cannot encode a probe text: {e}"))?;
    let full = inner
        .encode(probe, true)
        .map_err(|e| format!("cannot encode a probe text: {e}"))?;
    let (plain, full) = (plain.get_ids(), full.get_ids());
    let (mut prefix, mut suffix) = match full.windows(plain.len().max(1)).position(|w| w == plain) {
        Some(pos) if !plain.is_empty() => {
            (full[..pos].to_vec(), full[pos + plain.len()..].to_vec())
        }
        _ => (vec![], vec![]),
    };
    match (add_bos, bos) {
        (Some(true), Some(b)) if prefix.first() != Some(&b) => prefix.insert(0, b),
        (Some(false), Some(b)) => prefix.retain(|&x| x != b),
        _ => {}
    }
    match (add_eos, eos) {
        (Some(true), Some(e)) if suffix.last() != Some(&e) => suffix.push(e),
        (Some(false), Some(e)) => suffix.retain(|&x| x != e),
        _ => {}
    }
    Ok((prefix, suffix))
}
