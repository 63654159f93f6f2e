//! Tokenizer tests: GGUF-built byte-level BPE and SentencePiece tokenizers on small hand-made
//! vocabularies, HF folders, streaming detokenisation, and (when the file is present) the real
//! SmolLM2 GGUF vocabulary against ids from an independent tokenizer.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use esa_wgpu::tokenizer::{GgufTokenizerSpec, Tokenizer};
use esa_wgpu::Error;

// ---------------------------------------------------------------------------------------------
// Hand-made vocabularies

/// GPT-2's byte -> printable char table (bytes that are printable map to themselves, the others
/// to U+0100 + n in order), so a tiny vocabulary covers every byte.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

fn byte_level_spec(pre: &str) -> GgufTokenizerSpec {
    let mut tokens = vec!["<|endoftext|>".to_string(), "<|im_start|>".into(), "<|im_end|>".into(), "<think>".into()];
    let mut types = vec![3, 3, 3, 4];
    for b in 0..=255u8 {
        tokens.push(byte_char(b).to_string());
        types.push(1);
    }
    let merges = ["Ġ t", "l l", "e ll", "h ell", "hell o", "h e", "Ġt he", "1 2", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
        types.push(1);
    }
    GgufTokenizerSpec {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types: types,
        merges: merges.iter().map(|s| s.to_string()).collect(),
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        add_bos: Some(false),
        chat_template: Some("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}".into()),
        ..Default::default()
    }
}

fn id(tok: &Tokenizer, s: &str) -> u32 {
    tok.token_to_id(s).unwrap_or_else(|| panic!("{s:?} not in vocab"))
}

#[test]
fn byte_level_merges_special_tokens_and_round_trip() {
    let tok = Tokenizer::from_gguf(&byte_level_spec("default")).unwrap();
    assert_eq!(tok.vocab_size(), 4 + 256 + 13);

    let ids = tok.encode("hello world", false).unwrap();
    assert_eq!(ids, vec![id(&tok, "hello"), id(&tok, "Ġworld")]);

    // Control and user-defined tokens are matched whole inside text.
    let ids = tok.encode("<|im_start|>user\nhello<|im_end|><think>", false).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids[1..5], [id(&tok, "u"), id(&tok, "s"), id(&tok, "e"), id(&tok, "r")]);
    assert_eq!(ids[5], id(&tok, "Ċ"));
    assert_eq!(ids[6..], [id(&tok, "hello"), 2, 3]);

    // decode skips special (control) tokens but keeps user-defined ones.
    assert_eq!(tok.decode(&ids), "user\nhello<think>");
    assert_eq!(tok.decode_with_special(&ids), "<|im_start|>user\nhello<|im_end|><think>");

    for text in ["naïve café — Ünïcödé", "日本語 😀👍🏽 ❤️", "  a\t\tb\n\n", "x = 1234567;"] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids), text, "round trip of {text:?}");
    }
}

#[test]
fn pre_tokenizer_names_split_digits_as_their_models_do() {
    // GPT-2 keeps a digit run together, so the "1 2" merge applies.
    let gpt2 = Tokenizer::from_gguf(&byte_level_spec("gpt2")).unwrap();
    assert_eq!(gpt2.encode("12", false).unwrap(), vec![id(&gpt2, "12")]);
    // SmolLM (StarCoder-style) isolates each digit first.
    let smollm = Tokenizer::from_gguf(&byte_level_spec("smollm")).unwrap();
    assert_eq!(smollm.encode("12", false).unwrap(), vec![id(&smollm, "1"), id(&smollm, "2")]);
    // Llama-3 groups up to 3 digits: "1212" -> "121" "2".
    let llama3 = Tokenizer::from_gguf(&byte_level_spec("llama-bpe")).unwrap();
    let ids = llama3.encode("1212", false).unwrap();
    assert_eq!(ids, vec![id(&llama3, "12"), id(&llama3, "1"), id(&llama3, "2")]);
    // Llama-3's regex also keeps "'s" apart and does not merge the space into punctuation runs.
    assert_eq!(llama3.decode(&llama3.encode("it's 12!", false).unwrap()), "it's 12!");
}

