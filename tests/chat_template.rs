//! Chat template tests: SmolLM2 (ChatML with a default system prompt), Llama-3 and Mistral style
//! templates rendered with minijinja, compared with expected strings written by hand.

use esa_wgpu::chat_template::{strftime, ChatTemplate, Message};
use esa_wgpu::Error;

/// SmolLM2-135M-Instruct's template, as in its GGUF `tokenizer.chat_template`.
const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Llama-3-Instruct style (the shape of Meta-Llama-3-8B-Instruct's template).
const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// Mistral-Instruct style: [INST] blocks, roles must alternate; written over several lines with
/// `-` whitespace control, as Mistral's own templates are.
const MISTRAL: &str = "{{- bos_token }}
{%- for message in messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {{- '[INST] ' + message['content'].strip() + ' [/INST]' }}
    {%- elif message['role'] == 'assistant' %}
        {{- message['content'] + eos_token }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported!') }}
    {%- endif %}
{%- endfor %}
";

/// The same without `-`: what is left shows transformers' Jinja settings (trim_blocks and
/// lstrip_blocks remove a block tag's line, but an expression's indentation and newline stay).
const MISTRAL_NO_DASHES: &str = "{{ bos_token }}
{% for message in messages %}
    {% if message['role'] == 'user' %}
        {{ '[INST] ' + message['content'].strip() + ' [/INST]' }}
    {% else %}
        {{ message['content'] + eos_token }}
    {% endif %}
{% endfor %}
";

fn chat() -> Vec<Message> {
    vec![
        Message::user("Hello!"),
        Message::assistant("Hi, how can I help?"),
        Message::user("  Tell me a joke. "),
    ]
}

#[test]
fn smollm2_chatml_with_default_system_prompt() {
    let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
    let out = t.render(&[Message::user("What is 2+2?")], true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    // A given system message replaces the default; no generation prompt.
    let out = t
        .render(&[Message::system("Be brief."), Message::user("Hi")], false)
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn chatml_fallback() {
    let t = ChatTemplate::chatml();
    let out = t
        .render(&[Message::system("S"), Message::user("U")], true)
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn llama3_headers_bos_and_trim() {
    let t = ChatTemplate::new(LLAMA3, "<|begin_of_text|>", "<|eot_id|>").unwrap();
    let out = t
        .render(
            &[
                Message::system("You are terse."),
                Message::user("  Hi there \n"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(
        out,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn mistral_inst_blocks_and_whitespace_control() {
    let t = ChatTemplate::new(MISTRAL, "<s>", "</s>").unwrap();
    let out = t.render(&chat(), false).unwrap();
    assert_eq!(
        out,
        "<s>[INST] Hello! [/INST]Hi, how can I help?</s>[INST] Tell me a joke. [/INST]"
    );

    // Expected string checked against Python Jinja2 (trim_blocks, lstrip_blocks) as well.
    let t = ChatTemplate::new(MISTRAL_NO_DASHES, "<s>", "</s>").unwrap();
    let out = t.render(&chat(), false).unwrap();
    assert_eq!(
        out,
        "<s>\n        [INST] Hello! [/INST]\n        Hi, how can I help?</s>\n        [INST] Tell me a joke. [/INST]\n"
    );
}

#[test]
fn mistral_raise_exception_on_bad_roles() {
    let t = ChatTemplate::new(MISTRAL, "<s>", "</s>").unwrap();
    let err = t
        .render(&[Message::user("a"), Message::user("b")], false)
        .unwrap_err();
    assert!(matches!(err, Error::Template(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("Conversation roles must alternate user/assistant"),
        "{err}"
    );

    let err = t
        .render(&[Message::system("s")], false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("Conversation roles must alternate"), "{err}");
}

#[test]
fn syntax_errors_are_reported_at_construction() {
    let err = ChatTemplate::new("{% for m in messages %}{{ m.content }}", "", "").unwrap_err();
    assert!(matches!(err, Error::Template(_)), "{err:?}");
    assert!(err.to_string().contains("line"), "{err}");
}

#[test]
fn python_string_methods_loop_controls_and_namespace() {
    let src = "{% set ns = namespace(n=0) %}\
        {% for m in messages %}{% if m.content.startswith('skip') %}{% continue %}{% endif %}\
        {% if m.content.endswith('!') %}{% break %}{% endif %}\
        {% set ns.n = ns.n + 1 %}[{{ m.role.upper() }}:{{ m.content.strip().replace('a', 'A') }}:{{ m.content.split(',') | length }}]\
        {% endfor %}{{ ns.n }}{{ messages[0].content.lstrip().title() }}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    let msgs = vec![
        Message::user(" a,b "),
        Message::assistant("skip me"),
        Message::user("c"),
        Message::user("stop!"),
        Message::user("never"),
    ];
    assert_eq!(
        t.render(&msgs, false).unwrap(),
        "[USER:A,b:2][USER:c:1]2A,B "
    );
}

#[test]
fn tojson_is_python_json_dumps() {
    let t = ChatTemplate::new(
        "{{ messages[0] | tojson }}|{{ ['<a>', 1, 2.5, none, true] | tojson }}|{{ 'é' | tojson }}",
        "",
        "",
    )
    .unwrap();
    assert_eq!(
        t.render(&[Message::user("x & <y>")], false).unwrap(),
        r#"{"role": "user", "content": "x & <y>"}|["<a>", 1, 2.5, null, true]|"é""#
    );
    let t = ChatTemplate::new("{{ messages[0] | tojson(indent=2) }}", "", "").unwrap();
    assert_eq!(
        t.render(&[Message::user("u")], false).unwrap(),
        "{\n  \"role\": \"user\",\n  \"content\": \"u\"\n}"
    );
    let t = ChatTemplate::new("{{ 'é😀' | tojson(ensure_ascii=true) }}", "", "").unwrap();
    assert_eq!(t.render(&[], false).unwrap(), r#""\u00e9\ud83d\ude00""#);
}

#[test]
fn strftime_now_and_defined_checks() {
    // Llama-3.1 style date line.
    let src = "{% if strftime_now is defined %}{% set d = strftime_now('%d %b %Y') %}{% else %}{% set d = '26 Jul 2024' %}{% endif %}Today Date: {{ d }}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    let out = t.render(&[], false).unwrap();
    let date = out.strip_prefix("Today Date: ").unwrap();
    assert_eq!(date.len(), 11, "{out}");
    assert!(
        date.split(' ').nth(2).unwrap().parse::<u32>().unwrap() >= 2024,
        "{out}"
    );

    // The formatter itself at fixed instants: 2024-07-26 13:05:09 UTC (a Friday), and 2000-02-29.
    assert_eq!(
        strftime("%d %b %Y %H:%M:%S %a %A %B %j %y %I%p %%", 1_721_999_109).unwrap(),
        "26 Jul 2024 13:05:09 Fri Friday July 208 24 01PM %"
    );
    assert_eq!(strftime("%Y-%m-%d", 951_782_400).unwrap(), "2000-02-29");
    assert_eq!(strftime("%Y-%m-%d", 0).unwrap(), "1970-01-01");
}

#[test]
fn from_tokenizer_config_string_and_named_list() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer_config.json");
    let cfg = serde_json::json!({
        "bos_token": "<|begin_of_text|>",
        "eos_token": {"content": "<|eot_id|>", "special": true},
        "chat_template": LLAMA3,
    });
    std::fs::write(&path, cfg.to_string()).unwrap();
    let t = ChatTemplate::from_tokenizer_config(&path).unwrap();
    assert!(t
        .render(&[Message::user("q")], false)
        .unwrap()
        .starts_with("<|begin_of_text|><|start_header_id|>user"));

    let cfg = serde_json::json!({
        "eos_token": "</s>",
        "chat_template": [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "{{ messages[0].content }}{{ eos_token }}"}],
    });
    std::fs::write(&path, cfg.to_string()).unwrap();
    let t = ChatTemplate::from_tokenizer_config(&path).unwrap();
    assert_eq!(t.render(&[Message::user("q")], false).unwrap(), "q</s>");

    std::fs::write(&path, r#"{"eos_token": "</s>"}"#).unwrap();
    let err = ChatTemplate::from_tokenizer_config(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("chat_template"),
        "{err}"
    );

    let err = ChatTemplate::from_tokenizer_config(dir.path().join("nope.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.json"), "{err}");
}

#[test]
fn messages_deserialize_from_json() {
    let msgs: Vec<Message> =
        serde_json::from_str(r#"[{"role": "user", "content": "hi"}]"#).unwrap();
    assert_eq!(msgs, vec![Message::user("hi")]);
}
