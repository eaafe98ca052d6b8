//! Builds a `tokenizers` BPE tokenizer from the vocabulary, merges and token
//! types a GGUF file carries (`tokenizer.ggml.*`), so a model needs nothing
//! but its one weights file.

use anyhow::{Context, bail};
use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::{
    AddedToken, Tokenizer,
    decoders::byte_level::ByteLevel as ByteLevelDecoder,
    models::bpe::{BPE, Vocab},
    pre_tokenizers::{
        PreTokenizerWrapper, byte_level::ByteLevel, digits::Digits, sequence::Sequence,
    },
};

/// GGUF token type of control tokens (`<|im_start|>`, ...).
const CONTROL_TOKEN: i32 = 3;

fn metadata<'a>(content: &'a Content, key: &str) -> anyhow::Result<&'a Value> {
    content
        .metadata
        .get(key)
        .with_context(|| format!("GGUF has no {key}"))
}

fn strings(content: &Content, key: &str) -> anyhow::Result<Vec<String>> {
    metadata(content, key)?
        .to_vec()?
        .iter()
        .map(|v| Ok(v.to_string()?.clone()))
        .collect()
}

/// The tokenizer of a GGUF with a byte-level BPE (`gpt2`) vocabulary.
pub fn from_gguf(content: &Content) -> anyhow::Result<Tokenizer> {
    let model = metadata(content, "tokenizer.ggml.model")?.to_string()?;
    if model != "gpt2" {
        bail!("unsupported GGUF tokenizer {model:?} (only byte-level BPE, \"gpt2\")");
    }
    let tokens = strings(content, "tokenizer.ggml.tokens")?;
    let merges = strings(content, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|merge| {
            let (left, right) = merge
                .split_once(' ')
                .with_context(|| format!("malformed GGUF merge {merge:?}"))?;
            Ok((left.to_string(), right.to_string()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), id as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| anyhow::anyhow!("building BPE: {e}"))?;

    let mut tokenizer = Tokenizer::new(bpe);
    // The "smollm" pre-tokenizer of llama.cpp: digits one by one, then the
    // GPT-2 byte-level split.
    let split = Sequence::new(vec![
        PreTokenizerWrapper::Digits(Digits::new(true)),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ]);
    tokenizer.with_pre_tokenizer(Some(split));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    // Control tokens match as a whole in text and never reach the BPE.
    let types = metadata(content, "tokenizer.ggml.token_type")?.to_vec()?;
    let specials: Vec<AddedToken> = types
        .iter()
        .zip(&tokens)
        .filter(|(kind, _)| kind.to_i32().ok() == Some(CONTROL_TOKEN))
        .map(|(_, token)| AddedToken::from(token.clone(), true))
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| anyhow::anyhow!("adding control tokens: {e}"))?;
    Ok(tokenizer)
}

/// Token ids that end a turn: the GGUF's end-of-sequence token, and the
/// chat template's end-of-turn marker when the vocabulary has one.
pub fn end_of_turn_ids(content: &Content, tokenizer: &Tokenizer) -> Vec<u32> {
    let mut ids = Vec::new();
    if let Ok(eos) = metadata(content, "tokenizer.ggml.eos_token_id").and_then(|v| Ok(v.to_u32()?))
    {
        ids.push(eos);
    }
    for marker in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>"] {
        if let Some(id) = tokenizer.token_to_id(marker)
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    ids
}
