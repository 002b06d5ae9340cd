//! Curves of runs, drawn by codex itself: one chart per metric, runs overlaid with a legend,
//! as SVG or PNG (`plotters`). The PNG's text uses DejaVu Sans embedded in the binary, so no
//! system font is needed (or looked up).

use codex_core::event::{Event, EventKind, EventSink, SinkError};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// DejaVu Sans (Bitstream Vera license, `assets/DejaVuSans.LICENSE`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// The metrics a chart can show: the numeric fields of step and eval events.
pub const METRICS: &[&str] = &[
    "train_loss",
    "train_loss_mean",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "step_time_ms",
    "val_loss",
    "val_ppl",
    "val_token_acc",
];

/// What the x axis counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XAxis {
    Step,
    Tokens,
    /// Seconds since the run's first event.
    Time,
}

impl XAxis {
    fn label(self) -> &'static str {
        match self {
            XAxis::Step => "step",
            XAxis::Tokens => "tokens",
            XAxis::Time => "seconds",
        }
    }
}

/// One point of a metric: where it is on each possible x axis, and its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub step: u64,
    pub tokens: u64,
    pub time_s: f64,
    pub value: f64,
}

impl Point {
    fn x(&self, axis: XAxis) -> f64 {
        match axis {
            XAxis::Step => self.step as f64,
            XAxis::Tokens => self.tokens as f64,
            XAxis::Time => self.time_s,
        }
    }
}

/// A run's curves: metric name to points, in step order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunCurves {
    pub name: String,
    pub metrics: BTreeMap<String, Vec<Point>>,
}

/// Reads a run's `metrics.ndjson`. Steps redone after a resume replace the ones before them,
/// so each curve is the history the final weights went through.
pub fn load(run_dir: &Path, name: impl Into<String>) -> Result<RunCurves, SinkError> {
    struct Collect {
        curves: RunCurves,
        t0: Option<f64>,
        tokens: u64,
    }
    impl Collect {
        fn push(&mut self, metric: &str, p: Point) {
            let v = self.curves.metrics.entry(metric.to_string()).or_default();
            // A resumed segment repeats steps after its checkpoint: keep the later ones.
            while v.last().is_some_and(|q| q.step >= p.step) {
                v.pop();
            }
            v.push(p);
        }
    }
    impl EventSink for Collect {
        fn name(&self) -> &str {
            "plot"
        }
        fn emit(&mut self, e: &Event) -> Result<(), SinkError> {
            let t = crate::tensorboard::parse_ts(&e.header.ts).unwrap_or(0.0);
            let t0 = *self.t0.get_or_insert(t);
            let step = e.header.step;
            match &e.kind {
                EventKind::Step(m) => {
                    self.tokens = m.tokens_seen;
                    let at = |value| Point {
                        step,
                        tokens: m.tokens_seen,
                        time_s: t - t0,
                        value,
                    };
                    for (k, v) in [
                        ("train_loss", m.train_loss),
                        ("train_loss_mean", m.train_loss_mean),
                        ("lr", m.lr),
                        ("grad_norm", m.grad_norm),
                        ("tokens_per_s", m.tokens_per_s),
                        ("step_time_ms", m.step_time_ms),
                    ] {
                        self.push(k, at(v));
                    }
                }
                EventKind::Eval(ev) => {
                    let tokens = if step == 0 { 0 } else { self.tokens };
                    for (k, v) in [
                        ("val_loss", ev.val_loss),
                        ("val_ppl", ev.val_ppl),
                        ("val_token_acc", ev.val_token_acc),
                    ] {
                        self.push(
                            k,
                            Point {
                                step,
                                tokens,
                                time_s: t - t0,
                                value: v,
                            },
                        );
                    }
                }
                _ => {}
            }
            Ok(())
        }
    }
    let mut c = Collect {
        curves: RunCurves {
            name: name.into(),
            metrics: BTreeMap::new(),
        },
        t0: None,
        tokens: 0,
    };
    crate::replay(&run_dir.join("metrics.ndjson"), &mut c)?;
    Ok(c.curves)
}

/// TensorBoard's smoothing: an exponential moving average with weight `w` in [0, 1), debiased
/// so the curve starts at the first value rather than at 0. Non-finite values are left out.
pub fn smooth(values: &[(f64, f64)], w: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(values.len());
    let (mut last, mut n) = (0.0, 0i32);
    for &(x, y) in values {
        if !y.is_finite() {
            continue;
        }
        if w <= 0.0 {
            out.push((x, y));
            continue;
        }
        last = last * w + (1.0 - w) * y;
        n += 1;
        out.push((x, last / (1.0 - w.powi(n))));
    }
    out
}

/// How to draw.
#[derive(Debug, Clone)]
pub struct PlotOptions {
    pub metrics: Vec<String>,
    pub x: XAxis,
    /// EMA weight in [0, 1); 0 draws the raw values.
    pub smooth: f64,
    pub log_y: bool,
    /// Pixels: width, and height of each chart.
    pub width: u32,
    pub chart_height: u32,
}

