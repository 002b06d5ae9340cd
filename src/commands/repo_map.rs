//! `codex repo-map`: repository topology, per-language line counts (tokei-compatible), key
//! files and public symbols; text for people, sorted JSON for tools.

use crate::ctx::{Ctx, out_json, out_line};
use codex_audit::repomap;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Root of the tree to map.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Also write the JSON map to this file (atomically).
    #[arg(short = 'o', long = "output", alias = "json-path", value_name = "FILE")]
    pub json_path: Option<PathBuf>,
    /// Fit the text view into N tokens, most-referenced files and symbols first.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<u8> {
    let opts = repomap::Options {
        rank: args.max_tokens.is_some(),
    };
    let map = repomap::build(&args.path, &opts)?;
    for s in &map.skipped {
        ctx.warn(format!("skipped {}: {}", s.path, s.reason));
    }
    if let Some(file) = &args.json_path {
        let mut text = serde_json::to_string_pretty(&map)?;
        text.push('\n');
        codex_core::fsutil::atomic_write(file, text.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
        ctx.info(format!("wrote {}", file.display()));
    }
    if ctx.json {
        out_json(&map)?;
    } else {
        // Token counts: codex's whitespace/punctuation estimate (no tokenizer is loaded here).
        let text = repomap::render_text(&map, args.max_tokens, &repomap::estimate_tokens);
        out_line(text.trim_end())?;
    }
    Ok(codex_core::exit::OK)
}