#[test]
fn special_token_ids_and_bos() {
    let mut spec = byte_level_spec("smollm");
    let tok = Tokenizer::from_gguf(&spec).unwrap();
    assert_eq!(tok.bos_id(), Some(1));
    assert!(!tok.adds_bos());
    assert_eq!(tok.encode("hello", true).unwrap(), vec![id(&tok, "hello")]);
    // EOS plus the end-of-turn tokens present as control tokens.
    assert!(tok.is_eos(2) && tok.is_eos(0));
    assert!(!tok.is_eos(1) && !tok.is_eos(3));
    assert_eq!(tok.eos_ids()[0], 2);
    assert_eq!(tok.bos_token().as_deref(), Some("<|im_start|>"));
    assert_eq!(tok.eos_token().as_deref(), Some("<|im_end|>"));

    spec.add_bos = Some(true);
    let tok = Tokenizer::from_gguf(&spec).unwrap();
    assert!(tok.adds_bos());
    assert_eq!(tok.encode("hello", true).unwrap(), vec![1, id(&tok, "hello")]);
    assert_eq!(tok.encode("hello", false).unwrap(), vec![id(&tok, "hello")]);
}

#[test]
fn stream_decoder_never_emits_broken_utf8_byte_level() {
    let tok = Tokenizer::from_gguf(&byte_level_spec("default")).unwrap();
    let text = "hi 😀 日本 ok";
    let ids = tok.encode(text, false).unwrap();
    // The emoji is 4 byte tokens and each CJK char 3: pieces must appear only when complete.
    let mut stream = tok.stream();
    let mut out = String::new();
    let mut pieces = Vec::new();
    for &i in &ids {
        if let Some(piece) = stream.push(i) {
            assert!(!piece.contains('\u{FFFD}'), "broken char in {piece:?}");
            pieces.push(piece.clone());
            out.push_str(&piece);
        }
    }
    assert!(stream.flush().is_none());
    assert_eq!(out, text);
    assert!(pieces.contains(&"😀".to_string()) || pieces.contains(&" 😀".to_string()), "{pieces:?}");

    // A cut-off character is held back, and flush shows it as U+FFFD.
    let smile = tok.encode("😀", false).unwrap();
    assert_eq!(smile.len(), 4);
    let mut stream = tok.stream();
    for &i in &smile[..3] {
        assert_eq!(stream.push(i), None);
    }
    assert_eq!(stream.flush().as_deref(), Some("\u{FFFD}"));
}

/// A small SentencePiece vocabulary: <unk> <s> </s>, 256 byte tokens, then pieces with scores.
fn spm_spec() -> GgufTokenizerSpec {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    // Higher score = merged earlier.
    let pieces: [(&str, f32); 12] = [
        ("▁", -1.0), ("h", -2.0), ("e", -2.0), ("l", -2.0), ("o", -2.0), ("w", -2.0), ("r", -2.0), ("d", -2.0),
        ("▁h", -3.0), ("ll", -3.5), ("▁hell", -4.0), ("▁hello", -5.0),
    ];
    for (p, s) in pieces {
        tokens.push(p.into());
        types.push(1);
        scores.push(s);
    }
    tokens.push("▁he".into());
    types.push(1);
    scores.push(-3.2);
    GgufTokenizerSpec {
        model: "llama".into(),
        pre: Some("default".into()),
        tokens,
        scores,
        token_types: types,
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        ..Default::default()
    }
}

