//! A checkpoint's `MANIFEST.json` from arbitrary bytes: parsing and the completeness check
//! never panic, and a manifest that passes lists only safe, distinct file names.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = serde_json::from_slice::<codex_checkpoint::Manifest>(data) else {
        return;
    };
    let _ = m.size_bytes();
    if m.check_complete(std::path::Path::new("runs/fuzz/checkpoints/step-00000001")).is_ok() {
        let mut names: Vec<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), m.files.len(), "duplicate names passed");
    }
});
