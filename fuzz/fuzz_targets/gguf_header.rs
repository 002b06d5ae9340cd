//! A GGUF file's header and tensor table, as the loader reads them before any tensor data.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = codex_registry::gguf::read_gguf_header(&mut std::io::Cursor::new(data));
});
