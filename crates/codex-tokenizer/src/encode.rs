//! Encoding and decoding: padding/truncation settings, and a streaming, order-preserving,
//! parallel encoder for large inputs.
//!
//! [`encode_stream`] runs three stages at once: a reader thread cuts the input into batches of
//! lines (checking UTF-8 and counting lines), the calling thread encodes and formats each batch
//! in parallel on the rayon pool, and a writer thread writes the finished bytes. Batches travel
//! through bounded channels in order, so output order equals input order and memory stays at a
//! few batches whatever the input size.

use crate::corpus::InvalidUtf8;
use crate::error::{Result, TokenizerError};
use rayon::prelude::*;
use serde::Serialize;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use tokenizers::utils::padding::{PaddingParams, PaddingStrategy, pad_encodings};
use tokenizers::utils::truncation::TruncationParams;
use tokenizers::{Encoding, Tokenizer};

/// How to pad a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// Remove the tokenizer's padding settings.
    None,
    /// Pad to the longest sequence of each batch.
    Longest,
    /// Pad every sequence to `max_length`.
    MaxLength,
}

/// Overrides of the padding/truncation stored in the tokenizer; `None` keeps what the
/// tokenizer.json says (which is what the Python `tokenizers` package does too).
#[derive(Clone, Debug, Default)]
pub struct EncodeSettings {
    pub padding: Option<Padding>,
    /// `Some(false)` removes truncation; `Some(true)` truncates to `max_length` (or the
    /// tokenizer's own limit).
    pub truncation: Option<bool>,
    /// Limit for truncation and for `Padding::MaxLength`; on its own it turns truncation on.
    pub max_length: Option<usize>,
    /// Pad token for tokenizers that define no padding.
    pub pad_token: Option<String>,
}

/// Applies `settings` to `tokenizer`.
pub fn configure(tokenizer: &mut Tokenizer, settings: &EncodeSettings) -> Result<()> {
    let bad = |message: String| TokenizerError::Encode {
        at: String::new(),
        message,
    };
    if settings.max_length == Some(0) {
        return Err(bad("--max-length must be at least 1".into()));
    }
    let truncate = settings.truncation.or(settings.max_length.map(|_| true));
    match truncate {
        Some(false) => {
            tokenizer
                .with_truncation(None)
                .map_err(|e| bad(e.to_string()))?;
        }
        Some(true) => {
            let mut params = tokenizer.get_truncation().cloned().unwrap_or_default();
            match settings.max_length {
                Some(n) => params.max_length = n,
                None if tokenizer.get_truncation().is_some() => {}
                None => {
                    return Err(bad(
                        "truncation needs a length: give --max-length (the tokenizer sets none)"
                            .into(),
                    ));
                }
            }
            tokenizer
                .with_truncation(Some(TruncationParams {
                    stride: 0,
                    ..params
                }))
                .map_err(|e| bad(e.to_string()))?;
        }
        None => {}
    }
    let Some(padding) = settings.padding else {
        return Ok(());
    };
    if padding == Padding::None {
        tokenizer.with_padding(None);
        return Ok(());
    }
    let mut params = tokenizer
        .get_padding()
        .cloned()
        .unwrap_or_else(|| PaddingParams {
            pad_token: String::new(),
            ..Default::default()
        });
    if let Some(t) = &settings.pad_token {
        params.pad_token = t.clone();
    }
    if params.pad_token.is_empty() {
        params.pad_token = ["[PAD]", "<pad>", "<|pad|>", "<|endoftext|>"]
            .into_iter()
            .find(|t| tokenizer.token_to_id(t).is_some())
            .map(String::from)
            .ok_or_else(|| {
                bad("the tokenizer has no padding settings and no [PAD]/<pad> token; give --pad-token"
                    .into())
            })?;
    }
    params.pad_id = tokenizer.token_to_id(&params.pad_token).ok_or_else(|| {
        bad(format!(
            "pad token '{}' is not in the vocabulary",
            params.pad_token
        ))
    })?;
    params.strategy = match padding {
        Padding::Longest => PaddingStrategy::BatchLongest,
        _ => match settings.max_length {
            Some(n) if n > crate::source::MAX_PAD_LENGTH => {
                return Err(bad(format!(
                    "--max-length {n} for --padding max-length exceeds {} tokens (every document \
                     is padded to it)",
                    crate::source::MAX_PAD_LENGTH
                )));
            }
            Some(n) => PaddingStrategy::Fixed(n),
            None => return Err(bad("--padding max-length needs --max-length".into())),
        },
    };
    tokenizer.with_padding(Some(params));
    Ok(())
}

