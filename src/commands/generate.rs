//! `codex generate SOURCE`: sample text from a trained model (a run, a checkpoint, an HF
//! directory, a GGUF file, a cached hub id). The prompt is run once through the model, then
//! each new token is one cached forward step (`codex_registry::Decoder`). Text streams to
//! stdout as it is produced; `--json` prints ids, text and per-token log-probs instead.

use crate::ctx::{Ctx, out_json, with_hint};
use anyhow::Context;
use codex_core::exit;
use codex_registry::{Decoder, Sampling, TokenizerRef};
use serde::Serialize;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "The prompt comes from --prompt, --prompt-file, or stdin. \
Exit codes: 0 done, 1 invalid input, 2 internal error, 130 interrupted."
)]
pub struct Args {
    /// A run directory (its best checkpoint; `RUN@best`, `RUN@last`, `RUN@STEP`), a checkpoint
    /// directory, an HF model directory, a .gguf file, or `org/name[@revision]` from the local
    /// hf-hub cache.
    #[arg(value_name = "SOURCE")]
    pub source: String,
    #[arg(long, short = 'p', value_name = "TEXT", conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// Most tokens to generate per sample (fewer if a stop string or the context ends it).
    #[arg(long, short = 'n', default_value_t = 64, value_name = "N")]
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 = greedy (argmax).
    #[arg(long, short = 't', default_value_t = 1.0, value_name = "T")]
    pub temperature: f32,
    /// Sample among the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub top_k: usize,
    /// Sample among the most likely tokens whose probability reaches P (1 = all).
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub top_p: f32,
    /// Penalise tokens already in the sequence (HF's rule; 1 = none).
    #[arg(long, default_value_t = 1.0, value_name = "R")]
    pub repetition_penalty: f32,
    /// Same seed, same output (on the same build and device).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Independent samples from the same prompt (RNG streams 0..N of the seed).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub num_samples: usize,
    /// Stop a sample when its text contains this string (repeatable); the stop string is not
    /// printed.
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Tokenizer: `byte`, or a tokenizer.json (default: the source's own).
    #[arg(long, value_name = "byte|FILE")]
    pub tokenizer: Option<String>,
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    pub device: String,
    #[arg(long, default_value = "f32", value_name = "f32|bf16|f16")]
    pub dtype: String,
}

/// Most prompt bytes read (a prompt beyond the context is refused anyway).
const MAX_PROMPT_BYTES: u64 = 64 << 20;
/// Upper bound on --num-samples: each holds its own cache.
const MAX_SAMPLES: usize = 1024;

/// Text ↔ ids for a model source.
pub enum TextTok {
    Byte,
    Hf(Box<codex_tokenizer::Tokenizer>),
}

impl TextTok {
    /// The tokenizer of `r`, or the one `over` names (`byte` or a file/dir/hub id).
    pub fn open(r: &TokenizerRef, over: Option<&str>) -> anyhow::Result<Self> {
        let load = |s: &str| -> anyhow::Result<Self> {
            Ok(Self::Hf(Box::new(
                codex_tokenizer::load(s).with_context(|| format!("loading tokenizer {s}"))?,
            )))
        };
        match (over, r) {
            (Some("byte"), _) => Ok(Self::Byte),
            (Some(s), _) => load(s),
            (None, TokenizerRef::Byte) => Ok(Self::Byte),
            (None, TokenizerRef::File(p)) => Ok(Self::Hf(Box::new(
                codex_tokenizer::load_file(p)
                    .with_context(|| format!("loading tokenizer {}", p.display()))?,
            ))),
            (None, TokenizerRef::Spec(s)) => load(s),
            (None, TokenizerRef::None) => Err(with_hint(
                anyhow::anyhow!("the model source has no tokenizer"),
                "pass --tokenizer byte or --tokenizer PATH/tokenizer.json",
            )),
        }
    }

    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        Ok(match self {
            Self::Byte => text.bytes().map(u32::from).collect(),
            Self::Hf(t) => t
                .encode(text, false)
                .map_err(|e| anyhow::anyhow!("encoding the prompt: {e}"))?
                .get_ids()
                .to_vec(),
        })
    }

    /// Text of `ids`; an id the byte tokenizer lacks, or an incomplete UTF-8 sequence,
    /// becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        Ok(match self {
            Self::Byte => {
                let bytes: Vec<u8> = ids
                    .iter()
                    .map(|&i| u8::try_from(i).unwrap_or(b'?'))
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Self::Hf(t) => t
                .decode(ids, false)
                .map_err(|e| anyhow::anyhow!("decoding: {e}"))?,
        })
    }
}

#[derive(Serialize)]
struct SampleOut {
    ids: Vec<u32>,
    text: String,
    logprobs: Vec<f32>,
    /// `length` (max tokens), `stop` (a stop string), `context` (the model's context is
    /// full) or `interrupted`.
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Timing {
    prompt_tokens: usize,
    prompt_seconds: f64,
    prompt_tokens_per_s: f64,
    generated_tokens: usize,
    generate_seconds: f64,
    generate_tokens_per_s: f64,
}

fn read_prompt(a: &Args) -> anyhow::Result<String> {
    if let Some(p) = &a.prompt {
        return Ok(p.clone());
    }
    let bytes = if let Some(f) = &a.prompt_file {
        codex_core::fsutil::read_regular_capped(f, MAX_PROMPT_BYTES)
            .with_context(|| format!("reading {}", f.display()))?
    } else {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            return Err(with_hint(
                anyhow::anyhow!("no prompt"),
                "pass --prompt TEXT or --prompt-file FILE, or pipe the prompt on stdin",
            ));
        }
        let mut b = Vec::new();
        stdin
            .lock()
            .take(MAX_PROMPT_BYTES + 1)
            .read_to_end(&mut b)
            .context("reading the prompt from stdin")?;
        if b.len() as u64 > MAX_PROMPT_BYTES {
            anyhow::bail!("the prompt on stdin is over {MAX_PROMPT_BYTES} bytes");
        }
        b
    };
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "the prompt is not UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Streams a sample's text: prints what the decoded text gained since last time, holding back
/// a trailing U+FFFD (a multi-byte character still arriving) and anything that could be the
/// start of a stop string.
struct Streamer<'a> {
    printed: usize,
    stops: &'a [String],
    on: bool,
}

