//! The OpenAI request parser: any bytes as a completions, chat or embeddings body. The first
//! byte picks the endpoint.
#![no_main]

use lantern_serve::openai::{parse_chat, parse_completion, parse_embeddings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 3 {
        0 => drop(parse_completion(body)),
        1 => drop(parse_chat(body)),
        _ => drop(parse_embeddings(body)),
    }
});
