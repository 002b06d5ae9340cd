//! A whole safetensors file: the 8-byte length, the JSON header, the data section, checked as
//! `model show` checks it (`parse_safetensors_header`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let n = u64::from_le_bytes(data[..8].try_into().unwrap());
    let rest = &data[8..];
    if n > rest.len() as u64 {
        return;
    }
    let (header, body) = rest.split_at(n as usize);
    let _ = codex_registry::source::parse_safetensors_header(header, body.len() as u64);
});
