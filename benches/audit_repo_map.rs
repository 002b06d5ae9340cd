//! `codex repo-map` over a generated tree: 2,000 files (Rust, Python, TOML, Markdown, JSON) in
//! 40 directories, with a `.gitignore`d build directory, generated from a fixed seed in a temp
//! dir. Measures the walk + tokei-compatible line counting + symbol extraction, with and
//! without the `--max-tokens` ranking pass, and the line counter alone on one large Python file.
//!
//!     cargo bench --bench audit_repo_map
//!
//! The comparison with tokei on a real tree is `benches/tokei_compare.sh` (a separate process
//! each, so it is a script rather than a criterion group).

use codex_audit::{count, lang, repomap};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;

/// splitmix64: a fixed-seed generator, so every run maps the same tree.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn rust_file(rng: &mut Rng, i: usize) -> String {
    let mut s = format!("//! Module {i}.\n\nuse std::fmt;\n\n");
    for f in 0..(5 + rng.below(20)) {
        s.push_str(&format!(
            "/// Doc for f{f}.\n///\n/// ```\n/// let x = {f};\n/// ```\npub fn f{i}_{f}(x: u64) -> u64 {{\n    // a comment\n    let s = \"/* not a comment */\";\n    /* block\n       comment */\n    x + {f} + s.len() as u64\n}}\n\n"
        ));
    }
    s.push_str(&format!(
        "pub struct S{i};\nimpl fmt::Display for S{i} {{\n    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {{ write!(f, \"S\") }}\n}}\n"
    ));
    s
}

fn python_file(rng: &mut Rng, i: usize) -> String {
    let mut s = format!("\"\"\"Module {i}.\"\"\"\nimport os\n\n");
    for c in 0..(2 + rng.below(6)) {
        s.push_str(&format!(
            "class C{i}_{c}:\n    \"\"\"Doc.\n\n    More doc.\n    \"\"\"\n\n    def method(self, x):\n        # comment\n        s = '# not a comment'\n        return x + {c}\n\n    def _private(self):\n        pass\n\n\ndef func_{i}_{c}(a, b):\n    return a * b  # trailing\n\n"
        ));
    }
    s
}

fn generate(root: &Path) -> std::io::Result<()> {
    let mut rng = Rng(0x00c0_dec5);
    std::fs::write(root.join(".gitignore"), "build/\n")?;
    std::fs::write(
        root.join("Cargo.toml"),
        "[package]\nname = \"x\"\n# comment\n",
    )?;
    for d in 0..40 {
        let dir = root.join(format!("pkg{d:02}"));
        std::fs::create_dir_all(&dir)?;
        for i in 0..50 {
            let n = d * 50 + i;
            let (name, text) = match rng.below(10) {
                0..=3 => (format!("m{n}.rs"), rust_file(&mut rng, n)),
                4..=7 => (format!("m{n}.py"), python_file(&mut rng, n)),
                8 => (
                    format!("m{n}.md"),
                    format!("# T{n}\n\ntext\n\n```rust\nfn f() {{}}\n```\n"),
                ),
                _ => (format!("m{n}.json"), format!("{{\"n\": {n}}}\n")),
            };
            std::fs::write(dir.join(name), text)?;
        }
    }
    // Ignored: must not be read at all.
    let build = root.join("build");
    std::fs::create_dir_all(&build)?;
    for i in 0..200 {
        std::fs::write(build.join(format!("gen{i}.rs")), "fn g() {}\n")?;
    }
    Ok(())
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    generate(dir.path()).expect("generate tree");
    let map = repomap::build(dir.path(), &Default::default()).expect("repo map");
    // 2,000 generated files + Cargo.toml; the 200 ignored files are not counted.
    assert_eq!(map.totals.files, 2001, "generated tree");

    let mut g = c.benchmark_group("repo_map");
    g.sample_size(20);
    g.throughput(Throughput::Elements(map.totals.files));
    g.bench_function("build_2000_files", |b| {
        b.iter(|| repomap::build(black_box(dir.path()), &Default::default()))
    });
    let ranked = repomap::Options { rank: true };
    g.bench_function("build_2000_files_ranked", |b| {
        b.iter(|| repomap::build(black_box(dir.path()), &ranked))
    });
    g.finish();

    let py = lang::by_name("Python").expect("Python is a codex language");
    let mut rng = Rng(7);
    let text: String = (0..400).map(|i| python_file(&mut rng, i)).collect();
    let mut g = c.benchmark_group("count");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("python_lines", |b| {
        b.iter(|| count::count(py, black_box(text.as_bytes())))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
