//! The bounds on what one request may ask for. Every count a request carries is checked here
//! against a documented limit before it sizes an allocation, a loop or a batch; the README's
//! "Limits" section lists the same numbers. The body size itself is bounded per endpoint by the
//! server ([`super::server`]), and tensor shapes by their bytes ([`lantern_runtime::tensor::decode_raw`]).

use crate::error::{Error, Result};

/// Most stop strings one generation request may give (OpenAI allows 4).
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// Most texts one embeddings request may give (OpenAI's limit).
pub const MAX_EMBEDDING_TEXTS: usize = 2048;
/// Most texts embedded in one forward pass; a longer request runs as several batches, so its
/// memory stays that of one batch and other requests' batches can run between them.
pub const EMBEDDING_BATCH_TEXTS: usize = 32;
/// Most messages in one chat.
pub const MAX_CHAT_MESSAGES: usize = 4096;
/// Most `logit_bias` entries one request may give: each is applied to every token's logits.
pub const MAX_LOGIT_BIAS: usize = 1024;
/// Most tools (functions) one chat request may offer.
pub const MAX_TOOLS: usize = 128;
/// Most choices one generation request may ask for (`n`, `best_of`; OpenAI allows 128). Each is
/// a sequence in the engine, so they are also bounded by the KV cache.
pub const MAX_CHOICES: u64 = 128;

/// Refuses more, or longer, stop strings than the limits allow: each one is searched for after
/// every generated token, so their total size is work per token for the whole batch.
pub fn check_stop_strings(stop: &[String]) -> Result<()> {
    if stop.len() > MAX_STOP_STRINGS {
        return Err(Error::invalid(format!("stop has {} strings; at most {MAX_STOP_STRINGS} are allowed", stop.len())));
    }
    if let Some((index, long)) = stop.iter().enumerate().find(|(_, s)| s.len() > MAX_STOP_BYTES) {
        return Err(Error::invalid(format!(
            "stop[{index}] is {} bytes long; a stop string may have at most {MAX_STOP_BYTES}",
            long.len()
        )));
    }
    Ok(())
}

/// Refuses an embeddings request with more texts than [`MAX_EMBEDDING_TEXTS`].
pub fn check_embedding_texts(count: usize) -> Result<()> {
    match count > MAX_EMBEDDING_TEXTS {
        true => Err(Error::invalid(format!(
            "input has {count} texts; at most {MAX_EMBEDDING_TEXTS} can be embedded in one request"
        ))),
        false => Ok(()),
    }
}

/// Refuses `n` or `best_of` of 0 or above [`MAX_CHOICES`].
pub fn check_choices(name: &str, count: u64) -> Result<()> {
    match count {
        0 => Err(Error::invalid(format!("{name} must be at least 1"))),
        count if count > MAX_CHOICES => {
            Err(Error::invalid(format!("{name} is {count}; at most {MAX_CHOICES} choices may be asked for")))
        }
        _ => Ok(()),
    }
}

/// Refuses a chat of more than [`MAX_CHAT_MESSAGES`] messages.
pub fn check_chat_messages(count: usize) -> Result<()> {
    match count > MAX_CHAT_MESSAGES {
        true => Err(Error::invalid(format!("messages has {count} entries; at most {MAX_CHAT_MESSAGES} are allowed"))),
        false => Ok(()),
    }
}

/// Refuses a prompt of more bytes than any prompt that fits the context can have: the context's
/// tokens each spelled by the vocabulary's longest token. It runs before tokenizing, so a
/// prompt far too long for the model costs nothing.
pub fn check_prompt_bytes(bytes: usize, context_tokens: usize, longest_token_bytes: usize) -> Result<()> {
    let limit = context_tokens.saturating_mul(longest_token_bytes.max(1));
    match bytes > limit {
        true => Err(Error::invalid(format!(
            "the prompt is {bytes} bytes; this model's context of {context_tokens} tokens cannot hold more \
             than {limit} bytes of text"
        ))),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_bounded_in_count_and_length() {
        assert!(check_stop_strings(&vec!["x".to_owned(); MAX_STOP_STRINGS]).is_ok());
        let many = check_stop_strings(&vec!["x".to_owned(); 1_000_000]).unwrap_err().to_string();
        assert!(many.contains("1000000") && many.contains("16"), "{many}");
        let long = check_stop_strings(&["a".into(), "b".repeat(300)]).unwrap_err().to_string();
        assert!(long.contains("stop[1]") && long.contains("300"), "{long}");
    }

    #[test]
    fn counts_over_their_limits_name_both_numbers() {
        assert!(check_embedding_texts(MAX_EMBEDDING_TEXTS).is_ok());
        assert!(check_embedding_texts(MAX_EMBEDDING_TEXTS + 1).unwrap_err().to_string().contains("2049"));
        assert!(check_chat_messages(5000).unwrap_err().to_string().contains("5000"));
    }

    #[test]
    fn a_prompt_longer_than_the_context_could_spell_is_refused_before_tokenizing() {
        assert!(check_prompt_bytes(100, 10, 10).is_ok());
        let err = check_prompt_bytes(101, 10, 10).unwrap_err().to_string();
        assert!(err.contains("101 bytes") && err.contains("100 bytes"), "{err}");
        assert!(check_prompt_bytes(usize::MAX, usize::MAX, usize::MAX).is_ok());
    }
}
