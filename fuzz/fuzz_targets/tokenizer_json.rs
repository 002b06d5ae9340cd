//! tokenizer.json bytes through codex's checks and into `tokenizers`: errors are fine,
//! panics, aborts and runaway allocations are findings.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = codex_tokenizer::source::parse(data, std::path::Path::new("<fuzz>"));
});
