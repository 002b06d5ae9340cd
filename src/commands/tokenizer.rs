//! `codex tokenizer train|encode|decode|validate`: the CLI over `codex_tokenizer`.

use crate::ctx::{Ctx, out_json, out_line};
use codex_core::exit;
use codex_tokenizer::corpus::{CorpusSpec, InvalidUtf8};
use codex_tokenizer::encode::{self, EncodeSettings, OutputFormat, Padding, StreamOptions};
use codex_tokenizer::{ModelKind, Normalization, TokenizerError, TrainConfig};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Train a tokenizer on a corpus; writes OUT/tokenizer.json and OUT/manifest.json.
    Train(TrainArgs),
    /// Encode text to token ids (text argument, --file, or stdin).
    Encode(EncodeArgs),
    /// Decode token ids back to text (ids as arguments, --file, or stdin; one sequence a line).
    Decode(DecodeArgs),
    /// Report vocab size, unk rate, round-trip mismatches, tokens per byte/char, special tokens;
    /// exit 1 when a problem is found.
    #[command(after_help = VALIDATE_PROBLEMS)]
    Validate(ValidateArgs),
}

const VALIDATE_PROBLEMS: &str = "\
Problems (each is listed; any makes the exit status 1):
  - an expected special token is missing, or does not encode as exactly its own id
  - manifest.json next to the tokenizer is unreadable or its tokenizer_sha256 does not match
  - a corpus INPUT matches no files
  - the unknown-token rate is above --max-unk-rate (default 0.01)
  - the round-trip mismatch rate (decode(encode(x)) != normalize(x), per document) is above
    --max-roundtrip-mismatch-rate; default 0 for byte-level tokenizers (byte-level
    pre-tokenizer or byte fallback), which are lossless by design, and no limit for the
    others (WordPiece, WordLevel, Unigram), whose decoders cannot restore spacing";

#[derive(Copy, Clone, Debug, clap::ValueEnum)]
enum ModelArg {
    Bpe,
    Wordpiece,
    Unigram,
}

#[derive(Copy, Clone, Debug, clap::ValueEnum)]
enum NormArg {
    None,
    Nfc,
    Nfd,
    Nfkc,
    Nfkd,
    Lowercase,
    NfkcLowercase,
}

#[derive(Copy, Clone, Debug, clap::ValueEnum)]
enum PadArg {
    None,
    Longest,
    MaxLength,
}

#[derive(clap::Args, Debug)]
struct CorpusArgs {
    /// Read inputs as JSON Lines and take the text from this field (`a.b` for nested
    /// fields), as `data.text_field` in a training config.
    #[arg(long = "text-field", alias = "jsonl-field", value_name = "FIELD")]
    jsonl_field: Option<String>,
    /// Replace invalid UTF-8 with U+FFFD instead of failing.
    #[arg(long)]
    replace_invalid: bool,
}

impl CorpusArgs {
    fn spec(&self, inputs: &[String]) -> CorpusSpec {
        CorpusSpec {
            inputs: inputs.to_vec(),
            jsonl_field: self.jsonl_field.clone(),
            invalid_utf8: invalid_utf8(self.replace_invalid),
            ..CorpusSpec::default()
        }
    }
}