impl Default for PlotOptions {
    fn default() -> Self {
        Self {
            metrics: vec!["train_loss".into(), "val_loss".into(), "lr".into()],
            x: XAxis::Step,
            smooth: 0.0,
            log_y: false,
            width: 1000,
            chart_height: 320,
        }
    }
}

/// One chart: a metric's series, one per run.
struct Chart {
    title: String,
    series: Vec<(String, Vec<(f64, f64)>)>,
}

/// What [`render`] drew: the charts (metric names) and the size of the image.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub charts: Vec<String>,
    /// Metrics asked for that no run has.
    pub empty: Vec<String>,
    pub width: u32,
    pub height: u32,
}

/// Draws `runs` into `path`: PNG when it ends in `.png`, SVG otherwise.
pub fn render(runs: &[RunCurves], opts: &PlotOptions, path: &Path) -> Result<Rendered, String> {
    let mut charts = Vec::new();
    let mut empty = Vec::new();
    for metric in &opts.metrics {
        let series: Vec<(String, Vec<(f64, f64)>)> = runs
            .iter()
            .filter_map(|r| {
                let pts = r.metrics.get(metric)?;
                let xy: Vec<(f64, f64)> = pts
                    .iter()
                    .map(|p| (p.x(opts.x), p.value))
                    .filter(|&(_, y)| !opts.log_y || y > 0.0)
                    .collect();
                let xy = smooth(&xy, opts.smooth);
                (!xy.is_empty()).then(|| (r.name.clone(), xy))
            })
            .collect();
        if series.is_empty() {
            empty.push(metric.clone());
        } else {
            charts.push(Chart {
                title: metric.clone(),
                series,
            });
        }
    }
    if charts.is_empty() {
        return Err(format!(
            "nothing to draw: no run has {}",
            opts.metrics.join(", ")
        ));
    }
    font()?;
    let (w, h) = (opts.width, opts.chart_height * charts.len() as u32);
    let png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if png {
        let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
        draw(&root, &charts, opts)?;
        root.present().map_err(|e| e.to_string())?;
    } else {
        let root = SVGBackend::new(path, (w, h)).into_drawing_area();
        draw(&root, &charts, opts)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(Rendered {
        charts: charts.into_iter().map(|c| c.title).collect(),
        empty,
        width: w,
        height: h,
    })
}

fn font() -> Result<(), String> {
    static ONCE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        for style in [
            FontStyle::Normal,
            FontStyle::Bold,
            FontStyle::Italic,
            FontStyle::Oblique,
        ] {
            plotters::style::register_font("sans-serif", style, FONT)
                .map_err(|_| "the embedded font does not load".to_string())?;
        }
        Ok(())
    })
    .clone()
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    charts: &[Chart],
    opts: &PlotOptions,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((charts.len(), 1));
    for (area, chart) in areas.iter().zip(charts) {
        let all = chart.series.iter().flat_map(|(_, v)| v.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in all {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if y1 <= y0 {
            let pad = if y0 == 0.0 { 1.0 } else { y0.abs() * 0.05 };
            (y0, y1) = (y0 - pad, y1 + pad);
        } else if !opts.log_y {
            let pad = (y1 - y0) * 0.05;
            (y0, y1) = (y0 - pad, y1 + pad);
        }
        let title = if opts.smooth > 0.0 {
            format!("{} (smoothed {})", chart.title, opts.smooth)
        } else {
            chart.title.clone()
        };
        if opts.log_y {
            one(area, chart, &title, x0..x1, (y0..y1).log_scale(), opts.x)?;
        } else {
            one(area, chart, &title, x0..x1, y0..y1, opts.x)?;
        }
    }
    Ok(())
}

fn one<DB: DrawingBackend, Y>(
    area: &DrawingArea<DB, Shift>,
    chart: &Chart,
    title: &str,
    x: std::ops::Range<f64>,
    y: Y,
    axis: XAxis,
) -> Result<(), String>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let err = |e: plotters::drawing::DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let mut c = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc(axis.label())
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    for (i, (label, pts)) in chart.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        c.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    c.configure_series_labels()
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_matches_tensorboards_debiased_ema() {
        let pts: Vec<(f64, f64)> = [1.0, 2.0, f64::NAN, 3.0]
            .iter()
            .enumerate()
            .map(|(i, &y)| (i as f64, y))
            .collect();
        let s = smooth(&pts, 0.6);
        // By hand: last = 0.4, 0.4*0.6 + 0.8 = 1.04, 1.04*0.6 + 1.2 = 1.824;
        // debiased by 1 - 0.6^n: 1.0, 1.04/0.64, 1.824/0.784.
        let want = [(0.0, 1.0), (1.0, 1.625), (3.0, 1.824 / 0.784)];
        assert_eq!(s.len(), 3);
        for (a, b) in s.iter().zip(want) {
            assert_eq!(a.0, b.0);
            assert!((a.1 - b.1).abs() < 1e-12, "{a:?} vs {b:?}");
        }
        assert_eq!(smooth(&pts, 0.0).len(), 3);
    }
}
