//! `codex plot`, `codex compare` and the loss sparkline of `codex status`, on real tiny runs.

use crate::support::{codex, corpus, lines, stdout_json, tempdir, tiny_args};
use std::path::{Path, PathBuf};

/// Two tiny runs that differ in their learning rate.
fn two_runs(dir: &Path) -> (PathBuf, PathBuf) {
    let input = corpus(dir);
    let a = dir.join("runs/lr-3e-3");
    let b = dir.join("runs/lr-1e-2");
    codex().args(tiny_args(&input, &a, &[])).assert().success();
    codex()
        .args(tiny_args(&input, &b, &["optimizer.lr=1e-2"]))
        .assert()
        .success();
    (a, b)
}

#[test]
fn plot_svg_parses_and_png_decodes_with_lines_and_text() {
    let dir = tempdir();
    let (a, b) = two_runs(dir.path());

    let svg = dir.path().join("out/curves.svg");
    let v = stdout_json(
        codex()
            .arg("--json")
            .arg("plot")
            .arg(&a)
            .arg(&b)
            .arg("-o")
            .arg(&svg),
    );
    assert_eq!(
        v["charts"],
        serde_json::json!(["train_loss", "val_loss", "lr"])
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the SVG is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(root.attribute("width"), Some("1000"));
    assert_eq!(root.attribute("height"), Some("960"));
    // One line per run per chart, and each run named in the legends.
    let lines_drawn = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "polyline")
        .count();
    assert!(lines_drawn >= 6, "{lines_drawn} polylines");
    let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
    for name in ["lr-3e-3", "lr-1e-2", "train_loss", "val_loss", "step"] {
        assert!(
            texts.iter().any(|t| t.contains(name)),
            "{name} not in {texts:?}"
        );
    }

    let png = dir.path().join("curves.png");
    codex()
        .arg("plot")
        .arg(&a)
        .arg(&b)
        .args([
            "--metrics",
            "train_loss,val_loss",
            "--smooth",
            "0.6",
            "--log-y",
            "--x",
            "tokens",
        ])
        .arg("-o")
        .arg(&png)
        .assert()
        .success();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1000, 640));
    let px = info.color_type.samples();
    assert!(px >= 3);
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    let white = pixels.iter().filter(|p| p[..3] == [255, 255, 255]).count();
    // Coloured line pixels (not grey: text and axes are black or grey).
    let coloured = pixels
        .iter()
        .filter(|p| {
            let (mx, mn) = (p[..3].iter().max().unwrap(), p[..3].iter().min().unwrap());
            mx - mn > 60
        })
        .count();
    // Dark pixels: the embedded font's glyphs and the axes.
    let dark = pixels
        .iter()
        .filter(|p| p[..3].iter().all(|&c| c < 80))
        .count();
    assert!(white > pixels.len() / 2, "mostly background");
    assert!(coloured > 500, "{coloured} coloured pixels");
    assert!(dark > 500, "{dark} dark pixels");
}