/// What each encoded document becomes on output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Space-separated ids, one line per document.
    Ids,
    /// One JSON object per line: ids, tokens, offsets (in characters, as Python reports
    /// them), attention mask, special-tokens mask.
    Json,
}

/// How [`encode_stream`] reads and writes.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    pub format: OutputFormat,
    pub add_special_tokens: bool,
    pub invalid_utf8: InvalidUtf8,
    /// One document per line (`true`), or the whole input as one document.
    pub lines: bool,
    /// Approximate input bytes per parallel batch.
    pub batch_bytes: usize,
    /// Most documents per batch: bounds memory when documents are short and padded.
    pub batch_docs: usize,
    /// Input name for error messages (a path, or `<stdin>`).
    pub source_name: String,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            format: OutputFormat::Ids,
            add_special_tokens: true,
            invalid_utf8: InvalidUtf8::Error,
            lines: true,
            batch_bytes: 1 << 20,
            batch_docs: 4096,
            source_name: "<stdin>".into(),
        }
    }
}

/// Totals of one [`encode_stream`] run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StreamStats {
    pub documents: u64,
    pub bytes: u64,
    pub tokens: u64,
}

#[derive(Serialize)]
struct JsonEncoding<'a> {
    ids: &'a [u32],
    tokens: &'a [String],
    offsets: &'a [(usize, usize)],
    attention_mask: &'a [u32],
    special_tokens_mask: &'a [u32],
}

/// Space-separated ids and a newline.
fn format_ids(ids: &[u32], out: &mut Vec<u8>) {
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        push_u32(out, *id);
    }
    out.push(b'\n');
}

/// One encoding, formatted as a line of output.
pub fn format_encoding(enc: &Encoding, format: OutputFormat, out: &mut Vec<u8>) {
    match format {
        OutputFormat::Ids => return format_ids(enc.get_ids(), out),
        OutputFormat::Json => {
            let value = JsonEncoding {
                ids: enc.get_ids(),
                tokens: enc.get_tokens(),
                offsets: enc.get_offsets(),
                attention_mask: enc.get_attention_mask(),
                special_tokens_mask: enc.get_special_tokens_mask(),
            };
            // Serializing plain slices into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, &value);
        }
    }
    out.push(b'\n');
}

