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
    after_help = "The prompt comes from --prompt, --prompt-file, or stdin.\n\n\
Safety (unless --no-safety; the embedded policy unless --policy): the prompt stage is applied \
before encoding (a block refuses the prompt, exit 1, naming the rules; redactions are what the \
model sees). The output stage is applied a line at a time: a line is printed once complete, \
redacted; a block match stops the sample (finish_reason `safety`) and withholds the matched \
text and what follows. Literals of block rules for the output stage are banned strings: a token \
whose text contains one, or whose addition would complete one, gets logit -inf before \
sampling. CODEX_SAFETY_BYPASS=1 or the policy's `bypass` lets blocks through, recorded.\n\n\
Exit codes: 0 done, 1 invalid input or a blocked prompt, 2 internal error, 130 interrupted."
)]
pub struct Args {
    /// A run directory (its best checkpoint; `RUN@best`, `RUN@last`, `RUN@STEP`), a checkpoint
    /// directory, an HF model directory, a .gguf file, or `org/name[@revision]` from the local
    /// hf-hub cache.
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// The prompt text (else --prompt-file, else stdin).
    #[arg(long, short = 'p', value_name = "TEXT", conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file (UTF-8).
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
    /// Keep generating past the model's end-of-sequence token(s) (generation_config.json
    /// `eos_token_id`, GGUF `tokenizer.ggml.eos_token_id`).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Safety policy for the prompt and the output (TOML, or the original's YAML/JSON;
    /// default: the embedded policy).
    #[arg(long, value_name = "FILE", conflicts_with = "no_safety")]
    pub policy: Option<PathBuf>,
    /// Apply no safety policy (no prompt check, no output check, no banned-token mask).
    #[arg(long)]
    pub no_safety: bool,
    /// Where to run: the CPU, or a CUDA GPU (builds with the `cuda` feature).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    pub device: String,
    /// Weights dtype (on the CPU, bf16/f16 weights compute in f32).
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

