//! Inputs the `tokenizer_json` fuzz target (fuzz/) found: each must now be an error naming
//! the file, not a panic.

#[test]
fn fuzz_findings_are_errors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-findings");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let e = codex_tokenizer::parse(&bytes, &path)
            .err()
            .unwrap_or_else(|| panic!("{} loaded", path.display()));
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        n += 1;
    }
    assert!(n > 0);
}
