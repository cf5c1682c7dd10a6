//! Constrained decoding: a JSON schema (OpenAI's `response_format`, a tool's parameters) compiled
//! into a [`Constraint`] that masks, before every token, whatever cannot continue text the schema
//! accepts, so the output is valid JSON matching it every time. The grammar engine is
//! `llguidance` (vLLM, SGLang and llama.cpp use it): it compiles JSON schemas to an Earley
//! grammar with a lexer over the model's own token bytes and computes a step's mask in tens of
//! microseconds; a hand-written JSON-schema compiler would be neither as complete nor as fast.
//!
//! [`Grammars`] is built once per vocabulary (the token trie and the lexer's token slices take
//! a while) and compiles a schema per request; a [`Constraint`] is one sequence's parser state.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};

use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};

/// The schema key that carries llguidance's JSON options; a schema that sets it keeps its own.
const GUIDANCE_OPTIONS: &str = "x-guidance";

/// JSON written one way, `{"a": 1, "b": [2, 3]}`: with whitespace left free, a small model
/// spends its tokens on runs of spaces and tabs between the fields.
static COMPACT: std::sync::LazyLock<JsonCompileOptions> = std::sync::LazyLock::new(|| JsonCompileOptions {
    item_separator: ", ".into(),
    key_separator: ": ".into(),
    whitespace_flexible: false,
    ..JsonCompileOptions::default()
});

/// Compiles schemas against one model's vocabulary.
pub struct Grammars {
    factory: ParserFactory,
    /// The model's end-of-sequence tokens: all allowed where the grammar allows its one.
    eos: Arc<[u32]>,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").field("eos", &self.eos).finish_non_exhaustive()
    }
}

impl Grammars {
    /// The compiler for `tokenizer`'s vocabulary. Fails for a tokenizer whose token bytes cannot
    /// be recovered (neither byte-level nor byte-fallback) or that has no end-of-sequence token.
    pub fn new(tokenizer: &Tokenizer) -> Result<Self> {
        let eos: Arc<[u32]> = tokenizer.eos().into();
        let &first_eos = eos.first().ok_or_else(|| unsupported("the tokenizer names no end-of-sequence token"))?;
        let spellings = tokenizer.spellings()?;
        let info = TokRxInfo::new(spellings.len() as u32, first_eos);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, spellings)));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| unsupported(&e.to_string()))?;
        factory.quiet();
        Ok(Self { factory, eos })
    }

    /// A constraint to text matching `schema` (a JSON Schema; `{"type": "object"}` is any
    /// object). A schema the engine cannot compile is refused with the engine's reason, which
    /// names the construct.
    pub fn json_schema(&self, schema: &serde_json::Value) -> Result<Constraint> {
        if !schema.is_object() {
            return Err(Error::invalid(format!("a JSON schema must be an object, got {schema}")));
        }
        let mut schema = schema.clone();
        if schema.get(GUIDANCE_OPTIONS).is_none() {
            COMPACT.apply_to(&mut schema);
        }
        let grammar = TopLevelGrammar::from_json_schema(schema);
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| Error::invalid(format!("the JSON schema cannot be used for constrained decoding: {e}")))?;
        Ok(Constraint { matcher: Matcher::new(Ok(parser)), eos: self.eos.clone() })
    }
}

/// One sequence's place in a grammar.
pub struct Constraint {
    matcher: Matcher,
    eos: Arc<[u32]>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("stopped", &self.matcher.is_stopped()).finish_non_exhaustive()
    }
}

impl Clone for Constraint {
    /// An independent copy: what one sequence consumes does not move the other.
    fn clone(&self) -> Self {
        Self { matcher: self.matcher.deep_clone(), eos: self.eos.clone() }
    }
}

impl Constraint {
    /// Sets to `-inf` every logit of a token that cannot come next (tokens past the vocabulary
    /// included); the end-of-sequence tokens stay only where the text so far is complete, and
    /// alone once it cannot go on.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let allowed = self.matcher.compute_mask_or_eos().map_err(grammar_failed)?;
        // The grammar knows one end-of-sequence token; the model's others end text as well.
        let ends: Vec<(usize, f32)> = match allowed.is_allowed(self.eos[0]) {
            true => self.eos.iter().filter_map(|&t| Some((t as usize, *logits.get(t as usize)?))).collect(),
            false => Vec::new(),
        };
        let vocab = allowed.len();
        for (token, logit) in logits.iter_mut().enumerate() {
            if token >= vocab || !allowed.is_allowed(token as u32) {
                *logit = f32::NEG_INFINITY;
            }
        }
        for (token, logit) in ends {
            logits[token] = logit;
        }
        Ok(())
    }

    /// Moves past `token`, which [`Self::mask`] allowed.
    pub fn accept(&mut self, token: u32) -> Result<()> {
        self.matcher.consume_token(token).map_err(grammar_failed)
    }

    /// Whether the text is complete and nothing may follow: the sequence ends here.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

fn unsupported(reason: &str) -> Error {
    Error::invalid(format!("constrained decoding is not available for this model: {reason}"))
}

fn grammar_failed(error: impl std::fmt::Display) -> Error {
    Error::invalid(format!("constrained decoding failed: {error}"))
}