    /// [`TextTok::open`], and for a GGUF file without a tokenizer reference, the tokenizer in
    /// its `tokenizer.ggml.*` metadata.
    pub fn for_source(
        r: &TokenizerRef,
        src: &codex_registry::ModelSource,
        over: Option<&str>,
    ) -> anyhow::Result<Self> {
        if let (None, TokenizerRef::None, codex_registry::ModelSource::Gguf(path)) = (over, r, src)
            && let Some(t) = codex_registry::gguf::read_gguf_tokenizer(path)?
        {
            let json = t.to_tokenizer_json().map_err(|e| {
                with_hint(
                    anyhow::anyhow!("{}: {e}", path.display()),
                    "pass --tokenizer PATH/tokenizer.json (or byte)",
                )
            })?;
            let json = serde_json::to_vec(&json)?;
            let tok = codex_tokenizer::parse(&json, path)
                .with_context(|| format!("the tokenizer in {}", path.display()))?;
            return Ok(Self::Hf(Box::new(tok)));
        }
        Self::open(r, over)
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
    /// `length` (max tokens), `stop` (a stop string), `eos` (the end-of-sequence token, kept
    /// in `ids`, not in `text`), `safety` (an output block rule matched, or every token was
    /// banned), `context` (the model's context is full) or `interrupted`.
    finish_reason: &'static str,
    /// The output stage's blocking rule ids when `finish_reason` is `safety`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    blocked_by: Vec<String>,
    /// Choices turned away because they would complete a banned string across tokens (ids
    /// whose own text holds one are masked before every choice and not counted here).
    masked_choices: usize,
}

/// What the safety policy did, for stderr and `--json`.
#[derive(Serialize)]
struct SafetyOut {
    policy: String,
    policy_sha256: String,
    bypass: bool,
    /// Per-rule counts on the prompt (the model saw the redacted prompt).
    prompt: codex_safety::Tally,
    /// Per-rule counts on the released output of every sample (one document per line).
    output: codex_safety::Tally,
    banned_strings: usize,
    /// Token ids whose own text contains a banned string (masked at every step).
    banned_token_ids: usize,
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

/// The end of what may be shown of `text` while a sample is still growing: a trailing U+FFFD
/// (a multi-byte character still arriving) and any suffix that a stop string starts with are
/// held back.
fn stable_end(text: &str, stops: &[String]) -> usize {
    let mut end = text.len();
    if text.ends_with('\u{FFFD}') {
        end -= '\u{FFFD}'.len_utf8();
    }
    let hold = stops
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
    end - hold
}

/// Streams a sample's text: prints what `text[..end]` gained since last time.
struct Streamer {
    printed: usize,
    on: bool,
}

impl Streamer {
    fn emit(&mut self, text: &str, end: usize) -> std::io::Result<()> {
        if !self.on {
            return Ok(());
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

/// The policy in force and what it needs precomputed.
struct Safety {
    policy: codex_safety::Policy,
    bypass: bool,
    banned: codex_safety::guard::Banned,
    /// Ids whose own text contains a banned string.
    banned_ids: Vec<u32>,
    output_rules: bool,
}

impl Safety {
    fn load(a: &Args) -> anyhow::Result<Option<Self>> {
        if a.no_safety {
            return Ok(None);
        }
        let policy = codex_safety::Policy::load_or_default(a.policy.as_deref())?;
        if !policy.enabled {
            return Ok(None);
        }
        let bypass = codex_safety::bypass_from_env();
        let banned = codex_safety::guard::Banned::of(&policy, bypass);
        let output_rules = codex_safety::guard::OutputFilter::applies(&policy);
        Ok(Some(Self {
            policy,
            bypass,
            banned,
            banned_ids: vec![],
            output_rules,
        }))
    }

    /// Every id of the model's vocabulary whose decoded text contains a banned string.
    fn mask_vocab(&mut self, tok: &TextTok, vocab: usize) -> anyhow::Result<()> {
        if self.banned.is_empty() {
            return Ok(());
        }
        for id in 0..vocab as u32 {
            if self.banned.found_in(tok.decode(&[id])?.as_bytes()) {
                self.banned_ids.push(id);
            }
        }
        Ok(())
    }
}

/// Stage `prompt`: the text the model sees, or a refusal naming the rules (never the text).
fn guard_prompt(
    ctx: &Ctx,
    s: &Safety,
    prompt: String,
) -> anyhow::Result<(String, codex_safety::Tally)> {
    use codex_safety::guard::{PromptCheck, check_prompt};
    let mut tally = codex_safety::Tally::default();
    match check_prompt(&s.policy, &prompt, s.bypass) {
        PromptCheck::Blocked { rules, at } => {
            let at: Vec<String> = at.iter().map(|(l, c)| format!("{l}:{c}")).collect();
            Err(with_hint(
                anyhow::anyhow!(
                    "the prompt is blocked by the safety policy {}: {} (at {})",
                    s.policy.source,
                    rules.join(", "),
                    at.join(", ")
                ),
                "remove the matched text, pass --policy FILE with an allow rule, or --no-safety",
            ))
        }
        PromptCheck::Pass { text, verdict } => {
            tally.add(&s.policy, &verdict);
            if verdict.bypassed {
                ctx.warn(format!(
                    "safety bypass: the prompt matched block rule(s) {} and was let through",
                    rule_ids(&s.policy, &verdict, codex_safety::Disposition::Bypassed)
                ));
            }
            if verdict.needs_redaction() {
                ctx.info(format!(
                    "safety: the prompt was redacted ({}) before encoding",
                    rule_ids(&s.policy, &verdict, codex_safety::Disposition::Redacted)
                ));
            }
            Ok((text, tally))
        }
    }
}

fn rule_ids(
    p: &codex_safety::Policy,
    v: &codex_safety::Verdict,
    d: codex_safety::Disposition,
) -> String {
    let mut ids: Vec<&str> = v
        .findings
        .iter()
        .filter(|f| f.disposition == d)
        .map(|f| p.rules[f.rule].id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.join(", ")
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
    let mut safety = Safety::load(&a)?;
    let prompt = read_prompt(&a)?;
    // Before anything is loaded or encoded: a refused prompt goes nowhere.
    let (prompt, prompt_tally) = match &safety {
        Some(s) => guard_prompt(ctx, s, prompt)?,
        None => (prompt, codex_safety::Tally::default()),
    };
    let device = codex_registry::parse_device(&a.device)?;
    let dtype = codex_registry::parse_dtype(&a.dtype)?;
    let loaded = codex_registry::load_model(&a.source, &device, dtype)
        .map_err(super::model::registry_err)?;
    let tok = TextTok::for_source(&loaded.tokenizer, &loaded.source, a.tokenizer.as_deref())?;
    let eos: Vec<u32> = if a.ignore_eos {
        vec![]
    } else {
        codex_registry::generate::eos_ids(&loaded.source).map_err(super::model::registry_err)?
    };
    let prompt_ids = tok.encode(&prompt)?;
    let model = &loaded.model;
    if let Some(s) = &mut safety {
        s.mask_vocab(&tok, model.vocab_size())?;
    }
    if prompt_ids.len() >= model.max_positions() {
        anyhow::bail!(
            "the prompt is {} tokens; the model's context is {} (room is needed for new tokens)",
            prompt_ids.len(),
            model.max_positions()
        );
    }
    ctx.info(format!(
        "{}: {} ({} parameters), prompt {} tokens{}{}",
        a.source,
        model.origin,
        model.param_counts().total,
        prompt_ids.len(),
        if eos.is_empty() {
            String::new()
        } else {
            format!(", eos {eos:?}")
        },
        match &safety {
            None => ", no safety policy".to_string(),
            Some(s) => format!(
                ", safety policy {} ({} banned strings, {} banned token ids)",
                s.policy.source,
                s.banned.strings.len(),
                s.banned_ids.len()
            ),
        }
    ));
    let t0 = Instant::now();
    let base = Decoder::new(model, &prompt_ids, sampling)?;
    let prompt_s = t0.elapsed().as_secs_f64();
    let mut samples = Vec::with_capacity(a.num_samples);
    let mut gen_tokens = 0usize;
    let mut output_tally = codex_safety::Tally::default();
    let t1 = Instant::now();
    let mut interrupted = false;
    for i in 0..a.num_samples {
        let mut d = base.fork(i as u64);
        let mut out = SampleOut {
            ids: vec![],
            text: String::new(),
            logprobs: vec![],
            finish_reason: "length",
            blocked_by: vec![],
            masked_choices: 0,
        };
        let mut filter = safety
            .as_ref()
            .filter(|s| s.output_rules)
            .map(|s| codex_safety::guard::OutputFilter::new(&s.policy, s.bypass));
        let mut st = Streamer {
            printed: 0,
            on: !ctx.json,
        };
        if !ctx.json && a.num_samples > 1 && i > 0 {
            println!("\n----");
        }
        // The raw (unfiltered) text of the sample so far.
        let mut raw = String::new();
        while out.ids.len() < a.max_new_tokens {
            if codex_core::signal::interrupted() {
                out.finish_reason = "interrupted";
                interrupted = true;
                break;
            }
            // Choose; a token that would complete a banned string is masked and the choice
            // made again from the rest (at most the vocabulary's size of times).
            let mut turned_away: Vec<u32> = vec![];
            let picked = loop {
                let banned_ids = safety.as_ref().map_or(&[][..], |s| &s.banned_ids[..]);
                let Some(t) = d.choose_masked(banned_ids, &turned_away) else {
                    break None;
                };
                let Some(s) = safety.as_ref().filter(|s| !s.banned.is_empty()) else {
                    break Some((t, None));
                };
                let mut ids = out.ids.clone();
                ids.push(t.id);
                let text = tok.decode(&ids)?;
                if s.banned.found_in(text.as_bytes()) {
                    turned_away.push(t.id);
                    continue;
                }
                break Some((t, Some(text)));
            };
            out.masked_choices += turned_away.len();
            let Some((t, decoded)) = picked else {
                out.finish_reason = "safety";
                out.blocked_by = vec!["every token is banned".into()];
                break;
            };
            out.ids.push(t.id);
            out.logprobs.push(t.logprob);
            gen_tokens += 1;
            if eos.contains(&t.id) {
                out.finish_reason = "eos";
                break;
            }
            let text = match decoded {
                Some(text) => text,
                None => tok.decode(&out.ids)?,
            };
            if let Some(pos) = a.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                raw = text[..pos].to_string();
                out.finish_reason = "stop";
                break;
            }
            raw = text;
            let stable = stable_end(&raw, &a.stop);
            match &mut filter {
                Some(f) => {
                    if !f.update(&raw, stable) {
                        out.finish_reason = "safety";
                        break;
                    }
                    st.emit(f.released(), f.released().len())?;
                }
                None => st.emit(&raw, stable)?,
            }
            if out.ids.len() == a.max_new_tokens {
                break;
            }
            if d.room() == 0 {
                out.finish_reason = "context";
                break;
            }
            d.push(t.id)?;
        }
        match &mut filter {
            Some(f) => {
                if !f.finish(&raw) {
                    out.finish_reason = "safety";
                }
                if let Some(rules) = &f.blocked {
                    out.blocked_by = rules.clone();
                }
                out.text = f.released().to_string();
                merge_tally(&mut output_tally, &f.tally);
            }
            None => out.text = raw,
        }
        st.emit(&out.text, out.text.len())?;
        if out.finish_reason == "safety" {
            ctx.warn(format!(
                "sample {i}: stopped by the safety policy ({}); the matched text is withheld",
                out.blocked_by.join(", ")
            ));
        }
        samples.push(out);
        if interrupted {
            break;
        }
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
    let safety_out = safety.as_ref().map(|s| SafetyOut {
        policy: s.policy.source.clone(),
        policy_sha256: s.policy.hash.clone(),
        bypass: s.bypass || s.policy.bypass,
        prompt: prompt_tally.clone(),
        output: output_tally.clone(),
        banned_strings: s.banned.strings.len(),
        banned_token_ids: s.banned_ids.len(),
    });
    if let Some(s) = &safety_out {
        let hits = |t: &codex_safety::Tally| {
            t.rules
                .iter()
                .map(|(id, c)| format!("{id} ×{}", c.matches))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !s.output.rules.is_empty() {
            ctx.info(format!("safety: output matches: {}", hits(&s.output)));
        }
    }
    if ctx.json {
        out_json(&serde_json::json!({
            "source": a.source,
            "model": model.origin,
            "prompt": prompt,
            "prompt_ids": prompt_ids,
            "eos_token_ids": eos,
            "sampling": {
                "temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p,
                "repetition_penalty": a.repetition_penalty, "seed": a.seed,
            },
            "samples": samples,
            "safety": safety_out,
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

/// Adds `b`'s per-rule counts into `a`.
fn merge_tally(a: &mut codex_safety::Tally, b: &codex_safety::Tally) {
    a.documents += b.documents;
    a.documents_blocked += b.documents_blocked;
    a.documents_bypassed += b.documents_bypassed;
    a.documents_redacted += b.documents_redacted;
    for (id, c) in &b.rules {
        let e = a
            .rules
            .entry(id.clone())
            .or_insert_with(|| codex_safety::tally::RuleCount {
                action: c.action.clone(),
                severity: c.severity.clone(),
                ..Default::default()
            });
        e.matches += c.matches;
        e.documents += c.documents;
        for (k, n) in &c.by_disposition {
            *e.by_disposition.entry(k.clone()).or_default() += n;
        }
    }
}
