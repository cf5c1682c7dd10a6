//! Text ↔ token ids for language models: from a `tokenizer.json` (the `tokenizers` crate's own
//! format), or rebuilt from a GGUF file's metadata when the file carries no `tokenizer.json` (the
//! SmolLM2 GGUF is such a case).
//!
//! From GGUF, byte-level BPE (`tokenizer.ggml.model = gpt2`) is rebuilt from the vocabulary,
//! merges and token types; control and user-defined tokens become special tokens that always match
//! whole. The pre-tokenizer follows `tokenizer.ggml.pre` as llama.cpp does: `smollm` splits every
//! digit before the GPT-2 regex; `gpt2` and `default` use the GPT-2 regex alone. No space is added
//! before the first word (`add_space_prefix` is honoured only when true).

use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use crate::error::{Error, Result};

/// The byte that marks a special token's spelling ([`Tokenizer::spellings`]): never part of
/// UTF-8 text.
pub const SPECIAL_TOKEN_MARKER: u8 = llguidance::toktrie::TokTrie::SPECIAL_TOKEN_MARKER;

/// GGUF token type of control tokens (`<|im_start|>`, `<|endoftext|>`).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of user-defined tokens.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// A model's tokenizer and the ids that matter to generation.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Vec<u32>,
    add_bos: bool,
    /// The bytes each token spells, read on first use ([`Self::spellings`]).
    spellings: OnceLock<std::result::Result<Vec<Vec<u8>>, String>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Parses a `tokenizer.json`. `eos` names the end-of-sequence tokens to stop on. Truncation
    /// and padding settings in the file are dropped: an input over a limit is refused, not cut.
    pub fn from_json(bytes: &[u8], eos: &[&str]) -> Result<Self> {
        let mut inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| invalid_tokenizer(format!("tokenizer.json: {e}")))?;
        inner.with_truncation(None).map_err(|e| invalid_tokenizer(format!("tokenizer.json: {e}")))?.with_padding(None);
        let eos = eos.iter().filter_map(|t| inner.token_to_id(t)).collect();
        Ok(Self { inner, bos: None, eos, add_bos: false, spellings: OnceLock::new() })
    }

    /// Rebuilds the tokenizer described by a GGUF file's metadata.
    pub fn from_gguf(metadata: &HashMap<String, gguf_file::Value>) -> Result<Self> {
        let string = |key: &str| metadata.get(key).and_then(|v| v.to_string().ok()).map(String::as_str);
        let id = |key: &str| metadata.get(key).and_then(|v| v.to_u32().ok());
        let flag = |key: &str| metadata.get(key).and_then(|v| v.to_bool().ok());
        match string("tokenizer.ggml.model") {
            Some("gpt2") => {}
            Some(other) => {
                return Err(invalid_tokenizer(format!(
                    "GGUF tokenizer model {other:?} is not supported (only gpt2 byte-level BPE)"
                )));
            }
            None => return Err(invalid_tokenizer("the GGUF file has no tokenizer.ggml.model".into())),
        }
        let tokens = string_array(metadata, "tokenizer.ggml.tokens")?;
        let merges = string_array(metadata, "tokenizer.ggml.merges")?
            .iter()
            .map(|merge| {
                merge
                    .split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| invalid_tokenizer(format!("malformed merge {merge:?}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let token_types = match metadata.get("tokenizer.ggml.token_type") {
            Some(value) => value
                .to_vec()
                .and_then(|types| types.iter().map(gguf_file::Value::to_i32).collect::<candle_core::Result<Vec<_>>>())
                .map_err(|e| invalid_tokenizer(format!("tokenizer.ggml.token_type: {e}")))?,
            None => vec![1; tokens.len()],
        };
        if token_types.len() != tokens.len() {
            return Err(invalid_tokenizer(format!("{} token types for {} tokens", token_types.len(), tokens.len())));
        }
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, &t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| invalid_tokenizer(format!("building the BPE model: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(flag("tokenizer.ggml.add_space_prefix").unwrap_or(false), false, true);
        let pre_tokenizer: PreTokenizerWrapper = match string("tokenizer.ggml.pre").unwrap_or("default") {
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            "gpt2" | "default" => byte_level.into(),
            other => return Err(invalid_tokenizer(format!("GGUF pre-tokenizer {other:?} is not supported"))),
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevel::default()));
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|&(_, &kind)| kind == TOKEN_TYPE_CONTROL || kind == TOKEN_TYPE_USER_DEFINED)
            .map(|(token, _)| AddedToken::from(token.to_string(), true))
            .collect();
        inner.add_special_tokens(&special);
        Ok(Self {
            inner,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
            add_bos: flag("tokenizer.ggml.add_bos_token").unwrap_or(false),
            spellings: OnceLock::new(),
        })
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) are recognised;
    /// the BOS token is prepended when the model asks for it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::invalid(format!("cannot tokenize the input: {e}")))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if self.add_bos
            && let Some(bos) = self.bos
        {
            ids.push(bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Token ids of `text` with the special tokens the tokenizer's post-processor adds (BERT's
    /// `[CLS]` … `[SEP]`).
    pub fn encode_with_special_tokens(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, true)
            .map_err(|e| Error::invalid(format!("cannot tokenize the input: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`; special tokens are kept when `skip_special` is false.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| Error::invalid(format!("cannot decode token ids: {e}")))
    }

    /// The tokenizer in `tokenizer.json` form, for writing a checkpoint in HF layout.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(|e| invalid_tokenizer(format!("serializing: {e}")))
    }

    /// The tokenizer as GGUF metadata (`tokenizer.ggml.*`), which [`Self::from_gguf`] reads back
    /// as this tokenizer: byte-level BPE only (`gpt2`; `smollm` when digits are split one by one
    /// first), the vocabulary in id order with special tokens typed as control tokens.
    pub fn gguf_metadata(&self) -> Result<Vec<(String, gguf_file::Value)>> {
        use gguf_file::Value;
        let json: serde_json::Value =
            serde_json::from_str(&self.to_json()?).map_err(|e| invalid_tokenizer(format!("its JSON form: {e}")))?;
        let model = &json["model"];
        if model["type"] != "BPE" {
            return Err(invalid_tokenizer(format!(
                "a {} tokenizer cannot be written as GGUF (only byte-level BPE)",
                model["type"].as_str().unwrap_or("model-less")
            )));
        }
        let pre = pre_tokenizer_name(&json["pre_tokenizer"])?;
        let mut tokens: Vec<Option<String>> = vec![None; self.vocab_size()];
        let vocab = model["vocab"].as_object().into_iter().flatten();
        let added = json["added_tokens"].as_array().into_iter().flatten().map(|t| (&t["content"], &t["id"]));
        for (token, id) in
            vocab.map(|(token, id)| (token.as_str(), id)).chain(added.map(|(t, id)| (t.as_str().unwrap_or(""), id)))
        {
            let slot = id.as_u64().and_then(|id| tokens.get_mut(id as usize));
            let slot =
                slot.ok_or_else(|| invalid_tokenizer(format!("token {token:?} has no id within the vocabulary")))?;
            *slot = Some(token.to_owned());
        }
        let tokens = tokens
            .into_iter()
            .enumerate()
            .map(|(id, token)| token.ok_or_else(|| invalid_tokenizer(format!("no token has id {id}"))))
            .collect::<Result<Vec<String>>>()?;
        let special: std::collections::HashSet<&str> = json["added_tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["special"] == true)
            .filter_map(|t| t["content"].as_str())
            .collect();
        let token_types: Vec<Value> = tokens
            .iter()
            .map(|t| Value::I32(if special.contains(t.as_str()) { TOKEN_TYPE_CONTROL } else { 1 }))
            .collect();
        // A merge is written "a b", or as the pair ["a", "b"] by newer versions.
        let merges = model["merges"].as_array().into_iter().flatten().map(|merge| match merge {
            serde_json::Value::String(merge) => Ok(merge.clone()),
            serde_json::Value::Array(pair) if pair.len() == 2 => {
                Ok(format!("{} {}", pair[0].as_str().unwrap_or_default(), pair[1].as_str().unwrap_or_default()))
            }
            other => Err(invalid_tokenizer(format!("malformed merge {other}"))),
        });
        let merges = merges.collect::<Result<Vec<String>>>()?;
        let strings = |items: Vec<String>| Value::Array(items.into_iter().map(Value::String).collect());
        let mut metadata = vec![
            ("tokenizer.ggml.model".to_owned(), Value::String("gpt2".to_owned())),
            ("tokenizer.ggml.pre".to_owned(), Value::String(pre.to_owned())),
            ("tokenizer.ggml.tokens".to_owned(), strings(tokens)),
            ("tokenizer.ggml.token_type".to_owned(), Value::Array(token_types)),
            ("tokenizer.ggml.merges".to_owned(), strings(merges)),
            ("tokenizer.ggml.add_bos_token".to_owned(), Value::Bool(self.add_bos)),
        ];
        if let Some(bos) = self.bos {
            metadata.push(("tokenizer.ggml.bos_token_id".to_owned(), Value::U32(bos)));
        }
        if let Some(&eos) = self.eos.first() {
            metadata.push(("tokenizer.ggml.eos_token_id".to_owned(), Value::U32(eos)));
        }
        Ok(metadata)
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Tokens that end a sequence.
    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    /// The most bytes of text one token spells (special tokens included); a bound on the text a
    /// given number of tokens can hold.
    pub fn longest_token_bytes(&self) -> usize {
        self.inner.get_vocab(true).keys().map(String::len).max().unwrap_or(1)
    }

    /// The bytes every token spells, by id: a byte-level token's own bytes (part of a UTF-8
    /// character, possibly), a special token's text after [`SPECIAL_TOKEN_MARKER`]. Recovered
    /// from the `tokenizer.json` form by llguidance (the same reading its token trie needs), on
    /// first use; refused for a tokenizer that is neither byte-level nor byte-fallback.
    pub fn spellings(&self) -> Result<&[Vec<u8>]> {
        let spellings = self.spellings.get_or_init(|| {
            let json: serde_json::Value = serde_json::from_str(&self.to_json().map_err(|e| e.to_string())?)
                .map_err(|e| format!("the tokenizer's JSON form: {e}"))?;
            llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| e.to_string())
        });
        spellings.as_deref().map_err(|reason| invalid_tokenizer(format!("cannot read the tokens' bytes: {reason}")))
    }

    /// The bytes token `id` spells (a special token's text), as OpenAI's `logprobs` report them;
    /// empty for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        let spelling = self.spellings()?.get(id as usize).map_or(&[][..], Vec::as_slice);
        Ok(spelling.strip_prefix(&[SPECIAL_TOKEN_MARKER]).unwrap_or(spelling))
    }

    /// Vocabulary size, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Turns a growing list of generated ids into text deltas. Byte-level tokens can end inside a
/// UTF-8 character; such bytes are held back until the character is complete, so no delta carries
/// a replacement character that the full text would not. Only a short window of recent ids is
/// decoded per token, so the cost does not grow with the output.
#[derive(Clone, Debug, Default)]
pub struct TextStream {
    /// Start of the window decoded for context.
    prefix: usize,
    /// Ids before this one have been released as text.
    read: usize,
}

impl TextStream {
    /// The text that `ids` (all generated so far) add to what was already released.
    pub fn next(&mut self, tokenizer: &Tokenizer, ids: &[u32]) -> Result<String> {
        let (released, full) = self.window(tokenizer, ids)?;
        if full.len() <= released.len() || full.ends_with('\u{FFFD}') || !full.starts_with(&released) {
            return Ok(String::new());
        }
        self.prefix = self.read;
        self.read = ids.len();
        Ok(full[released.len()..].to_owned())
    }

    /// Whatever is still held back, released when generation ends.
    pub fn finish(&mut self, tokenizer: &Tokenizer, ids: &[u32]) -> Result<String> {
        let (released, full) = self.window(tokenizer, ids)?;
        self.prefix = ids.len();
        self.read = ids.len();
        Ok(full.get(released.len()..).unwrap_or_default().to_owned())
    }

    fn window(&self, tokenizer: &Tokenizer, ids: &[u32]) -> Result<(String, String)> {
        Ok((tokenizer.decode(&ids[self.prefix..self.read], true)?, tokenizer.decode(&ids[self.prefix..], true)?))
    }
}

fn string_array<'a>(metadata: &'a HashMap<String, gguf_file::Value>, key: &str) -> Result<Vec<&'a String>> {
    let values = metadata.get(key).ok_or_else(|| invalid_tokenizer(format!("the GGUF file has no {key}")))?;
    values
        .to_vec()
        .and_then(|items| items.iter().map(gguf_file::Value::to_string).collect::<candle_core::Result<Vec<_>>>())
        .map_err(|e| invalid_tokenizer(format!("{key}: {e}")))
}

/// `tokenizer.ggml.pre` for a `tokenizer.json` pre-tokenizer: the GPT-2 byte-level split
/// (`gpt2`), after one that splits every digit (`smollm`), as [`Tokenizer::from_gguf`] builds
/// them.
fn pre_tokenizer_name(pre: &serde_json::Value) -> Result<&'static str> {
    let byte_level = |p: &serde_json::Value| p["type"] == "ByteLevel" && p["add_prefix_space"] != true;
    let digits = |p: &serde_json::Value| p["type"] == "Digits" && p["individual_digits"] == true;
    let steps = pre["pretokenizers"].as_array().map(Vec::as_slice).unwrap_or_default();
    match steps {
        _ if byte_level(pre) => Ok("gpt2"),
        [first, second] if pre["type"] == "Sequence" && digits(first) && byte_level(second) => Ok("smollm"),
        _ => Err(invalid_tokenizer(format!("the pre-tokenizer {pre} has no GGUF name (gpt2 and smollm are known)"))),
    }
}

fn invalid_tokenizer(reason: String) -> Error {
    Error::ModelFile(format!("tokenizer: {reason}"))
}