#[test]
fn plot_refuses_unknown_metrics_and_bad_smoothing() {
    let dir = tempdir();
    let run = dir.path().join("r");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("metrics.ndjson"), "").unwrap();
    let out = codex()
        .arg("plot")
        .arg(&run)
        .args(["--metrics", "loss"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("val_loss"));
    let out = codex()
        .arg("plot")
        .arg(&run)
        .args(["--smooth", "1.5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // An empty record: nothing to draw, and no file written.
    let svg = dir.path().join("x.svg");
    let out = codex()
        .arg("plot")
        .arg(&run)
        .arg("-o")
        .arg(&svg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to draw"));
    assert!(!svg.exists());
}

#[test]
fn compare_shows_config_differences_and_metrics() {
    let dir = tempdir();
    let (a, b) = two_runs(dir.path());
    let v = stdout_json(codex().args(["--json", "compare"]).arg(&a).arg(&b));
    let diff = v["config_diff"].as_object().unwrap();
    // Only what differs: the learning rate and the output directory.
    let keys: Vec<&String> = diff.keys().collect();
    assert_eq!(keys, ["optimizer.lr", "output.dir"], "{diff:?}");
    assert_eq!(diff["optimizer.lr"][0], "0.003");
    assert_eq!(diff["optimizer.lr"][1], "0.01");
    for (run, r) in [&a, &b].iter().zip(v["runs"].as_array().unwrap()) {
        let events = lines(&run.join("metrics.ndjson"));
        let end = events.last().unwrap();
        assert_eq!(r["status"], "completed");
        assert_eq!(r["steps"], 12);
        let last_step = events.iter().rev().find(|e| e["event"] == "step").unwrap();
        assert_eq!(r["final_train_loss"], last_step["train_loss"]);
        let evals: Vec<&serde_json::Value> =
            events.iter().filter(|e| e["event"] == "eval").collect();
        let best = evals
            .iter()
            .min_by(|x, y| {
                x["val_loss"]
                    .as_f64()
                    .partial_cmp(&y["val_loss"].as_f64())
                    .unwrap()
            })
            .unwrap();
        assert_eq!(r["best_val_loss"], best["val_loss"]);
        assert_eq!(r["best_val_step"], best["step"]);
        assert_eq!(r["wall_s"], end["elapsed_s"]);
        let tps = r["tokens_per_s"].as_f64().unwrap();
        let want = end["tokens_per_s"].as_f64().unwrap();
        assert!((tps - want).abs() <= 1e-6 * want, "{tps} vs {want}");
    }
    let text = String::from_utf8(
        codex()
            .arg("compare")
            .arg(&a)
            .arg(&b)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        text.contains("optimizer.lr") && text.contains("best val_loss"),
        "{text}"
    );
    assert!(!text.contains("training.steps"), "{text}");

    // `--plot`: the same curves as `codex plot`, both runs in the legend.
    let svg = dir.path().join("compare.svg");
    codex()
        .arg("compare")
        .arg(&a)
        .arg(&b)
        .arg("--plot")
        .arg(&svg)
        .assert()
        .success();
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the SVG is well-formed XML");
    let lines_drawn = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "polyline")
        .count();
    assert!(lines_drawn >= 6, "{lines_drawn} polylines");
    let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
    for name in ["lr-3e-3", "lr-1e-2", "val_loss"] {
        assert!(
            texts.iter().any(|t| t.contains(name)),
            "{name} not in {texts:?}"
        );
    }
}

#[test]
fn status_shows_the_loss_sparkline_and_best_val_loss() {
    let dir = tempdir();
    let (a, _) = two_runs(dir.path());
    let v = stdout_json(
        codex()
            .args(["--json", "status", "--runs"])
            .arg(dir.path().join("runs"))
            .arg(dir.path()),
    );
    let run = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "lr-3e-3")
        .unwrap()
        .clone();
    let spark = run["loss_sparkline"].as_str().unwrap();
    assert_eq!(spark.chars().count(), 12, "{spark}");
    assert!(spark.chars().all(|c| "▁▂▃▄▅▆▇█".contains(c)), "{spark}");
    // The first step's loss is the highest of a run whose loss falls.
    assert_eq!(spark.chars().next(), Some('█'), "{spark}");
    let evals: Vec<serde_json::Value> = lines(&a.join("metrics.ndjson"))
        .into_iter()
        .filter(|e| e["event"] == "eval")
        .collect();
    let best = evals
        .iter()
        .min_by(|x, y| {
            x["val_loss"]
                .as_f64()
                .partial_cmp(&y["val_loss"].as_f64())
                .unwrap()
        })
        .unwrap();
    assert_eq!(run["best_val_loss"], best["val_loss"]);
    assert_eq!(run["best_val_loss_step"], best["step"]);
    let text = String::from_utf8(
        codex()
            .args(["status", "--runs"])
            .arg(dir.path().join("runs"))
            .arg(dir.path())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(text.contains(spark), "{text}");
    assert!(text.contains("| Loss curve | Best val loss |"), "{text}");
}