#[test]
fn sentencepiece_merges_from_scores_and_byte_fallback() {
    let tok = Tokenizer::from_gguf(&spm_spec()).unwrap();
    assert!(tok.adds_bos(), "SentencePiece GGUF models add BOS unless told otherwise");
    let ids = tok.encode("hello world", true).unwrap();
    // "▁hello" from the merges; "▁world" has no piece: ▁ w o r l d.
    let expect: Vec<u32> = ["▁hello", "▁", "w", "o", "r", "l", "d"].iter().map(|p| id(&tok, p)).collect();
    assert_eq!(ids[0], 1);
    assert_eq!(ids[1..], expect[..]);
    assert_eq!(tok.decode(&ids), "hello world");

    // Characters outside the vocabulary fall back to <0xXX> byte tokens.
    let ids = tok.encode("h€", false).unwrap();
    let euro: Vec<u32> = [0xE2u8, 0x82, 0xAC].iter().map(|b| id(&tok, &format!("<0x{b:02X}>"))).collect();
    assert_eq!(ids, [vec![id(&tok, "▁h")], euro].concat());
    assert_eq!(tok.decode(&ids), "h€");

    // Special-token text in the input is recognised.
    assert_eq!(tok.encode("<s>hello</s>", false).unwrap()[0], 1);
    assert_eq!(*tok.encode("<s>hello</s>", false).unwrap().last().unwrap(), 2);
    assert!(tok.is_eos(2));
}

/// Ids from transformers 5.24's GGUF conversion (`sentencepiece_tokenizer` + special tokens from
/// `integrations/gguf/gguf_tokenizer_mapping.py`) of the same spec, with the decoded text.
const SPM_TRANSFORMERS_CASES: &[(&str, &[u32], &str)] = &[
    ("hello world", &[270, 259, 264, 263, 265, 262, 266], "hello world"),
    ("h€", &[267, 229, 133, 175], "h€"),
    ("<s>hello</s>", &[1, 260, 261, 268, 263, 2], "hello"),
    ("hello 日本 hello 😀", &[270, 259, 233, 154, 168, 233, 159, 175, 270, 259, 243, 162, 155, 131], "hello 日本 hello 😀"),
    ("  hello", &[259, 270], " hello"),
    (" a\n b", &[259, 100, 13, 259, 101], "a\n b"),
];

#[test]
fn sentencepiece_matches_transformers_conversion() {
    let tok = Tokenizer::from_gguf(&spm_spec()).unwrap();
    for (text, ids, decoded) in SPM_TRANSFORMERS_CASES {
        assert_eq!(&tok.encode(text, false).unwrap(), ids, "ids of {text:?}");
        assert_eq!(tok.decode(ids), *decoded, "decode of {text:?}");
    }
}

#[test]
fn sentencepiece_without_space_prefix() {
    let mut spec = spm_spec();
    spec.add_space_prefix = Some(false);
    let tok = Tokenizer::from_gguf(&spec).unwrap();
    let ids = tok.encode("hello", false).unwrap();
    assert_eq!(ids, ["h", "e", "ll", "o"].iter().map(|p| id(&tok, p)).collect::<Vec<_>>());
    assert_eq!(tok.decode(&ids), "hello");
}

#[test]
fn stream_decoder_byte_fallback_keeps_spaces_and_whole_chars() {
    let tok = Tokenizer::from_gguf(&spm_spec()).unwrap();
    let text = "hello 日本 hello 😀";
    let ids = tok.encode(text, false).unwrap();
    let mut stream = tok.stream();
    let mut out = String::new();
    for &i in &ids {
        if let Some(p) = stream.push(i) {
            assert!(!p.contains('\u{FFFD}'), "broken char in {p:?}");
            out.push_str(&p);
        }
    }
    if let Some(p) = stream.flush() {
        out.push_str(&p);
    }
    // The first token's leading space is dropped, as in whole-text decoding.
    assert_eq!(out, tok.decode(&ids));
    assert_eq!(out, text);
}