fn invalid_utf8(replace: bool) -> InvalidUtf8 {
    if replace {
        InvalidUtf8::Replace
    } else {
        InvalidUtf8::Error
    }
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// Corpus: files, directories (recursive) or glob patterns; one document per line.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<String>,
    /// Output directory (tokenizer.json and manifest.json).
    #[arg(short = 'o', long = "output", alias = "out", value_name = "DIR")]
    out: PathBuf,
    /// The tokenizer model: byte-level BPE, WordPiece or Unigram.
    #[arg(long, value_enum, default_value = "bpe")]
    model: ModelArg,
    /// Vocabulary size to learn, special tokens included.
    #[arg(long, value_name = "N", default_value_t = 8000)]
    vocab_size: usize,
    /// Keep only merges/pieces seen at least this many times.
    #[arg(long, value_name = "N", default_value_t = 2)]
    min_frequency: u64,
    /// Comma-separated; they get ids 0, 1, … in this order.
    #[arg(long, value_delimiter = ',', default_value = "[PAD],[UNK],[BOS],[EOS]")]
    special_tokens: Vec<String>,
    /// Unknown token (WordPiece, Unigram).
    #[arg(long, default_value = "[UNK]")]
    unk_token: String,
    /// Unicode normalization applied before tokenizing.
    #[arg(long, value_enum, default_value = "nfkc")]
    normalization: NormArg,
    /// Longest token in characters (BPE).
    #[arg(long)]
    max_token_length: Option<usize>,
    #[command(flatten)]
    corpus: CorpusArgs,
    /// Overwrite an existing tokenizer.json / manifest.json in OUT.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args, Debug)]
struct TokenizerArg {
    /// tokenizer.json, an HF model directory, or org/name[@revision] in the hf-hub cache.
    #[arg(short, long, value_name = "SOURCE")]
    tokenizer: String,
}

#[derive(clap::Args, Debug)]
struct EncodeArgs {
    #[command(flatten)]
    tokenizer: TokenizerArg,
    /// Text to encode (default: --file, else stdin).
    #[arg(conflicts_with = "file")]
    text: Option<String>,
    /// Read the input from this file.
    #[arg(short, long)]
    file: Option<PathBuf>,
    /// One document per line (output: one line per document, in order).
    #[arg(long)]
    lines: bool,
    /// Padding (default: what the tokenizer.json sets). `longest` pads within each batch.
    #[arg(long, value_enum)]
    padding: Option<PadArg>,
    /// Truncate to --max-length (or the tokenizer's own limit).
    #[arg(long, conflicts_with = "no_truncation")]
    truncation: bool,
    /// Remove the tokenizer's truncation.
    #[arg(long)]
    no_truncation: bool,
    /// Maximum length (turns truncation on unless --no-truncation; the length for
    /// --padding max-length).
    #[arg(long)]
    max_length: Option<usize>,
    /// Pad token when the tokenizer defines no padding.
    #[arg(long)]
    pad_token: Option<String>,
    /// Do not add the tokenizer's special tokens ([CLS]/[SEP] etc.).
    #[arg(long)]
    no_special_tokens: bool,
    /// Replace invalid UTF-8 with U+FFFD instead of failing.
    #[arg(long)]
    replace_invalid: bool,
    /// Input bytes per parallel batch.
    #[arg(long, default_value_t = 1 << 20, hide = true)]
    batch_bytes: usize,
}

#[derive(clap::Args, Debug)]
struct DecodeArgs {
    #[command(flatten)]
    tokenizer: TokenizerArg,
    /// Token ids (default: --file, else stdin, one sequence per line).
    #[arg(conflicts_with = "file", value_name = "ID")]
    ids: Vec<String>,
    /// Read the ids from this file (one sequence per line).
    #[arg(short, long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Leave out special tokens.
    #[arg(long)]
    skip_special_tokens: bool,
}

#[derive(clap::Args, Debug)]
struct ValidateArgs {
    #[command(flatten)]
    tokenizer: TokenizerArg,
    /// Sample corpus: files, directories or glob patterns (one document per line).
    #[arg(value_name = "INPUT")]
    inputs: Vec<String>,
    #[command(flatten)]
    corpus: CorpusArgs,
    /// Read at most this many documents.
    #[arg(long)]
    max_docs: Option<u64>,
    /// Special tokens that must exist (comma-separated; default: the manifest's).
    #[arg(long, value_delimiter = ',')]
    expect_special: Option<Vec<String>>,
    /// Fail when the unknown-token rate is above this [default: 0.01].
    #[arg(long, value_name = "RATE")]
    max_unk_rate: Option<f64>,
    /// Fail when the decode(encode(x)) != normalize(x) rate is above this [default: 0 for
    /// byte-level tokenizers, else no limit].
    #[arg(long, value_name = "RATE")]
    max_roundtrip_mismatch_rate: Option<f64>,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<u8> {
    let result = match args.command {
        Command::Train(a) => train(ctx, a),
        Command::Encode(a) => encode(ctx, a),
        Command::Decode(a) => decode(ctx, a),
        Command::Validate(a) => validate(ctx, a),
    };
    match result {
        Err(e) if matches!(e.downcast_ref(), Some(TokenizerError::Interrupted)) => {
            ctx.warn("interrupted (train writes nothing when interrupted)");
            Ok(exit::INTERRUPTED)
        }
        other => other.map_err(hint),
    }
}

/// Adds the hint that helps with each kind of bad input.
fn hint(err: anyhow::Error) -> anyhow::Error {
    let Some(e) = err.downcast_ref::<TokenizerError>() else {
        return err;
    };
    let h = match e {
        TokenizerError::NotFound { .. } => {
            "give a tokenizer.json, a model directory, or org/name[@rev] already in the hf-hub \
             cache (HF_HUB_CACHE or HF_HOME); codex never downloads"
        }
        TokenizerError::Exists { .. } => "pass --force to overwrite, or choose another --out",
        TokenizerError::InvalidUtf8 { .. } => {
            "pass --replace-invalid to replace bad bytes with U+FFFD"
        }
        TokenizerError::VocabTooSmall { .. } => "raise --vocab-size",
        TokenizerError::EmptyCorpus { .. } => "check the inputs (empty lines are skipped)",
        TokenizerError::Corrupt { .. } | TokenizerError::BadVocab { .. } => {
            "re-create the file; it is not a valid tokenizer.json"
        }
        TokenizerError::TooLarge { .. } | TokenizerError::NotAFile { .. } => {
            "give a regular tokenizer.json file"
        }
        _ => return err,
    };
    // These errors have no source, so the message plus the hint as its cause loses nothing;
    // `with_hint` (a context on top) prints the hint as the error with the current
    // `Ctx::print_error`.
    anyhow::Error::new(codex_core::error::Hint(h.into())).context(err.to_string())
}

fn train(ctx: &Ctx, a: TrainArgs) -> anyhow::Result<u8> {
    let config = TrainConfig {
        model: match a.model {
            ModelArg::Bpe => ModelKind::Bpe,
            ModelArg::Wordpiece => ModelKind::WordPiece,
            ModelArg::Unigram => ModelKind::Unigram,
        },
        vocab_size: a.vocab_size,
        min_frequency: a.min_frequency,
        special_tokens: a
            .special_tokens
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect(),
        unk_token: a.unk_token,
        normalization: match a.normalization {
            NormArg::None => Normalization::None,
            NormArg::Nfc => Normalization::Nfc,
            NormArg::Nfd => Normalization::Nfd,
            NormArg::Nfkc => Normalization::Nfkc,
            NormArg::Nfkd => Normalization::Nfkd,
            NormArg::Lowercase => Normalization::Lowercase,
            NormArg::NfkcLowercase => Normalization::NfkcLowercase,
        },
        max_token_length: a.max_token_length,
    };
    codex_tokenizer::train::check_output(&a.out, a.force)?;
    let corpus = a.corpus.spec(&a.inputs).resolve()?;
    ctx.info(format!(
        "training {:?} (vocab {}) on {} file(s), {} bytes",
        config.model,
        config.vocab_size,
        corpus.files.len(),
        corpus.total_bytes()
    ));
    let bar = ctx.progress_bar(
        corpus.total_bytes(),
        "reading corpus {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    );
    let started = std::time::Instant::now();
    let manifest =
        codex_tokenizer::train::train_corpus_to_dir(&config, &corpus, &a.out, a.force, &|n| {
            bar.inc(n + 1)
        })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if ctx.json {
        out_json(&serde_json::json!({
            "out": a.out,
            "tokenizer": a.out.join("tokenizer.json"),
            "manifest": a.out.join("manifest.json"),
            "vocab_size": manifest.vocab_size,
            "documents": manifest.corpus.documents,
            "bytes": manifest.corpus.bytes,
            "files": manifest.corpus.files.len(),
            "tokenizer_sha256": manifest.tokenizer_sha256,
            "elapsed_s": secs,
        }))?;
    } else {
        out_line(format!(
            "wrote {} (vocab {}, {} documents, {} bytes from {} file(s), {:.1} s)",
            a.out.join("tokenizer.json").display(),
            manifest.vocab_size,
            manifest.corpus.documents,
            manifest.corpus.bytes,
            manifest.corpus.files.len(),
            secs
        ))?;
    }
    Ok(exit::OK)
}

fn encode(ctx: &Ctx, a: EncodeArgs) -> anyhow::Result<u8> {
    let mut tokenizer = codex_tokenizer::load(&a.tokenizer.tokenizer)?;
    let settings = EncodeSettings {
        padding: a.padding.map(|p| match p {
            PadArg::None => Padding::None,
            PadArg::Longest => Padding::Longest,
            PadArg::MaxLength => Padding::MaxLength,
        }),
        truncation: if a.no_truncation {
            Some(false)
        } else if a.truncation {
            Some(true)
        } else {
            None
        },
        max_length: a.max_length,
        pad_token: a.pad_token,
    };
    encode::configure(&mut tokenizer, &settings)?;
    let mut opts = StreamOptions {
        format: if ctx.json {
            OutputFormat::Json
        } else {
            OutputFormat::Ids
        },
        add_special_tokens: !a.no_special_tokens,
        invalid_utf8: invalid_utf8(a.replace_invalid),
        lines: a.lines,
        batch_bytes: a.batch_bytes.max(1),
        ..StreamOptions::default()
    };
    let stdout = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
    let stats = if let Some(text) = a.text {
        opts.source_name = "<argument>".into();
        encode::encode_stream(&tokenizer, text.as_bytes(), stdout, &opts)?
    } else if let Some(path) = a.file {
        let file = std::fs::File::open(&path).map_err(|source| TokenizerError::Read {
            path: path.clone(),
            source,
        })?;
        opts.source_name = path.display().to_string();
        encode::encode_stream(
            &tokenizer,
            BufReader::with_capacity(1 << 20, file),
            stdout,
            &opts,
        )?
    } else {
        let stdin = std::io::stdin();
        encode::encode_stream(
            &tokenizer,
            BufReader::with_capacity(1 << 20, stdin),
            stdout,
            &opts,
        )?
    };
    if ctx.verbose > 0 {
        ctx.info(format!(
            "encoded {} documents, {} bytes, {} tokens",
            stats.documents, stats.bytes, stats.tokens
        ));
    }
    Ok(exit::OK)
}

fn decode(ctx: &Ctx, a: DecodeArgs) -> anyhow::Result<u8> {
    let tokenizer = codex_tokenizer::load(&a.tokenizer.tokenizer)?;
    let emit = |text: String| -> anyhow::Result<()> {
        if ctx.json {
            out_line(serde_json::json!({ "text": text }))?;
        } else {
            out_line(text)?;
        }
        Ok(())
    };
    if !a.ids.is_empty() {
        let ids = encode::parse_ids(&a.ids.join(" ")).map_err(|m| TokenizerError::Decode {
            at: "arguments".into(),
            message: m,
        })?;
        emit(encode::decode_ids(&tokenizer, &ids, a.skip_special_tokens)?)?;
        return Ok(exit::OK);
    }
    let (reader, name): (Box<dyn BufRead>, String) = match &a.file {
        Some(path) => {
            let file = std::fs::File::open(path).map_err(|source| TokenizerError::Read {
                path: path.clone(),
                source,
            })?;
            (Box::new(BufReader::new(file)), path.display().to_string())
        }
        None => (Box::new(BufReader::new(std::io::stdin())), "<stdin>".into()),
    };
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line.map_err(|source| TokenizerError::Read {
            path: name.clone().into(),
            source,
        })?;
        let at = format!("{name}:{}", i + 1);
        let line = String::from_utf8_lossy(&line);
        let ids = encode::parse_ids(&line).map_err(|message| TokenizerError::Decode {
            at: at.clone(),
            message,
        })?;
        let text =
            encode::decode_ids(&tokenizer, &ids, a.skip_special_tokens).map_err(|e| match e {
                TokenizerError::Decode { message, .. } => TokenizerError::Decode { at, message },
                other => other,
            })?;
        emit(text)?;
    }
    Ok(exit::OK)
}

fn validate(ctx: &Ctx, a: ValidateArgs) -> anyhow::Result<u8> {
    let path = codex_tokenizer::resolve(&a.tokenizer.tokenizer)?;
    let opts = codex_tokenizer::ValidateOptions {
        corpus: (!a.inputs.is_empty()).then(|| a.corpus.spec(&a.inputs)),
        max_documents: a.max_docs,
        expect_special: a.expect_special,
        max_unk_rate: a.max_unk_rate,
        max_roundtrip_mismatch_rate: a.max_roundtrip_mismatch_rate,
    };
    let r = codex_tokenizer::validate(&path, &opts)?;
    if ctx.json {
        out_json(&r)?;
    } else {
        out_line(format!(
            "tokenizer      {} ({}, vocab {})",
            r.tokenizer_path.display(),
            r.model,
            r.vocab_size
        ))?;
        out_line(format!(
            "manifest       {}",
            match (
                &r.manifest_error,
                r.manifest_exists,
                r.manifest_sha256_matches
            ) {
                (Some(e), _, _) => e.clone(),
                (None, false, _) => "none".into(),
                (None, true, Some(true)) => "present, sha256 matches".into(),
                (None, true, Some(false)) => "present, sha256 DOES NOT match".into(),
                (None, true, None) => "present (no tokenizer_sha256)".into(),
            }
        ))?;
        if opts.corpus.is_some() {
            out_line(format!(
                "corpus         {} file(s), {} documents, {} bytes, {} chars",
                r.num_files, r.documents, r.bytes, r.chars
            ))?;
            out_line(format!("tokens         {}", r.tokens))?;
            out_line(format!(
                "unk rate       {:.6} ({} x {})",
                r.unk_rate,
                r.unk_count,
                r.unk_token.as_deref().unwrap_or("no unk token")
            ))?;
            out_line(format!(
                "round trip     {:.6} mismatch rate ({} of {} documents; {})",
                r.roundtrip_mismatch_rate,
                r.roundtrip_mismatches,
                r.documents,
                if r.lossless_by_design {
                    "byte-level, lossless by design"
                } else {
                    "not lossless by design"
                }
            ))?;
            out_line(format!("tokens/byte    {:.4}", r.tokens_per_byte))?;
            out_line(format!("tokens/char    {:.4}", r.tokens_per_char))?;
        }
        let specials: Vec<String> = r
            .special_tokens
            .iter()
            .map(|s| match s.id {
                Some(id) if s.atomic => format!("{}={id}", s.token),
                Some(id) => format!("{}={id} (not atomic)", s.token),
                None => format!("{} MISSING", s.token),
            })
            .collect();
        out_line(format!(
            "special tokens {:.0}% coverage: {}",
            r.special_token_coverage * 100.0,
            specials.join(", ")
        ))?;
    }
    // Listed in both modes: stderr stays readable next to --json on stdout.
    for p in &r.problems {
        ctx.warn(format!("problem: {p}"));
    }
    if r.problems.is_empty() {
        Ok(exit::OK)
    } else {
        Ok(exit::INVALID)
    }
}
