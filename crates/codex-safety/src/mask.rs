//! Masking credential-looking values in codex's own records (`provenance.json`, a run's
//! config): the default policy's `secret.*` detectors plus values of secret-ish keys, replaced
//! by `***` so a record never carries a token the user typed on a command line or in a config.

use crate::policy::{Policy, Stage};
use crate::scan::ScanOptions;
use serde_json::Value;
use std::sync::OnceLock;

/// The replacement of a masked value.
pub const MASK: &str = "***";

fn secrets_policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        let mut p = Policy::default_policy();
        // Only credential rules, all of them redacting into the mask.
        p.rules.iter_mut().for_each(|r| {
            if r.id.starts_with("secret.") {
                r.replacement = Some(MASK.into());
            }
        });
        p
    })
}

/// Whether a key names a credential (`MLFLOW_TRACKING_TOKEN`, `api_key`, `--password`, …), by
/// its words, so `tokens`, `tokenizer` or `max_tokens` are not mistaken for one.
pub fn is_secret_key(key: &str) -> bool {
    let mut words: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in key.chars() {
        if !c.is_ascii_alphanumeric() {
            words.extend((!cur.is_empty()).then(|| std::mem::take(&mut cur)));
            prev_lower = false;
            continue;
        }
        // camelCase boundary: apiKey, authToken.
        if c.is_ascii_uppercase() && prev_lower {
            words.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_ascii_lowercase();
        cur.push(c.to_ascii_lowercase());
    }
    words.extend((!cur.is_empty()).then_some(cur));
    let single = [
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "apikey",
        "credential",
        "credentials",
        "passphrase",
    ];
    words.iter().any(|w| single.contains(&w.as_str()))
        || words.windows(2).any(|p| {
            p[1] == "key"
                && ["api", "private", "access", "secret", "signing"].contains(&p[0].as_str())
        })
}

/// `text` with every credential-looking span replaced by [`MASK`].
pub fn mask_secrets(text: &str) -> String {
    let p = secrets_policy();
    let v = p.scan(
        text.as_bytes(),
        ScanOptions {
            stage: Stage::Output,
            bypass: true,
        },
    );
    let mut v = v;
    v.findings
        .retain(|f| p.rules[f.rule].id.starts_with("secret."));
    if !v.needs_redaction() {
        return text.to_string();
    }
    // Every secret rule's span goes, whatever its action.
    for f in &mut v.findings {
        f.disposition = crate::scan::Disposition::Redacted;
    }
    p.redact_str(text, &v)
}

/// Masks, in place, every string of a JSON document that looks like a credential, the value of
/// every secret-ish key, and the word after a secret-ish `--flag` in argument lists.
pub fn mask_json(v: &mut Value) {
    match v {
        Value::String(s) => {
            let m = mask_secrets(s);
            if m != *s {
                *s = m;
            }
        }
        Value::Array(a) => {
            let mut hide_next = false;
            for x in a.iter_mut() {
                if hide_next && x.is_string() {
                    *x = Value::String(MASK.into());
                    hide_next = false;
                    continue;
                }
                hide_next = false;
                if let Value::String(s) = x {
                    // `--token=abc` / `KEY=abc` / `--token abc`.
                    if let Some((k, _)) = s.split_once('=').filter(|(k, _)| is_secret_key(k)) {
                        *s = format!("{k}={MASK}");
                        continue;
                    }
                    if s.starts_with('-') && is_secret_key(s) {
                        hide_next = true;
                        continue;
                    }
                }
                mask_json(x);
            }
        }
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if is_secret_key(k) && (x.is_string() || x.is_number()) && !x.is_null() {
                    *x = Value::String(MASK.into());
                } else {
                    mask_json(x);
                }
            }
        }
        _ => {}
    }
}

/// Masks a TOML document's secret-ish values (keys named like credentials, and any string that
/// looks like one); the document is re-serialized only when something changed.
pub fn mask_toml(text: &str) -> String {
    let Ok(mut table) = toml::from_str::<toml::Table>(text) else {
        return mask_secrets(text);
    };
    fn walk(t: &mut toml::Table) -> bool {
        let mut changed = false;
        for (k, v) in t.iter_mut() {
            changed |= match v {
                toml::Value::String(s) if is_secret_key(k) && !s.is_empty() => {
                    *s = MASK.into();
                    true
                }
                toml::Value::String(s) => {
                    let m = mask_secrets(s);
                    let c = m != *s;
                    *s = m;
                    c
                }
                toml::Value::Table(inner) => walk(inner),
                toml::Value::Array(a) => {
                    let mut c = false;
                    for x in a.iter_mut() {
                        if let toml::Value::String(s) = x {
                            let m = mask_secrets(s);
                            c |= m != *s;
                            *s = m;
                        } else if let toml::Value::Table(inner) = x {
                            c |= walk(inner);
                        }
                    }
                    c
                }
                _ => false,
            };
        }
        changed
    }
    if walk(&mut table) {
        toml::to_string(&table).unwrap_or_else(|_| mask_secrets(text))
    } else {
        text.to_string()
    }
}
