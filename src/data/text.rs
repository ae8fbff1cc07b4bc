//! Text for character-level language models: a tokenizer whose vocabulary is the corpus's
//! characters, and random windows of a token stream as (input, next-token target) batches.

use crate::{Device, Error, Generator, Result, Tensor};

/// The shipped corpus: eight of Shakespeare's plays, about 1 MB (`data/shakespeare`, provenance
/// in `data/README.md`).
pub fn shipped_plays() -> &'static str {
    include_str!("../../data/shakespeare/plays.txt")
}

/// Maps each distinct character of a corpus to an id (in the characters' sorted order) and back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharTokenizer {
    chars: Vec<char>,
}

impl CharTokenizer {
    /// The tokenizer of `corpus`'s distinct characters. An empty corpus is an error.
    pub fn from_corpus(corpus: &str) -> Result<Self> {
        let mut chars: Vec<char> = corpus.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        if chars.is_empty() {
            return Err(Error::invalid("tokenizer", "the text is empty: no characters to build a vocabulary from"));
        }
        Ok(CharTokenizer { chars })
    }

    /// The tokenizer whose vocabulary is `vocabulary`'s characters in that order (as stored in
    /// a checkpoint by [`CharTokenizer::vocabulary`]); repeated characters are an error.
    pub fn from_vocabulary(vocabulary: &str) -> Result<Self> {
        let chars: Vec<char> = vocabulary.chars().collect();
        let mut sorted = chars.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != chars.len() || chars.is_empty() {
            return Err(Error::invalid("tokenizer", "a vocabulary must list distinct characters, at least one"));
        }
        Ok(CharTokenizer { chars })
    }

    /// The vocabulary as one string, id order.
    pub fn vocabulary(&self) -> String {
        self.chars.iter().collect()
    }

    /// The number of ids.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Whether the vocabulary is empty (never, for a built tokenizer).
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The ids of `text`; a character outside the vocabulary is an error naming it and where.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        text.chars()
            .enumerate()
            .map(|(at, c)| {
                self.chars.binary_search(&c).map(|i| i as i64).or_else(|_| {
                    // A vocabulary from a checkpoint may not be sorted: fall back to a scan.
                    self.chars.iter().position(|&v| v == c).map(|i| i as i64).ok_or_else(|| {
                        Error::invalid(
                            "tokenizer",
                            format!("character {c:?} (at {at}) is not in the vocabulary of {} characters", self.len()),
                        )
                    })
                })
            })
            .collect()
    }

    /// The text of `ids`; an id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        ids.iter()
            .map(|&id| {
                usize::try_from(id).ok().and_then(|i| self.chars.get(i).copied()).ok_or_else(|| {
                    Error::invalid(
                        "tokenizer",
                        format!("id {id} is outside the vocabulary of {} characters", self.len()),
                    )
                })
            })
            .collect()
    }
}

/// A token stream cut into random windows: inputs `[B, T]` and targets `[B, T]` (the next token
/// of each input position), as nanoGPT's `get_batch`.
#[derive(Clone, Debug)]
pub struct TokenStream {
    tokens: Vec<i64>,
}

impl TokenStream {
    /// A stream of `tokens`.
    pub fn new(tokens: Vec<i64>) -> Self {
        TokenStream { tokens }
    }

    /// The first `fraction` of the stream and the rest (0.9 gives train and validation).
    pub fn split(&self, fraction: f64) -> Result<(TokenStream, TokenStream)> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(Error::invalid("split", format!("fraction {fraction} is not in [0, 1]")));
        }
        let cut = (self.tokens.len() as f64 * fraction) as usize;
        Ok((TokenStream::new(self.tokens[..cut].to_vec()), TokenStream::new(self.tokens[cut..].to_vec())))
    }

    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the stream is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// `batch` windows of `context` tokens at random offsets (inputs, targets), on `device`.
    pub fn random_batch(
        &self,
        batch: usize,
        context: usize,
        rng: &mut Generator,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        if self.tokens.len() <= context || context == 0 || batch == 0 {
            return Err(Error::invalid(
                "text",
                format!("{} tokens cannot give windows of {context} (+1) tokens, {batch} at a time", self.tokens.len()),
            ));
        }
        let (mut x, mut y) = (Vec::with_capacity(batch * context), Vec::with_capacity(batch * context));
        for _ in 0..batch {
            let start = rng.below((self.tokens.len() - context) as u64)? as usize;
            x.extend_from_slice(&self.tokens[start..start + context]);
            y.extend_from_slice(&self.tokens[start + 1..start + context + 1]);
        }
        Ok((Tensor::from_vec(x, &[batch, context], device)?, Tensor::from_vec(y, &[batch, context], device)?))
    }
}
