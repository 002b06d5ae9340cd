//! Encode throughput of `codex_tokenizer` (bytes of input per second).
//!
//!     cargo bench --bench tokenizer_encode
//!
//! Tokenizer: the byte-level BPE `tokenizer.json` of the `anthropic==0.34.0` wheel when
//! `CODEX_TEST_ASSETS` is set (`scripts/test-assets.sh`), else a BPE trained here in-process.
//! Corpus: this repository's own Rust sources (real text, read in file-name order, capped at
//! 2 MiB), one document per line. Compared in the same process:
//! - `stream_ids`: the full `codex tokenizer encode --lines` pipeline (reader thread, parallel
//!   encode + format, writer thread) into a sink;
//! - `batch_fast` vs `batch_offsets`: parallel encoding alone, without and with offsets;
//! - `sequential`: one line at a time on one thread (what parallelism buys).
//!
//! The end-to-end comparison against Python is `benches/tokenizer_vs_python.sh`.

use codex_tokenizer::corpus::CorpusSpec;
use codex_tokenizer::encode::{StreamOptions, encode_batch, encode_stream};
use codex_tokenizer::{Tokenizer, TrainConfig};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::{Path, PathBuf};

fn corpus() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    let mut stack = vec![root.join("crates"), root.join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut text = String::new();
    for f in files {
        text.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
        if text.len() > 2 << 20 {
            break;
        }
    }
    text
}

fn tokenizer(text: &str) -> Tokenizer {
    if let Some(assets) = std::env::var_os("CODEX_TEST_ASSETS") {
        let p = PathBuf::from(assets).join("anthropic/anthropic/tokenizer.json");
        if let Ok(t) = codex_tokenizer::load_file(&p) {
            eprintln!("tokenizer: {}", p.display());
            return t;
        }
    }
    eprintln!("tokenizer: BPE 8000 trained on the bench corpus (CODEX_TEST_ASSETS unset)");
    let dir = std::env::temp_dir().join(format!("codex-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("corpus.txt");
    std::fs::write(&file, text).expect("write corpus");
    let corpus = CorpusSpec::new([file.display().to_string()])
        .resolve()
        .expect("corpus");
    let trained = codex_tokenizer::train(&TrainConfig::default(), corpus.documents(), &|_| {})
        .expect("train");
    let _ = std::fs::remove_dir_all(&dir);
    trained.tokenizer
}

fn bench(c: &mut Criterion) {
    let text = corpus();
    let tok = tokenizer(&text);
    let lines: Vec<String> = text.lines().map(String::from).collect();
    let mut g = c.benchmark_group("tokenizer_encode");
    g.throughput(Throughput::Bytes(text.len() as u64))
        .sample_size(10);
    g.bench_function("stream_ids", |b| {
        b.iter(|| {
            encode_stream(
                &tok,
                text.as_bytes(),
                std::io::sink(),
                &StreamOptions::default(),
            )
            .expect("encode")
        })
    });
    g.bench_function("batch_fast", |b| {
        b.iter(|| {
            black_box(
                encode_batch(&tok, &lines, true, false)
                    .expect("encode")
                    .len(),
            )
        })
    });
    g.bench_function("batch_offsets", |b| {
        b.iter(|| {
            black_box(
                encode_batch(&tok, &lines, true, true)
                    .expect("encode")
                    .len(),
            )
        })
    });
    g.bench_function("sequential", |b| {
        b.iter(|| {
            let mut n = 0;
            for l in &lines {
                n += tok.encode_fast(l.as_str(), true).expect("encode").len();
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
