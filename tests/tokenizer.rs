//! Tokenizer tests: GGUF-built byte-level BPE and SentencePiece tokenizers on small hand-made
//! vocabularies, HF folders, streaming detokenisation, and (when the file is present) the real
//! SmolLM2 GGUF vocabulary against ids from an independent tokenizer.

use std::path::{Path, PathBuf};

use esa_wgpu::model::gguf::GgufModel;
use esa_wgpu::tokenizer::{GgufTokenizerSpec, Tokenizer};
use esa_wgpu::Error;

// ---------------------------------------------------------------------------------------------
// Hand-made vocabularies

/// GPT-2's byte -> printable char table (bytes that are printable map to themselves, the others
/// to U+0100 + n in order), so a tiny vocabulary covers every byte.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| {
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

fn byte_level_spec(pre: &str) -> GgufTokenizerSpec {
    let mut tokens = vec![
        "<|endoftext|>".to_string(),
        "<|im_start|>".into(),
        "<|im_end|>".into(),
        "<think>".into(),
    ];
    let mut types = vec![3, 3, 3, 4];
    for b in 0..=255u8 {
        tokens.push(byte_char(b).to_string());
        types.push(1);
    }
    let merges = [
        "Ġ t", "l l", "e ll", "h ell", "hell o", "h e", "Ġt he", "1 2", "Ġ w", "o r", "Ġw or",
        "Ġwor l", "Ġworl d",
    ];
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
    tok.token_to_id(s)
        .unwrap_or_else(|| panic!("{s:?} not in vocab"))
}

