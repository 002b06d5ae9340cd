//! The default policy's detectors, redaction, masking and near-duplicates.

use codex_safety::minhash::{MinHashConfig, near_duplicates};
use codex_safety::{Policy, ScanOptions, Stage, mask_fragment};

const TRAIN: ScanOptions = ScanOptions {
    stage: Stage::Train,
    bypass: false,
};

#[test]
fn every_planted_credential_is_found_by_its_rule_and_redacted_away() {
    let p = Policy::default_policy();
    for seed in 1..=20 {
        for c in codex_safety::planted::credentials(seed, 1) {
            let text = format!("x = 1\n{}\ny = 2\n", c.line);
            let v = p.scan(text.as_bytes(), TRAIN);
            let hit = v.findings.iter().any(|f| {
                p.rules[f.rule].id == c.rule
                    && text[f.start..f.end].contains(&c.secret[..c.secret.len().min(8)])
            });
            assert!(
                hit,
                "seed {seed}: {} not found in {:?}: {v:?}",
                c.rule, c.line
            );
            let red = String::from_utf8(p.redact(text.as_bytes(), &v)).unwrap();
            assert!(
                !red.contains(&c.secret),
                "seed {seed}: {} survives: {red}",
                c.rule
            );
            assert!(
                red.starts_with("x = 1\n") && red.ends_with("\ny = 2\n"),
                "{red}"
            );
        }
    }
}

#[test]
fn near_misses_are_not_findings() {
    let p = Policy::default_policy();
    for clean in [
        // Luhn fails.
        "card = \"4111 1111 1111 1112\"",
        // Impossible SSN.
        "id = \"000-12-3456\"",
        // Low-entropy value next to a secret-ish name.
        "token_name = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
        // Too short for any token format.
        "key = AKIA123",
        "password = None",
        "def set_password(self, password):",
    ] {
        let v = p.scan(clean.as_bytes(), TRAIN);
        assert!(v.findings.is_empty(), "{clean}: {v:?}");
    }
}

#[test]
fn redaction_is_byte_identical_outside_the_spans() {
    let p = Policy::default_policy();
    // Non-UTF-8 bytes, CRLF and tabs around the secret survive untouched.
    let mut text = b"\xff\xfe bytes\r\n\tapi_key = \"0123456789abcdef0123\"\r\n".to_vec();
    text.extend_from_slice("caf\u{e9} mail me: a.b@example.com\n".as_bytes());
    let v = p.scan(&text, TRAIN);
    let out = p.redact(&text, &v);
    let mut want = b"\xff\xfe bytes\r\n\tapi_key = \"{REDACTED}\"\r\n".to_vec();
    want.extend_from_slice("caf\u{e9} mail me: {REDACTED}\n".as_bytes());
    assert_eq!(out, want);
    // Nothing to redact: the same bytes.
    let clean = b"print('hello')\n";
    assert_eq!(p.redact(clean, &p.scan(clean, TRAIN)), clean);
}

#[test]
fn masked_fragments_never_hold_the_secret() {
    for c in codex_safety::planted::credentials(7, 1) {
        let m = mask_fragment(c.secret.as_bytes());
        assert!(!m.contains(&c.secret), "{m}");
        assert!(
            m.contains(&format!("({} chars)", c.secret.chars().count())),
            "{m}"
        );
    }
    assert_eq!(mask_fragment(b"abc"), "*** (3 chars)");
    assert_eq!(
        mask_fragment(b"AKIAABCDEFGHIJKLMNOP"),
        "AKIA************… (20 chars)"
    );
}

#[test]
fn scan_many_equals_scan_one_by_one() {
    let p = Policy::default_policy();
    let docs: Vec<String> = codex_safety::planted::credentials(3, 2)
        .into_iter()
        .map(|c| c.line)
        .collect();
    let par = p.scan_many(&docs, TRAIN);
    for (d, v) in docs.iter().zip(&par) {
        assert_eq!(&p.scan(d.as_bytes(), TRAIN), v);
    }
}

#[test]
fn record_masking_hides_credentials_and_keeps_the_rest() {
    use codex_safety::mask::{mask_json, mask_toml};
    let gh = &codex_safety::planted::credentials(5, 1)[2].secret;
    let mut doc = serde_json::json!({
        "command": ["codex", "train", "--token", "abc123", format!("model.pretrained=https://u:{gh}@hf.co/x"), "MLFLOW_TRACKING_TOKEN=zzz"],
        "env": {"MLFLOW_TRACKING_TOKEN": "zzz", "HOME": "/root"},
        "seed": 3,
    });
    mask_json(&mut doc);
    let s = doc.to_string();
    for secret in [gh.as_str(), "abc123", "zzz"] {
        assert!(!s.contains(secret), "{s}");
    }
    assert!(
        s.contains("/root") && s.contains("\"seed\":3") && s.contains("--token"),
        "{s}"
    );
    let toml_text = format!(
        "[model]\npretrained = \"{gh}\"\n[tracking]\napi_key = \"k-123\"\n[data]\ninputs = [\"a.txt\"]\n"
    );
    let masked = mask_toml(&toml_text);
    assert!(
        !masked.contains(gh.as_str()) && !masked.contains("k-123"),
        "{masked}"
    );
    assert!(masked.contains("a.txt"), "{masked}");
    let clean = "[data]\ninputs = [\"a.txt\"]\n";
    assert_eq!(mask_toml(clean), clean);
}

#[test]
fn minhash_finds_near_duplicates_and_keeps_distinct_texts() {
    let base: String = (0..200).map(|i| format!("word{} ", i % 97)).collect();
    let near = base.replacen("word5 ", "changed ", 1);
    let other: String = (0..200).map(|i| format!("other{} ", i * 7)).collect();
    let cfg = MinHashConfig::default();
    let d = near_duplicates(&[&base, &other, &near, &base], &cfg);
    assert_eq!(d, [None, None, Some(0), Some(0)]);
    // Deterministic.
    assert_eq!(d, near_duplicates(&[&base, &other, &near, &base], &cfg));
}

#[test]
fn secret_keys_are_recognized_by_their_words() {
    use codex_safety::mask::is_secret_key;
    for k in [
        "MLFLOW_TRACKING_TOKEN",
        "api_key",
        "apiKey",
        "--password",
        "aws_secret_access_key",
        "private-key",
        "HF_TOKEN",
        "db.credentials",
    ] {
        assert!(is_secret_key(k), "{k}");
    }
    for k in [
        "tokens",
        "tokenizer",
        "max_tokens",
        "keyboard",
        "key",
        "monkey",
        "author",
        "vocab_size",
    ] {
        assert!(!is_secret_key(k), "{k}");
    }
    // Numbers under ordinary keys survive masking.
    let mut doc =
        serde_json::json!({"data": {"tokens": 12, "tokenizer": "byte"}, "hf_token": "abc"});
    codex_safety::mask::mask_json(&mut doc);
    assert_eq!(
        doc,
        serde_json::json!({"data": {"tokens": 12, "tokenizer": "byte"}, "hf_token": "***"})
    );
}
