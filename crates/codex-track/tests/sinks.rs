//! The sinks on hand-made events: CSV rows, and TensorBoard records decoded back.

use codex_core::event::{EvalMetrics, Event, EventKind, EventSink, Header, StepMetrics};
use codex_track::proto::{self, ValueKind, What};
use codex_track::{CsvSink, TensorBoardSink, record, replay};
use prost::Message as _;

fn ev(step: u64, kind: EventKind) -> Event {
    Event {
        header: Header {
            schema_version: 1,
            run_id: "r1".into(),
            ts: format!("2026-01-01T00:00:{step:02}.500Z"),
            step,
            rank: None,
        },
        kind,
    }
}

fn step(step: u64, loss: f64) -> Event {
    ev(
        step,
        EventKind::Step(StepMetrics {
            train_loss: loss,
            train_loss_mean: loss + 0.5,
            lr: 1e-3,
            grad_norm: 0.25,
            tokens_per_s: 1000.0,
            step_time_ms: 12.5,
            epoch: 0,
            tokens_seen: step * 64,
            total_steps: 10,
            mfu: Some(0.25),
            joules_per_token: None,
        }),
    )
}

fn eval(step: u64, loss: f64) -> Event {
    ev(
        step,
        EventKind::Eval(EvalMetrics {
            val_loss: loss,
            val_ppl: loss.exp(),
            val_token_acc: 0.5,
            val_tokens: 128,
        }),
    )
}

#[test]
fn csv_merges_evals_into_their_step_row() {
    let mut buf = Vec::new();
    {
        let mut s = CsvSink::from_writer(&mut buf);
        for e in [
            eval(0, 3.0),
            step(1, 2.5),
            step(2, 2.0),
            eval(2, 2.25),
            step(3, 1.5),
        ] {
            s.emit(&e).unwrap();
        }
        s.finish();
    }
    let text = String::from_utf8(buf).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows[0], codex_track::csv::COLUMNS.join(","));
    assert_eq!(rows.len(), 5, "{text}");
    assert_eq!(
        rows[1],
        format!("0,2026-01-01T00:00:00.500Z,,,,,,,,,3,{},0.5,,", 3f64.exp())
    );
    assert_eq!(
        rows[2],
        // mfu 0.25; joules_per_token null → an empty cell.
        "1,2026-01-01T00:00:01.500Z,2.5,3,0.001,0.25,1000,12.5,0,64,,,,0.25,"
    );
    assert!(
        rows[3].starts_with("2,")
            && rows[3].ends_with(&format!(",2.25,{},0.5,0.25,", 2.25f64.exp()))
    );
    assert!(rows[4].starts_with("3,") && rows[4].ends_with(",,,,0.25,"));
    for r in &rows {
        assert_eq!(r.split(',').count(), codex_track::csv::COLUMNS.len());
    }
}

#[test]
fn csv_appends_without_a_second_header() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sub/metrics.csv");
    for s in [1, 2] {
        let mut sink = CsvSink::new(&p);
        sink.emit(&step(s, 1.0)).unwrap();
        sink.finish();
    }
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert_eq!(text.matches("step,ts").count(), 1);
}

#[test]
fn tensorboard_records_decode_to_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TensorBoardSink::new(dir.path().join("tb"));
    for e in [step(1, 2.5), eval(1, 2.75), step(2, 2.0)] {
        s.emit(&e).unwrap();
    }
    s.finish();
    let path = s.path().unwrap().to_path_buf();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("events.out.tfevents.") && name.ends_with(".codex"),
        "{name}"
    );
    let (recs, clean) = record::read_records(std::fs::File::open(&path).unwrap()).unwrap();
    assert!(clean);
    let events: Vec<proto::Event> = recs
        .iter()
        .map(|r| proto::Event::decode(&r[..]).unwrap())
        .collect();
    assert_eq!(events.len(), 4);
    assert_eq!(
        events[0].what,
        Some(What::FileVersion("brain.Event:2".into()))
    );
    let scalars = |e: &proto::Event| -> Vec<(String, f32)> {
        match &e.what {
            Some(What::Summary(s)) => s
                .value
                .iter()
                .map(|v| match v.value {
                    Some(ValueKind::SimpleValue(x)) => (v.tag.clone(), x),
                    _ => panic!("not a scalar"),
                })
                .collect(),
            _ => panic!("not a summary"),
        }
    };
    let first = scalars(&events[1]);
    assert_eq!(events[1].step, 1);
    assert_eq!(events[1].wall_time, 1767225601.5);
    // The fixed tags, then `perf/mfu` (set) — `perf/joules_per_token` is null, so absent.
    assert_eq!(first.len(), codex_track::tensorboard::STEP_TAGS.len() + 1);
    assert_eq!(first[8], ("perf/mfu".into(), 0.25));
    assert_eq!(first[0], ("train/loss".into(), 2.5));
    assert_eq!(first[2], ("train/lr".into(), 1e-3f64 as f32));
    assert_eq!(first[7], ("progress/tokens_seen".into(), 64.0));
    let ev = scalars(&events[2]);
    assert_eq!(ev[0], ("eval/loss".into(), 2.75));
    assert_eq!(ev[1], ("eval/ppl".into(), 2.75f64.exp() as f32));
}

#[test]
fn replay_skips_malformed_and_overlong_lines() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("metrics.ndjson");
    let mut text = String::new();
    text.push_str(&serde_json::to_string(&step(1, 2.0)).unwrap());
    text.push_str("\nnot json\n{\"event\":\"future\",\"step\":1}\n");
    text.push_str(&format!("\"{}\"\n", "x".repeat(replay::MAX_LINE + 10)));
    text.push_str(&serde_json::to_string(&eval(1, 2.0)).unwrap());
    text.push_str("\n{\"torn");
    std::fs::write(&p, text).unwrap();
    let mut buf = Vec::new();
    let stats = {
        let mut s = CsvSink::from_writer(&mut buf);
        let stats = codex_track::replay(&p, &mut s).unwrap();
        s.finish();
        stats
    };
    assert_eq!(stats.events, 2);
    assert_eq!(stats.skipped, 4);
    let text = String::from_utf8(buf).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
}

#[test]
fn system_samples_become_scalars_without_nulls() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TensorBoardSink::new(dir.path());
    let sample = serde_json::json!({
        "schema_version": 1, "ts": "2026-01-01T00:00:00Z", "mono_s": 1.0, "step": 7,
        "cpu_util_pct": 50.0, "cpu_core_util_pct": [40.0, 60.0], "load_avg_1m": null,
        "gpu_status": "ok",
        "gpus": [{"index": 0, "name": "H200", "gpu_power_w": 300.0, "gpu_temp_c": null}]
    });
    assert_eq!(s.system_sample(&sample).unwrap(), 4);
    s.finish();
    let (recs, _) = record::read_records(std::fs::File::open(s.path().unwrap()).unwrap()).unwrap();
    let e = proto::Event::decode(&recs[1][..]).unwrap();
    assert_eq!(e.step, 7);
    let Some(What::Summary(sum)) = e.what else {
        panic!()
    };
    let tags: Vec<&str> = sum.value.iter().map(|v| v.tag.as_str()).collect();
    assert_eq!(
        tags,
        [
            "system/cpu_core_util_pct/0",
            "system/cpu_core_util_pct/1",
            "system/cpu_util_pct",
            "gpu0/power_w"
        ]
    );
}