#[test]
fn byte_level_merges_special_tokens_and_round_trip() {
    let tok = Tokenizer::from_gguf(&byte_level_spec("default")).unwrap();
    assert_eq!(tok.vocab_size(), 4 + 256 + 13);

    let ids = tok.encode("hello world", false).unwrap();
    assert_eq!(ids, vec![id(&tok, "hello"), id(&tok, "Ġworld")]);

    // Control and user-defined tokens are matched whole inside text.
    let ids = tok
        .encode("<|im_start|>user\nhello<|im_end|><think>", false)
        .unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(
        ids[1..5],
        [id(&tok, "u"), id(&tok, "s"), id(&tok, "e"), id(&tok, "r")]
    );
    assert_eq!(ids[5], id(&tok, "Ċ"));
    assert_eq!(ids[6..], [id(&tok, "hello"), 2, 3]);

    // decode skips special (control) tokens but keeps user-defined ones.
    assert_eq!(tok.decode(&ids), "user\nhello<think>");
    assert_eq!(
        tok.decode_with_special(&ids),
        "<|im_start|>user\nhello<|im_end|><think>"
    );

    for text in [
        "naïve café — Ünïcödé",
        "日本語 😀👍🏽 ❤️",
        "  a\t\tb\n\n",
        "x = 1234567;",
    ] {
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
    assert_eq!(
        smollm.encode("12", false).unwrap(),
        vec![id(&smollm, "1"), id(&smollm, "2")]
    );
    // Llama-3 groups up to 3 digits: "1212" -> "121" "2".
    let llama3 = Tokenizer::from_gguf(&byte_level_spec("llama-bpe")).unwrap();
    let ids = llama3.encode("1212", false).unwrap();
    assert_eq!(
        ids,
        vec![id(&llama3, "12"), id(&llama3, "1"), id(&llama3, "2")]
    );
    // Llama-3's regex also keeps "'s" apart and does not merge the space into punctuation runs.
    assert_eq!(
        llama3.decode(&llama3.encode("it's 12!", false).unwrap()),
        "it's 12!"
    );
}

/// Ids from llama.cpp's tokenizer (llama-cpp-python 0.3.36) for `byte_level_spec`'s vocabulary
/// written as a GGUF file with each `tokenizer.ggml.pre`. llama.cpp's "default" is the Llama-3
/// regex (digits in groups of up to three); "gpt-2" keeps digit runs whole; "smollm" splits digits.
const BYTE_LEVEL_LLAMA_CPP_TEXTS: [&str; 6] = [
    "hello world",
    "the 1212 and 12",
    "it's HELLO'S  \n\n world",
    "  12 the\tworld!!  ",
    "<|im_start|>hello<think> world<|im_end|>",
    "x1212y 121212",
];
const BYTE_LEVEL_LLAMA_CPP_IDS: &[(&str, [&[u32]; 6])] = &[
    (
        "llama-bpe",
        [
            &[264, 272],
            &[120, 265, 36, 267, 53, 54, 36, 101, 114, 104, 36, 267],
            &[
                109, 120, 43, 119, 36, 76, 73, 80, 80, 83, 43, 87, 36, 36, 14, 14, 272,
            ],
            &[36, 36, 267, 266, 13, 123, 269, 112, 104, 37, 37, 36, 36],
            &[1, 264, 3, 272, 2],
            &[124, 267, 53, 54, 125, 36, 267, 53, 54, 267],
        ],
    ),
    (
        "default",
        [
            &[264, 272],
            &[120, 265, 36, 267, 53, 54, 36, 101, 114, 104, 36, 267],
            &[
                109, 120, 43, 119, 36, 76, 73, 80, 80, 83, 43, 87, 36, 36, 14, 14, 272,
            ],
            &[36, 36, 267, 266, 13, 123, 269, 112, 104, 37, 37, 36, 36],
            &[1, 264, 3, 272, 2],
            &[124, 267, 53, 54, 125, 36, 267, 53, 54, 267],
        ],
    ),
    (
        "gpt-2",
        [
            &[264, 272],
            &[120, 265, 36, 267, 267, 36, 101, 114, 104, 36, 267],
            &[
                109, 120, 43, 119, 36, 76, 73, 80, 80, 83, 43, 87, 36, 36, 14, 14, 272,
            ],
            &[36, 36, 267, 266, 13, 123, 269, 112, 104, 37, 37, 36, 36],
            &[1, 264, 3, 272, 2],
            &[124, 267, 267, 125, 36, 267, 267, 267],
        ],
    ),
    (
        "smollm",
        [
            &[264, 272],
            &[120, 265, 36, 53, 54, 53, 54, 36, 101, 114, 104, 36, 53, 54],
            &[
                109, 120, 43, 119, 36, 76, 73, 80, 80, 83, 43, 87, 36, 36, 14, 14, 272,
            ],
            &[36, 36, 53, 54, 266, 13, 123, 269, 112, 104, 37, 37, 36, 36],
            &[1, 264, 3, 272, 2],
            &[124, 53, 54, 53, 54, 125, 36, 53, 54, 53, 54, 53, 54],
        ],
    ),
];

#[test]
fn byte_level_pre_tokenizers_match_llama_cpp() {
    for (pre, expected) in BYTE_LEVEL_LLAMA_CPP_IDS {
        let mut spec = byte_level_spec(pre);
        spec.add_bos = None;
        let tok = Tokenizer::from_gguf(&spec).unwrap();
        for (text, ids) in BYTE_LEVEL_LLAMA_CPP_TEXTS.iter().zip(expected) {
            assert_eq!(
                &tok.encode(text, false).unwrap(),
                ids,
                "pre {pre:?}, text {text:?}"
            );
            assert_eq!(tok.decode_with_special(ids), *text);
        }
        // llama.cpp adds BOS by default for Llama-3 vocabularies only.
        assert_eq!(tok.adds_bos(), *pre == "llama-bpe", "pre {pre:?}");
    }
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
    assert_eq!(
        tok.encode("hello", true).unwrap(),
        vec![1, id(&tok, "hello")]
    );
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
    assert!(
        pieces.contains(&"😀".to_string()) || pieces.contains(&" 😀".to_string()),
        "{pieces:?}"
    );

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
        ("▁", -1.0),
        ("h", -2.0),
        ("e", -2.0),
        ("l", -2.0),
        ("o", -2.0),
        ("w", -2.0),
        ("r", -2.0),
        ("d", -2.0),
        ("▁h", -3.0),
        ("ll", -3.5),
        ("▁hell", -4.0),
        ("▁hello", -5.0),
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
    assert!(
        tok.adds_bos(),
        "SentencePiece GGUF models add BOS unless told otherwise"
    );
    let ids = tok.encode("hello world", true).unwrap();
    // "▁hello" from the merges; "▁world" has no piece: ▁ w o r l d.
    let expect: Vec<u32> = ["▁hello", "▁", "w", "o", "r", "l", "d"]
        .iter()
        .map(|p| id(&tok, p))
        .collect();
    assert_eq!(ids[0], 1);
    assert_eq!(ids[1..], expect[..]);
    assert_eq!(tok.decode(&ids), "hello world");

    // Characters outside the vocabulary fall back to <0xXX> byte tokens.
    let ids = tok.encode("h€", false).unwrap();
    let euro: Vec<u32> = [0xE2u8, 0x82, 0xAC]
        .iter()
        .map(|b| id(&tok, &format!("<0x{b:02X}>")))
        .collect();
    assert_eq!(ids, [vec![id(&tok, "▁h")], euro].concat());
    assert_eq!(tok.decode(&ids), "h€");

    // Special-token text in the input is recognised.
    assert_eq!(tok.encode("<s>hello</s>", false).unwrap()[0], 1);
    assert_eq!(
        *tok.encode("<s>hello</s>", false).unwrap().last().unwrap(),
        2
    );
    assert!(tok.is_eos(2));
}

/// Ids from llama.cpp's tokenizer for the same vocabulary written as a GGUF file (llama-cpp-python
/// 0.3.36, `tokenize(text, add_bos=False, special=True)`), with the text `decode` gives back.
/// (transformers 5.24's GGUF conversion agrees except where a text segment starts with a space or
/// follows a special token: it prepends "▁" only to the first segment, and not to one that already
/// starts with a space.)
const SPM_LLAMA_CPP_CASES: &[(&str, &[u32], &str)] = &[
    (
        "hello world",
        &[270, 259, 264, 263, 265, 262, 266],
        "hello world",
    ),
    ("h€", &[267, 229, 133, 175], "h€"),
    ("<s>hello</s>", &[1, 270, 2], "hello"),
    (
        "hello 日本 hello \u{1f600}",
        &[
            270, 259, 233, 154, 168, 233, 159, 175, 270, 259, 243, 162, 155, 131,
        ],
        "hello 日本 hello \u{1f600}",
    ),
    ("  hello", &[259, 259, 270], "  hello"),
    (" a\n b", &[259, 259, 100, 13, 259, 101], " a\n b"),
    ("", &[], ""),
    (" ", &[259, 259], " "),
    (
        "hello\n\nhello",
        &[270, 13, 13, 260, 261, 268, 263],
        "hello\n\nhello",
    ),
    (
        "[INST] hello [/INST]",
        &[
            259, 94, 76, 81, 86, 87, 96, 270, 259, 94, 50, 76, 81, 86, 87, 96,
        ],
        "[INST] hello [/INST]",
    ),
    ("he<s> hello", &[271, 1, 259, 270], "he  hello"),
    ("ab€c", &[259, 100, 101, 229, 133, 175, 102], "ab€c"),
];

#[test]
fn sentencepiece_matches_llama_cpp() {
    let tok = Tokenizer::from_gguf(&spm_spec()).unwrap();
    for (text, ids, decoded) in SPM_LLAMA_CPP_CASES {
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
    assert_eq!(
        ids,
        ["h", "e", "ll", "o"]
            .iter()
            .map(|p| id(&tok, p))
            .collect::<Vec<_>>()
    );
    assert_eq!(tok.decode(&ids), "hello");
    // Same ids as llama.cpp with add_space_prefix = false.
    assert_eq!(tok.encode("  hello", false).unwrap(), vec![259, 270]);
    assert_eq!(
        tok.encode("<s>hello</s>", false).unwrap(),
        vec![1, 260, 261, 268, 263, 2]
    );
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
    assert!(
        matches!(err, Error::Unsupported(_)) && err.to_string().contains("\"t5\""),
        "{err}"
    );

    let mut spec = byte_level_spec("qwen9");
    spec.model = "gpt2".into();
    let err = Tokenizer::from_gguf(&spec).unwrap_err().to_string();
    assert!(
        err.contains("qwen9") && err.contains("tokenizer.ggml.pre"),
        "{err}"
    );

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

    let err = Tokenizer::from_gguf(&GgufTokenizerSpec::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer.ggml.tokens"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Hugging Face folders

/// Writes tokenizer.json (from a GGUF-built tokenizer, with a BOS post-processor added as HF
/// Llama tokenizers have) and the given tokenizer_config.json.
fn write_hf_dir(dir: &Path, tokenizer_config: Option<&str>, with_bos_processor: bool) {
    let tok = Tokenizer::from_gguf(&spm_spec()).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&tok.inner().to_string(false).unwrap()).unwrap();
    if with_bos_processor {
        json["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        });
    }
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_string(&json).unwrap(),
    )
    .unwrap();
    if let Some(cfg) = tokenizer_config {
        std::fs::write(dir.join("tokenizer_config.json"), cfg).unwrap();
    }
}

#[test]
fn hf_dir_reads_config_and_post_processor() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(
        dir.path(),
        Some(
            r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>", "add_bos_token": true,
               "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}D"}]}"#,
        ),
        false,
    );
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(tok.bos_id(), Some(1));
    assert!(tok.is_eos(2));
    assert_eq!(
        tok.encode("hello", true).unwrap(),
        vec![1, id(&tok, "▁hello")]
    );
    assert_eq!(tok.chat_template_source(), Some("{{ bos_token }}D"));
    assert_eq!(
        tok.chat_template().unwrap().render(&[], false).unwrap(),
        "<s>D"
    );

    // No tokenizer_config: BOS comes from the post-processor, and is added once, not twice.
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), None, true);
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"bos_token_id": 1, "eos_token_id": [2, 0]}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(
        tok.encode("hello", true).unwrap(),
        vec![1, id(&tok, "▁hello")]
    );
    assert_eq!(tok.eos_ids(), &[2, 0]);
    assert!(tok.chat_template_source().is_none());
    // No template: ChatML.
    assert!(tok
        .chat_template()
        .unwrap()
        .source()
        .contains("<|im_start|>"));

    // add_bos_token false overrides the post-processor.
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(
        dir.path(),
        Some(r#"{"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": false}"#),
        true,
    );
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(tok.encode("hello", true).unwrap(), vec![id(&tok, "▁hello")]);
}

