//! One module per top-level command; each exposes `Args` (clap) and `run(ctx, args)`.

pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod data;
pub mod eval;
pub mod export;
pub mod generate;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod repo_map;
pub mod status;
pub mod sweep;
pub mod sync;
pub mod tokenizer;
pub mod train;

/// clap's parser of a `KEY=VALUE` override. A config file where an override belongs (`codex
/// train my.toml`) is a usage error with a did-you-mean; other text goes on to the config
/// checks, which report it with the rest.
pub fn override_arg(text: &str) -> Result<String, String> {
    if !text.contains('=') && (text.ends_with(".toml") || std::path::Path::new(text).is_file()) {
        return Err(format!(
            "`{text}` looks like a config file, not a KEY=VALUE override; did you mean `-c {text}`?"
        ));
    }
    Ok(text.to_string())
}
