// Data formats, tokenizer kinds and LoRA through the whole trainer (tiny, CPU).

use crate::support::{base, lines};
use codex_train::config::{DataFormat, TokenizerKind};
use codex_train::{RunOptions, RunStatus as Status, train};
use std::path::Path;

#[test]
fn jsonl_text_field_and_trained_bpe_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("docs.jsonl");
    let mut text = String::new();
    for i in 0..400 {
        let doc = format!(
            "def handler_{i}(request):\n    return request.value + {}\n",
            i % 11
        );
        text.push_str(&serde_json::json!({"id": i, "body": doc}).to_string());
        text.push('\n');
    }
    std::fs::write(&p, text).unwrap();
    let mut c = base(dir.path(), "bpe");
    c.data.inputs = vec![p.display().to_string()];
    c.data.format = DataFormat::Jsonl;
    c.data.text_field = "body".into();
    c.tokenizer.kind = TokenizerKind::Train;
    c.tokenizer.vocab_size = 300;
    let s = train(&c, &RunOptions::default(), Vec::new()).unwrap();
    assert_eq!(s.status, Status::Completed);
    let run = Path::new(&c.output.dir);
    // The trained tokenizer is kept with the run, and the corpus got shorter in tokens than bytes.
    assert!(run.join("tokenizer.json").is_file());
    let prov: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("provenance.json")).unwrap()).unwrap();
    let vocab = prov["data"]["vocab_size"].as_u64().unwrap();
    assert!(vocab > 256 && vocab <= 300, "{vocab}");
    let bytes: u64 = prov["data"]["sources"][0]["bytes"].as_u64().unwrap();
    assert!(
        prov["data"]["tokens"].as_u64().unwrap() < bytes / 2,
        "{prov}"
    );
    // A missing text field is a clear error.
    let mut bad = base(dir.path(), "bad");
    bad.data.inputs = c.data.inputs.clone();
    bad.data.format = DataFormat::Jsonl;
    bad.data.text_field = "nope".into();
    let err = train(&bad, &RunOptions::default(), Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
    let end = lines(&Path::new(&bad.output.dir).join("metrics.ndjson"))
        .pop()
        .unwrap();
    assert_eq!(end["status"], "failed");
}

#[test]
fn lora_trains_and_saves_only_the_adapter_in_peft_layout() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.txt");
    std::fs::write(&p, "for i in range(10):\n    print(i * i)\n".repeat(60)).unwrap();
    let mut c = base(dir.path(), "lora");
    c.data.inputs = vec![p.display().to_string()];
    c.model.lora.enabled = true;
    c.model.lora.r = 4;
    c.optimizer.lr = 1e-2;
    let s = train(&c, &RunOptions::default(), Vec::new()).unwrap();
    assert_eq!(s.status, Status::Completed);
    let ck = Path::new(&c.output.dir).join("checkpoints/step-00000004");
    assert!(ck.join("adapter_model.safetensors").is_file());
    assert!(
        !ck.join("model.safetensors").exists(),
        "LoRA checkpoints hold the adapter only"
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["r"], 4);
    let bytes = std::fs::read(ck.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names = st.names();
    assert!(!names.is_empty());
    assert!(
        names.iter().all(|n| n.starts_with("base_model.model.")
            && (n.contains(".lora_A.") || n.contains(".lora_B."))),
        "{names:?}"
    );
}