#[test]
fn hf_dir_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("tokenizer.json"),
        "{err}"
    );

    std::fs::write(dir.path().join("tokenizer.json"), "{ not json").unwrap();
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::Format { .. }) && err.to_string().contains("tokenizer.json"),
        "{err}"
    );

    write_hf_dir(dir.path(), Some("{ broken"), false);
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json"), "{err}");

    write_hf_dir(dir.path(), Some(r#"{"eos_token": "<|nope|>"}"#), false);
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json")
            && err.contains("eos_token")
            && err.contains("<|nope|>"),
        "{err}"
    );

    write_hf_dir(
        dir.path(),
        Some(r#"{"chat_template": [{"name": "rag", "template": "x"}]}"#),
        false,
    );
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("chat_template") && err.contains("default"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// The real SmolLM2 vocabulary

const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where the SmolLM2 GGUF may be: `ESA_WGPU_SMOLLM2_GGUF`, else the model cache the README names
/// (`$ESA_WGPU_CACHE`, `$XDG_CACHE_HOME/esa-wgpu`, `~/.cache/esa-wgpu`), else the development cache.
fn smollm2_gguf() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ESA_WGPU_SMOLLM2_GGUF") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let env_dir = |var: &str, sub: &str| std::env::var_os(var).map(|d| PathBuf::from(d).join(sub));
    [
        env_dir("ESA_WGPU_CACHE", ""),
        env_dir("XDG_CACHE_HOME", "esa-wgpu"),
        env_dir("HOME", ".cache/esa-wgpu"),
        Some(PathBuf::from("/work/cache")),
    ]
    .into_iter()
    .flatten()
    .map(|d| d.join(SMOLLM2_FILE))
    .find(|p| p.is_file())
}

/// Expected ids for SmolLM2-135M-Instruct from llama.cpp's own tokenizer (llama-cpp-python 0.3.36,
/// `Llama(path, vocab_only=True).tokenize(text, add_bos=False, special=True)`, pre-tokenizer
/// "smollm"), identical for every case to the `tokenizers` Python package (0.23) with HF SmolLM2's
/// pre-tokenizer (Digits(individual) + ByteLevel) over the GGUF's vocab and merges.
const SMOLLM2_CASES: &[(&str, &[u32])] = &[
    ("Hello, world!", &[19556, 28, 905, 17]),
    (
        "The year 2024 had 366 days; pi is 3.14159.",
        &[
            504, 713, 216, 34, 32, 34, 36, 761, 216, 35, 38, 38, 2009, 43, 16916, 314, 216, 35, 30,
            33, 36, 33, 37, 41, 30,
        ],
    ),
    (
        "  two  spaces\tand\ttabs\n\nnewlines  ",
        &[
            216, 827, 216, 5600, 197, 397, 197, 100, 7366, 198, 198, 2241, 5110, 256,
        ],
    ),
    (
        "naïve café — Ünïcödé",
        &[
            3546, 46494, 37366, 1841, 5549, 246, 94, 25972, 83, 7466, 84, 2756,
        ],
    ),
    (
        "日本語のテキスト",
        &[
            23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226,
        ],
    ),
    (
        "emoji \u{1f600}\u{1f44d}\u{1f3fd} and ❤\u{fe0f}",
        &[
            391, 33777, 40303, 218, 10813, 235, 231, 10813, 233, 138, 284, 4636, 247, 114, 31752,
        ],
    ),
    (
        "<|im_start|>user\nWhat is 12+30?<|im_end|>\n<|im_start|>assistant\n",
        &[
            1, 4093, 198, 1780, 314, 216, 33, 34, 27, 35, 32, 47, 2, 198, 1, 520, 9531, 198,
        ],
    ),
    (
        "I'm sure they'll say it's fine, don't you?",
        &[
            57, 5248, 2090, 502, 3060, 1643, 357, 506, 4979, 28, 1326, 982, 346, 47,
        ],
    ),
    (
        "def f(x):\n    return x ** 2\n",
        &[1604, 275, 24, 104, 727, 472, 1003, 1792, 1903, 216, 34, 198],
    ),
    ("", &[]),
    ("   ", &[333]),
    ("a  \n\n  b\t", &[81, 256, 8866, 278, 197]),
    (
        "1,000,000 and x=-3.5e10",
        &[
            33, 28, 32, 32, 32, 28, 32, 32, 32, 284, 1792, 15196, 35, 30, 37, 85, 33, 32,
        ],
    ),
    ("Don't STOP!! ...", &[8084, 982, 5022, 7627, 10095, 4563]),
    ("hi<|im_end|>there<|endoftext|>", &[6004, 2, 11527, 0]),
    (
        "non\u{a0}breaking\u{2009}thin",
        &[9033, 15442, 11194, 321, 227, 39200],
    ),
    (
        "Ελληνικά, русский, العربية",
        &[
            153, 239, 17162, 17162, 25723, 11517, 12001, 21118, 26112, 28, 216, 9175, 14714, 9382,
            39511, 7872, 24958, 28, 27819, 34966, 20602, 31462, 23339, 43463,
        ],
    ),
    (
        "中文，标点！",
        &[28589, 29184, 12831, 46781, 44083, 8083, 219],
    ),
    (
        "\u{1f3f3}\u{fe0f}\u{200d}\u{1f308} family: \u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467}",
        &[
            10813, 233, 128, 31752, 321, 231, 10813, 230, 226, 1564, 42, 15107, 235, 118, 321, 231,
            10813, 235, 119, 321, 231, 10813, 235, 117,
        ],
    ),
];

#[test]
fn smollm2_gguf_vocabulary_matches_reference_ids() {
    let Some(path) = smollm2_gguf() else {
        eprintln!("skipped: SmolLM2 GGUF not found (set ESA_WGPU_SMOLLM2_GGUF)");
        return;
    };
    let spec = GgufModel::open(&path).unwrap().tokenizer_spec().unwrap();
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
                assert!(
                    !p.contains('\u{FFFD}'),
                    "broken char in {p:?} streaming {text:?}"
                );
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