#[test]
fn gguf_errors_are_clear() {
    let mut spec = byte_level_spec("default");
    spec.model = "t5".into();
    let err = Tokenizer::from_gguf(&spec).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)) && err.to_string().contains("\"t5\""), "{err}");

    let mut spec = byte_level_spec("qwen9");
    spec.model = "gpt2".into();
    let err = Tokenizer::from_gguf(&spec).unwrap_err().to_string();
    assert!(err.contains("qwen9") && err.contains("tokenizer.ggml.pre"), "{err}");

    let mut spec = byte_level_spec("default");
    spec.merges.push("nonsense".into());
    let err = Tokenizer::from_gguf(&spec).unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.merges"), "{err}");

    let mut spec = byte_level_spec("default");
    spec.merges.push("zz qq".into());
    let err = Tokenizer::from_gguf(&spec).unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.merges"), "{err}");

    let mut spec = byte_level_spec("default");
    spec.eos_id = Some(100_000);
    let err = Tokenizer::from_gguf(&spec).unwrap_err().to_string();
    assert!(err.contains("eos_token_id"), "{err}");

    let mut spec = byte_level_spec("default");
    spec.token_types.pop();
    let err = Tokenizer::from_gguf(&spec).unwrap_err().to_string();
    assert!(err.contains("token_type"), "{err}");

    let mut spec = spm_spec();
    spec.scores.clear();
    let err = Tokenizer::from_gguf(&spec).unwrap_err().to_string();
    assert!(err.contains("scores"), "{err}");

    let err = Tokenizer::from_gguf(&GgufTokenizerSpec::default()).unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.tokens"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Hugging Face folders

/// Writes tokenizer.json (from a GGUF-built tokenizer, with a BOS post-processor added as HF
/// Llama tokenizers have) and the given tokenizer_config.json.
fn write_hf_dir(dir: &Path, tokenizer_config: Option<&str>, with_bos_processor: bool) {
    let tok = Tokenizer::from_gguf(&spm_spec()).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&tok.inner().to_string(false).unwrap()).unwrap();
    if with_bos_processor {
        json["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        });
    }
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_string(&json).unwrap()).unwrap();
    if let Some(cfg) = tokenizer_config {
        std::fs::write(dir.join("tokenizer_config.json"), cfg).unwrap();
    }
}

#[test]
fn hf_dir_reads_config_and_post_processor() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(
        dir.path(),
        Some(r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>", "add_bos_token": true,
               "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}D"}]}"#),
        false,
    );
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(tok.bos_id(), Some(1));
    assert!(tok.is_eos(2));
    assert_eq!(tok.encode("hello", true).unwrap(), vec![1, id(&tok, "▁hello")]);
    assert_eq!(tok.chat_template_source(), Some("{{ bos_token }}D"));
    assert_eq!(tok.chat_template().unwrap().render(&[], false).unwrap(), "<s>D");

    // No tokenizer_config: BOS comes from the post-processor, and is added once, not twice.
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), None, true);
    std::fs::write(dir.path().join("generation_config.json"), r#"{"bos_token_id": 1, "eos_token_id": [2, 0]}"#).unwrap();
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(tok.encode("hello", true).unwrap(), vec![1, id(&tok, "▁hello")]);
    assert_eq!(tok.eos_ids(), &[2, 0]);
    assert!(tok.chat_template_source().is_none());
    // No template: ChatML.
    assert!(tok.chat_template().unwrap().source().contains("<|im_start|>"));

    // add_bos_token false overrides the post-processor.
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), Some(r#"{"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": false}"#), true);
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(tok.encode("hello", true).unwrap(), vec![id(&tok, "▁hello")]);
}