fn push_u32(out: &mut Vec<u8>, mut v: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Encodes `texts` in parallel (ids-only uses the offset-free fast path; JSON computes char
/// offsets) and pads the batch as the tokenizer is configured.
pub fn encode_batch(
    tokenizer: &Tokenizer,
    texts: &[String],
    add_special_tokens: bool,
    with_offsets: bool,
) -> tokenizers::Result<Vec<Encoding>> {
    let mut encodings = texts
        .par_iter()
        .map(|t| {
            if with_offsets {
                tokenizer.encode_char_offsets(t.as_str(), add_special_tokens)
            } else {
                tokenizer.encode_fast(t.as_str(), add_special_tokens)
            }
        })
        .collect::<tokenizers::Result<Vec<_>>>()?;
    if let Some(params) = tokenizer.get_padding() {
        pad_encodings(&mut encodings, params)?;
    }
    Ok(encodings)
}

struct Batch {
    first_line: u64,
    texts: Vec<String>,
}

/// Encodes every document of `input` and writes one output line per document, in order.
pub fn encode_stream<R, W>(
    tokenizer: &Tokenizer,
    input: R,
    output: W,
    opts: &StreamOptions,
) -> Result<StreamStats>
where
    R: BufRead + Send,
    W: Write + Send,
{
    let (batch_tx, batch_rx) = sync_channel::<Result<Batch>>(2);
    let (out_tx, out_rx) = sync_channel::<Vec<u8>>(2);
    std::thread::scope(|s| {
        let reader = s.spawn(|| read_batches(input, opts, batch_tx));
        let writer = s.spawn(|| write_chunks(output, out_rx));
        let encoded = encode_batches(tokenizer, opts, &batch_rx, out_tx);
        // Unblock the reader if encoding stopped early.
        drop(batch_rx);
        let write_result = writer.join().unwrap_or_else(|_| Err(panicked("writer")));
        let read_result = reader.join().unwrap_or_else(|_| Err(panicked("reader")));
        // The first failure in pipeline order wins: a write error (e.g. a closed pipe) is
        // what stopped everything else.
        write_result?;
        let stats = encoded?;
        read_result?;
        Ok(stats)
    })
}

fn panicked(what: &str) -> TokenizerError {
    TokenizerError::Encode {
        at: String::new(),
        message: format!("the {what} thread panicked"),
    }
}

fn read_batches<R: BufRead>(
    mut input: R,
    opts: &StreamOptions,
    tx: SyncSender<Result<Batch>>,
) -> Result<()> {
    let mut line = 0u64;
    let mut offset = 0u64;
    let mut buf = Vec::new();
    let mut batch = Batch {
        first_line: 1,
        texts: Vec::new(),
    };
    let mut batch_bytes = 0usize;
    let source = PathBuf::from(&opts.source_name);
    loop {
        buf.clear();
        let n = if opts.lines {
            input.read_until(b'\n', &mut buf)
        } else if line == 0 {
            input.read_to_end(&mut buf)
        } else {
            Ok(0)
        };
        let n = n.map_err(|e| TokenizerError::Read {
            path: source.clone(),
            source: e,
        })?;
        if n == 0 {
            break;
        }
        let start = offset;
        offset += n as u64;
        line += 1;
        if opts.lines && buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        let text = match std::str::from_utf8(&buf) {
            Ok(s) => s.to_owned(),
            Err(e) if opts.invalid_utf8 == InvalidUtf8::Replace => {
                let _ = e;
                String::from_utf8_lossy(&buf).into_owned()
            }
            Err(e) => {
                let bad = e.valid_up_to();
                let extra = buf[..bad].iter().filter(|&&b| b == b'\n').count() as u64;
                let err = TokenizerError::InvalidUtf8 {
                    path: source.clone(),
                    line: line + extra,
                    byte_offset: start + bad as u64,
                };
                let _ = tx.send(Err(err));
                return Ok(());
            }
        };
        batch_bytes += text.len() + 16;
        batch.texts.push(text);
        if batch_bytes >= opts.batch_bytes || batch.texts.len() >= opts.batch_docs.max(1) {
            let next = Batch {
                first_line: line + 1,
                texts: Vec::new(),
            };
            if tx.send(Ok(std::mem::replace(&mut batch, next))).is_err() {
                return Ok(());
            }
            batch_bytes = 0;
        }
    }
    // Text mode on empty input is still one (empty) document.
    if !opts.lines && line == 0 {
        batch.texts.push(String::new());
    }
    if !batch.texts.is_empty() {
        let _ = tx.send(Ok(batch));
    }
    Ok(())
}

fn encode_batches(
    tokenizer: &Tokenizer,
    opts: &StreamOptions,
    rx: &Receiver<Result<Batch>>,
    tx: SyncSender<Vec<u8>>,
) -> Result<StreamStats> {
    let mut stats = StreamStats::default();
    let json = opts.format == OutputFormat::Json;
    // Ids only: the byte-level BPE fast path where the tokenizer allows it (same ids).
    let fast = Some(crate::fast::Encoder::new(tokenizer)).filter(|e| !json && e.is_fast());
    for batch in rx {
        let batch = batch?;
        if codex_core::signal::interrupted() {
            return Err(TokenizerError::Interrupted);
        }
        if let Some(fast) = &fast {
            let at = || format!(" in {} (lines {}..)", opts.source_name, batch.first_line);
            let chunks = batch
                .texts
                .par_chunks(64)
                .map(|texts| {
                    let mut out = Vec::with_capacity(texts.len() * 64);
                    let mut ids = Vec::new();
                    let mut tokens = 0u64;
                    for t in texts {
                        ids.clear();
                        fast.encode_into(t, opts.add_special_tokens, &mut ids)
                            .map_err(|e| TokenizerError::Encode {
                                at: at(),
                                message: e.to_string(),
                            })?;
                        tokens += ids.len() as u64;
                        format_ids(&ids, &mut out);
                    }
                    Ok((out, tokens))
                })
                .collect::<Result<Vec<_>>>()?;
            stats.documents += batch.texts.len() as u64;
            stats.bytes += batch.texts.iter().map(|t| t.len() as u64).sum::<u64>();
            stats.tokens += chunks.iter().map(|c| c.1).sum::<u64>();
            let bytes = chunks.iter().map(|c| c.0.len()).sum();
            let mut joined = Vec::with_capacity(bytes);
            for (c, _) in chunks {
                joined.extend_from_slice(&c);
            }
            if tx.send(joined).is_err() {
                break;
            }
            continue;
        }
        let encodings = encode_batch(tokenizer, &batch.texts, opts.add_special_tokens, json)
            .map_err(|e| TokenizerError::Encode {
                at: format!(" in {} (lines {}..)", opts.source_name, batch.first_line),
                message: e.to_string(),
            })?;
        // Format in parallel too: for short documents it costs as much as encoding.
        let chunks: Vec<Vec<u8>> = encodings
            .par_chunks(256)
            .map(|encs| {
                let mut out = Vec::with_capacity(encs.len() * 64);
                for e in encs {
                    format_encoding(e, opts.format, &mut out);
                }
                out
            })
            .collect();
        stats.documents += batch.texts.len() as u64;
        stats.bytes += batch.texts.iter().map(|t| t.len() as u64).sum::<u64>();
        stats.tokens += encodings.iter().map(|e| e.len() as u64).sum::<u64>();
        if tx.send(chunks.concat()).is_err() {
            // The writer failed; its error is reported by the caller.
            break;
        }
    }
    Ok(stats)
}

fn write_chunks<W: Write>(mut output: W, rx: Receiver<Vec<u8>>) -> Result<()> {
    let stdout = || PathBuf::from("<output>");
    for chunk in rx {
        output
            .write_all(&chunk)
            .map_err(|source| TokenizerError::Write {
                path: stdout(),
                source,
            })?;
    }
    output.flush().map_err(|source| TokenizerError::Write {
        path: stdout(),
        source,
    })
}

/// Parses one line of ids (separated by spaces and/or commas, optionally in `[...]`).
pub fn parse_ids(line: &str) -> std::result::Result<Vec<u32>, String> {
    let inner = line.trim();
    let inner = inner
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(inner);
    inner
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>()
                .map_err(|_| format!("'{s}' is not a token id"))
        })
        .collect()
}

/// Decodes one id sequence; an id outside the vocabulary is an error naming it.
pub fn decode_ids(tokenizer: &Tokenizer, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
    if let Some(bad) = ids.iter().find(|&&id| tokenizer.id_to_token(id).is_none()) {
        return Err(TokenizerError::Decode {
            at: "ids".into(),
            message: format!(
                "id {bad} is not in the vocabulary (size {})",
                tokenizer.get_vocab_size(true)
            ),
        });
    }
    tokenizer
        .decode(ids, skip_special_tokens)
        .map_err(|e| TokenizerError::Decode {
            at: "ids".into(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ids_accepts_spaces_commas_and_brackets() {
        assert_eq!(parse_ids("1 2 3").unwrap(), [1, 2, 3]);
        assert_eq!(parse_ids("[1, 2,3]").unwrap(), [1, 2, 3]);
        assert_eq!(parse_ids("  ").unwrap(), Vec::<u32>::new());
        assert!(parse_ids("1 x").unwrap_err().contains("'x'"));
        assert!(parse_ids("-1").is_err());
    }

    #[test]
    fn push_u32_formats_like_display() {
        for v in [0u32, 7, 10, 99, 12345, u32::MAX] {
            let mut out = Vec::new();
            push_u32(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
    }
}
