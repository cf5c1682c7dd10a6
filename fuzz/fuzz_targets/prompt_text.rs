//! The tokenizer and chat-template path of a real model (SmolLM2's GGUF metadata: its byte-level
//! BPE and its Jinja chat template): any UTF-8 as a prompt, and as a chat of messages split at
//! NUL bytes with roles from a fixed set, encoded as the engine would be fed.
#![no_main]

use std::sync::OnceLock;

use lantern_runtime::llm::chat::Message;
use lantern_runtime::llm::codec::TextCodec;
use libfuzzer_sys::fuzz_target;

fn codec() -> &'static TextCodec {
    static CODEC: OnceLock<TextCodec> = OnceLock::new();
    CODEC.get_or_init(|| {
        let path = std::env::var("LANTERN_FUZZ_GGUF")
            .unwrap_or_else(|_| "../.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".to_owned());
        let mut file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}; run scripts/fetch-test-models.sh"));
        let content = candle_core::quantized::gguf_file::Content::read(&mut file).expect("a GGUF file");
        TextCodec::from_gguf(&content.metadata).expect("SmolLM2's tokenizer and template")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let codec = codec();
    if let Ok(ids) = codec.encode(text) {
        let _ = codec.tokenizer().decode(&ids, false);
    }
    const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];
    let messages: Vec<Message> =
        text.split('\0').enumerate().map(|(i, content)| Message::new(ROLES[i % ROLES.len()], content)).collect();
    let _ = codec.encode_chat(&messages);
});
