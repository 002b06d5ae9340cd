//! Finding and loading a tokenizer: a `tokenizer.json` file, an HF model directory, or
//! `org/name[@revision]` from the local hf-hub cache (offline; nothing is downloaded).

use crate::error::{Result, TokenizerError};
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// Loads a tokenizer from a file, a model directory or the hf-hub cache (see [`resolve`]).
pub fn load(source: &str) -> Result<Tokenizer> {
    let path = resolve(source)?;
    load_file(&path)
}

/// Loads a `tokenizer.json`; a parse failure is [`TokenizerError::Corrupt`] naming the path.
pub fn load_file(path: &Path) -> Result<Tokenizer> {
    let bytes = std::fs::read(path).map_err(|source| TokenizerError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Tokenizer::from_bytes(&bytes).map_err(|e| TokenizerError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The hf-hub cache directory: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (the order the Python `huggingface_hub` uses).
pub fn hub_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = var("HF_HUB_CACHE") {
        return Some(p);
    }
    if let Some(p) = var("HF_HOME") {
        return Some(p.join("hub"));
    }
    var("HOME").map(|h| h.join(".cache").join("huggingface").join("hub"))
}

/// Where `source` points: an existing file is itself; a directory must hold `tokenizer.json`;
/// otherwise `org/name[@rev]` is looked up in the hf-hub cache (revision default `main`, a ref
/// name or a commit hash). The error lists every place that was tried.
pub fn resolve(source: &str) -> Result<PathBuf> {
    let path = Path::new(source);
    let mut looked = Vec::new();
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_dir() {
        let file = path.join("tokenizer.json");
        if file.is_file() {
            return Ok(file);
        }
        looked.push(format!(
            "{} (no tokenizer.json in this directory)",
            file.display()
        ));
        return Err(TokenizerError::NotFound {
            source_name: source.into(),
            looked,
        });
    }
    looked.push(format!("{} (no such file or directory)", path.display()));
    if let Some((repo_id, revision)) = hub_id(source) {
        match hub_cache_dir() {
            None => looked.push("hf-hub cache (HF_HUB_CACHE, HF_HOME and HOME are unset)".into()),
            Some(cache_dir) => {
                let repo = Repo::with_revision(repo_id.clone(), RepoType::Model, revision.clone());
                let cache = Cache::new(cache_dir.clone());
                if let Some(p) = cache.repo(repo.clone()).get("tokenizer.json") {
                    return Ok(p);
                }
                // A commit hash names a snapshot directly, without a ref file.
                let repo_dir = cache_dir.join(repo.folder_name());
                let snapshot = repo_dir
                    .join("snapshots")
                    .join(&revision)
                    .join("tokenizer.json");
                if snapshot.is_file() {
                    return Ok(snapshot);
                }
                let reference = repo_dir.join("refs").join(&revision);
                looked.push(match std::fs::read_to_string(&reference) {
                    Ok(hash) => format!(
                        "{} (ref {revision} -> {}, no tokenizer.json)",
                        repo_dir.join("snapshots").join(hash.trim()).display(),
                        hash.trim()
                    ),
                    Err(_) if repo_dir.is_dir() => format!(
                        "{} (no ref '{revision}' and no snapshot '{revision}')",
                        repo_dir.display()
                    ),
                    Err(_) => format!("{} (not in the hf-hub cache)", repo_dir.display()),
                });
            }
        }
    }
    Err(TokenizerError::NotFound {
        source_name: source.into(),
        looked,
    })
}

/// `org/name[@rev]` → (`org/name`, rev or `main`), when `source` has that shape.
fn hub_id(source: &str) -> Option<(String, String)> {
    let (id, rev) = match source.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, rev),
        Some(_) => return None,
        None => (source, "main"),
    };
    let (org, name) = id.split_once('/')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    (ok(org) && ok(name)).then(|| (id.to_string(), rev.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids() {
        assert_eq!(hub_id("org/name"), Some(("org/name".into(), "main".into())));
        assert_eq!(
            hub_id("org/name@v1"),
            Some(("org/name".into(), "v1".into()))
        );
        assert_eq!(hub_id("./x/y"), None);
        assert_eq!(hub_id("/abs/path"), None);
        assert_eq!(hub_id("a/b/c"), None);
        assert_eq!(hub_id("name"), None);
    }
}