#[test]
fn hf_dir_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("tokenizer.json"), "{err}");

    std::fs::write(dir.path().join("tokenizer.json"), "{ not json").unwrap();
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Format { .. }) && err.to_string().contains("tokenizer.json"), "{err}");

    write_hf_dir(dir.path(), Some("{ broken"), false);
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json"), "{err}");

    write_hf_dir(dir.path(), Some(r#"{"eos_token": "<|nope|>"}"#), false);
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json") && err.contains("eos_token") && err.contains("<|nope|>"), "{err}");

    write_hf_dir(dir.path(), Some(r#"{"chat_template": [{"name": "rag", "template": "x"}]}"#), false);
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("chat_template") && err.contains("default"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The real SmolLM2 vocabulary

/// Where the SmolLM2 GGUF may be: `ESA_WGPU_SMOLLM2_GGUF`, else the development cache.
fn smollm2_gguf() -> Option<PathBuf> {
    let path = std::env::var_os("ESA_WGPU_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/cache/SmolLM2-135M-Instruct.Q4_1.gguf"));
    path.is_file().then_some(path)
}

/// Expected ids for SmolLM2-135M-Instruct, from the `tokenizers` Python package (0.23) with HF
/// SmolLM2's pre-tokenizer (Digits(individual) + ByteLevel) over the GGUF's vocab and merges, and
/// checked against llama.cpp's tokenizer (llama-cpp-python, pre-tokenizer "smollm").
const SMOLLM2_CASES: &[(&str, &[u32])] = &[
    ("Hello, world!", &[19556, 28, 905, 17]),
    ("The year 2024 had 366 days; pi is 3.14159.", &[504, 713, 216, 34, 32, 34, 36, 761, 216, 35, 38, 38, 2009, 43, 16916, 314, 216, 35, 30, 33, 36, 33, 37, 41, 30]),
    ("  two  spaces\tand\ttabs\n\nnewlines  ", &[216, 827, 216, 5600, 197, 397, 197, 100, 7366, 198, 198, 2241, 5110, 256]),
    ("naïve café — Ünïcödé", &[3546, 46494, 37366, 1841, 5549, 246, 94, 25972, 83, 7466, 84, 2756]),
    ("日本語のテキスト", &[23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226]),
    ("emoji 😀👍🏽 and ❤️", &[391, 33777, 40303, 218, 10813, 235, 231, 10813, 233, 138, 284, 4636, 247, 114, 31752]),
    ("<|im_start|>user\nWhat is 12+30?<|im_end|>\n<|im_start|>assistant\n", &[1, 4093, 198, 1780, 314, 216, 33, 34, 27, 35, 32, 47, 2, 198, 1, 520, 9531, 198]),
    ("I'm sure they'll say it's fine, don't you?", &[57, 5248, 2090, 502, 3060, 1643, 357, 506, 4979, 28, 1326, 982, 346, 47]),
    ("def f(x):\n    return x ** 2\n", &[1604, 275, 24, 104, 727, 472, 1003, 1792, 1903, 216, 34, 198]),
];

#[test]
fn smollm2_gguf_vocabulary_matches_reference_ids() {
    let Some(path) = smollm2_gguf() else {
        eprintln!("skipped: SmolLM2 GGUF not found (set ESA_WGPU_SMOLLM2_GGUF)");
        return;
    };
    let spec = read_gguf_tokenizer(&path);
    assert_eq!(spec.model, "gpt2");
    assert_eq!(spec.pre.as_deref(), Some("smollm"));
    let tok = Tokenizer::from_gguf(&spec).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_id(), Some(1));
    assert!(!tok.adds_bos());
    assert!(tok.is_eos(2) && tok.is_eos(0));
    for (text, expect) in SMOLLM2_CASES {
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(&ids, expect, "ids of {text:?}");
        assert_eq!(tok.decode_with_special(&ids), *text);
        // Streaming gives the same text, in whole characters.
        let mut stream = tok.stream();
        let mut out = String::new();
        for &i in &ids {
            if let Some(p) = stream.push(i) {
                assert!(!p.contains('\u{FFFD}'), "broken char in {p:?} streaming {text:?}");
                out.push_str(&p);
            }
        }
        out.extend(stream.flush());
        assert_eq!(out, tok.decode(&ids));
    }
    let rendered = tok
        .chat_template()
        .unwrap()
        .render(&[esa_wgpu::chat_template::Message::user("Hi")], true)
        .unwrap();
    assert_eq!(
        rendered,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

/// Test-only GGUF metadata reader: just the `tokenizer.*` keys, enough to fill the spec. (The
/// crate's own GGUF reader is tested elsewhere.)
fn read_gguf_tokenizer(path: &Path) -> GgufTokenizerSpec {
    enum V {
        U(u64),
        I(i64),
        F(f64),
        B(bool),
        S(String),
        A(Vec<V>),
    }
    fn u32_(r: &mut impl Read) -> u32 {
        let mut b = [0; 4];
        r.read_exact(&mut b).unwrap();
        u32::from_le_bytes(b)
    }
    fn u64_(r: &mut impl Read) -> u64 {
        let mut b = [0; 8];
        r.read_exact(&mut b).unwrap();
        u64::from_le_bytes(b)
    }
    fn string(r: &mut impl Read) -> String {
        let n = u64_(r) as usize;
        let mut b = vec![0; n];
        r.read_exact(&mut b).unwrap();
        String::from_utf8(b).unwrap()
    }
    fn value(r: &mut impl Read, ty: u32) -> V {
        let mut n = |k: usize| {
            let mut b = [0u8; 8];
            r.read_exact(&mut b[..k]).unwrap();
            u64::from_le_bytes(b)
        };
        match ty {
            0 | 2 | 4 | 10 => V::U(n([1, 0, 2, 0, 4, 0, 0, 0, 0, 0, 8][ty as usize])),
            1 => V::I(n(1) as u8 as i8 as i64),
            3 => V::I(n(2) as u16 as i16 as i64),
            5 => V::I(n(4) as u32 as i32 as i64),
            11 => V::I(n(8) as i64),
            6 => V::F(f32::from_bits(n(4) as u32) as f64),
            12 => V::F(f64::from_bits(n(8))),
            7 => V::B(n(1) != 0),
            8 => V::S(string(r)),
            9 => {
                let ety = u32_(r);
                let len = u64_(r);
                V::A((0..len).map(|_| value(r, ety)).collect())
            }
            _ => panic!("bad GGUF value type {ty}"),
        }
    }
    let mut r = BufReader::new(std::fs::File::open(path).unwrap());
    assert_eq!(u32_(&mut r), u32::from_le_bytes(*b"GGUF"));
    assert!(u32_(&mut r) >= 2);
    let _tensors = u64_(&mut r);
    let kvs = u64_(&mut r);
    let mut spec = GgufTokenizerSpec::default();
    let as_u32 = |v: &V| match v {
        V::U(x) => *x as u32,
        V::I(x) => *x as u32,
        _ => panic!("not an integer"),
    };
    for _ in 0..kvs {
        let key = string(&mut r);
        let ty = u32_(&mut r);
        let v = value(&mut r, ty);
        match (key.as_str(), v) {
            ("tokenizer.ggml.model", V::S(s)) => spec.model = s,
            ("tokenizer.ggml.pre", V::S(s)) => spec.pre = Some(s),
            ("tokenizer.chat_template", V::S(s)) => spec.chat_template = Some(s),
            ("tokenizer.ggml.tokens", V::A(a)) => {
                spec.tokens = a.into_iter().map(|v| if let V::S(s) = v { s } else { panic!() }).collect()
            }
            ("tokenizer.ggml.merges", V::A(a)) => {
                spec.merges = a.into_iter().map(|v| if let V::S(s) = v { s } else { panic!() }).collect()
            }
            ("tokenizer.ggml.scores", V::A(a)) => {
                spec.scores = a.into_iter().map(|v| if let V::F(f) = v { f as f32 } else { panic!() }).collect()
            }
            ("tokenizer.ggml.token_type", V::A(a)) => spec.token_types = a.iter().map(|v| as_u32(v) as i32).collect(),
            ("tokenizer.ggml.bos_token_id", v) => spec.bos_id = Some(as_u32(&v)),
            ("tokenizer.ggml.eos_token_id", v) => spec.eos_id = Some(as_u32(&v)),
            ("tokenizer.ggml.unknown_token_id", v) => spec.unk_id = Some(as_u32(&v)),
            ("tokenizer.ggml.padding_token_id", v) => spec.pad_id = Some(as_u32(&v)),
            ("tokenizer.ggml.eot_token_id", v) => spec.eot_id = Some(as_u32(&v)),
            ("tokenizer.ggml.add_bos_token", V::B(b)) => spec.add_bos = Some(b),
            ("tokenizer.ggml.add_eos_token", V::B(b)) => spec.add_eos = Some(b),
            ("tokenizer.ggml.add_space_prefix", V::B(b)) => spec.add_space_prefix = Some(b),
            _ => {}
        }
    }
    spec
}
