//! A training config and overrides from arbitrary bytes: TOML parsing, `a.b=c` overrides, and
//! the all-problems-at-once check never panic, and every problem message stays short.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The first line is an override, the rest the file.
    let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let Ok(mut table) = codex_core::config::parse_toml(rest, "fuzz.toml") else {
        return;
    };
    let _ = codex_core::config::apply_overrides(&mut table, &[first.to_string()]);
    let (_cfg, issues) =
        codex_core::config::check::<codex_train::TrainConfig>(table, &[("lr", "optimizer.lr")]);
    for i in &issues {
        assert!(i.to_string().len() < 2048, "{i}");
    }
});