impl Streamer<'_> {
    fn emit(&mut self, text: &str, last: bool) -> std::io::Result<()> {
        if !self.on {
            return Ok(());
        }
        let mut end = text.len();
        if !last {
            if text.ends_with('\u{FFFD}') {
                end -= '\u{FFFD}'.len_utf8();
            }
            // Hold back a suffix that a stop string starts with.
            let hold = self
                .stops
                .iter()
                .flat_map(|s| {
                    (1..s.len())
                        .filter(|&k| s.is_char_boundary(k))
                        .map(|k| &s[..k])
                })
                .filter(|p| text[..end].ends_with(p))
                .map(str::len)
                .max()
                .unwrap_or(0);
            end -= hold;
        }
        if end > self.printed
            && let Some(new) = text.get(self.printed..end)
        {
            let mut out = std::io::stdout().lock();
            out.write_all(new.as_bytes())?;
            out.flush()?;
            self.printed = end;
        }
        Ok(())
    }
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    if a.num_samples == 0 || a.num_samples > MAX_SAMPLES {
        anyhow::bail!("--num-samples must be in 1..={MAX_SAMPLES}");
    }
    if a.stop.iter().any(String::is_empty) {
        anyhow::bail!("--stop needs a non-empty string");
    }
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
    };
    sampling.validate()?;
    let prompt = read_prompt(&a)?;
    let device = codex_registry::parse_device(&a.device)?;
    let dtype = codex_registry::parse_dtype(&a.dtype)?;
    let loaded = codex_registry::load_model(&a.source, &device, dtype)
        .map_err(super::model::registry_err)?;
    let tok = TextTok::open(&loaded.tokenizer, a.tokenizer.as_deref())?;
    let prompt_ids = tok.encode(&prompt)?;
    let model = &loaded.model;
    if prompt_ids.len() >= model.max_positions() {
        anyhow::bail!(
            "the prompt is {} tokens; the model's context is {} (room is needed for new tokens)",
            prompt_ids.len(),
            model.max_positions()
        );
    }
    ctx.info(format!(
        "{}: {} ({} parameters), prompt {} tokens",
        a.source,
        model.origin,
        model.param_counts().total,
        prompt_ids.len()
    ));
    let t0 = Instant::now();
    let base = Decoder::new(model, &prompt_ids, sampling)?;
    let prompt_s = t0.elapsed().as_secs_f64();
    let mut samples = Vec::with_capacity(a.num_samples);
    let mut gen_tokens = 0usize;
    let t1 = Instant::now();
    let mut interrupted = false;
    for i in 0..a.num_samples {
        let mut d = base.fork(i as u64);
        let mut out = SampleOut {
            ids: vec![],
            text: String::new(),
            logprobs: vec![],
            finish_reason: "length",
        };
        let mut st = Streamer {
            printed: 0,
            stops: &a.stop,
            on: !ctx.json,
        };
        if !ctx.json && a.num_samples > 1 && i > 0 {
            println!("\n----");
        }
        while out.ids.len() < a.max_new_tokens {
            if codex_core::signal::interrupted() {
                out.finish_reason = "interrupted";
                interrupted = true;
                break;
            }
            let t = d.choose();
            out.ids.push(t.id);
            out.logprobs.push(t.logprob);
            gen_tokens += 1;
            let text = tok.decode(&out.ids)?;
            if let Some(pos) = a.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                out.text = text[..pos].to_string();
                out.finish_reason = "stop";
                break;
            }
            st.emit(&text, false)?;
            out.text = text;
            if out.ids.len() == a.max_new_tokens {
                break;
            }
            if d.room() == 0 {
                out.finish_reason = "context";
                break;
            }
            d.push(t.id)?;
        }
        st.emit(&out.text, true)?;
        if interrupted {
            samples.push(out);
            break;
        }
        samples.push(out);
    }
    let gen_s = t1.elapsed().as_secs_f64();
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let timing = Timing {
        prompt_tokens: prompt_ids.len(),
        prompt_seconds: prompt_s,
        prompt_tokens_per_s: rate(prompt_ids.len(), prompt_s),
        generated_tokens: gen_tokens,
        generate_seconds: gen_s,
        generate_tokens_per_s: rate(gen_tokens, gen_s),
    };
    if ctx.json {
        out_json(&serde_json::json!({
            "source": a.source,
            "model": model.origin,
            "prompt": prompt,
            "prompt_ids": prompt_ids,
            "sampling": {
                "temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p,
                "repetition_penalty": a.repetition_penalty, "seed": a.seed,
            },
            "samples": samples,
            "timing": timing,
        }))?;
    } else {
        println!();
    }
    ctx.info(format!(
        "prompt: {} tokens in {:.1} ms ({:.0} tokens/s); generation: {} tokens in {:.2} s ({:.1} tokens/s)",
        timing.prompt_tokens,
        prompt_s * 1e3,
        timing.prompt_tokens_per_s,
        gen_tokens,
        gen_s,
        timing.generate_tokens_per_s
    ));
    Ok(if interrupted {
        exit::INTERRUPTED
    } else {
        exit::OK
    })
}
