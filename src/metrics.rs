//! Training metrics: one JSON object per optimizer step in a JSONL file (DESIGN.md, stable
//! interfaces), and a PNG of the loss and evaluation curves drawn from that file.
//!
//! Each line has at least `step`, `loss`, `source` (`student` | `teacher` | `dataset`), `tokens`,
//! `lr` and `seconds`, then any extra fields (divergence, the λ draw, tokens/s, ...). Evaluation
//! results go in the extra fields of the step they were measured at, named `eval_<metric>`
//! (`eval_exact_match`, `eval_rouge_l`, ...): the plot draws every numeric `eval_*` field in a
//! second panel. A non-finite loss is written as `null` (JSON has no NaN) and left out of the plot.
//! RL + GKD steps add `reward_mean` and `reward_std` (over the step's samples) and the loss's two
//! parts, `distill_loss` and `pg_loss`.

use crate::error::{Error, Result};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where a step's completions came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Sampled from the student (on-policy).
    Student,
    /// Sampled from the teacher (sequence-level KD).
    Teacher,
    /// The dataset's completions (supervised).
    Dataset,
}

/// One optimizer step's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer steps completed, counting this one (1 for the first).
    pub step: u64,
    pub loss: f64,
    pub source: Source,
    /// Completion tokens the loss was averaged over (all micro-batches of the step).
    pub tokens: u64,
    /// The learning rate this step used.
    pub lr: f64,
    /// Wall-clock seconds the step took.
    pub seconds: f64,
    /// Further fields, written after the required ones.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Appends one line per step to a metrics file, flushing each line to the OS as it is written.
pub struct MetricsWriter {
    file: File,
    path: PathBuf,
}

impl MetricsWriter {
    /// Starts a new metrics file, replacing any old one.
    pub fn create(path: &Path) -> Result<MetricsWriter> {
        let file = File::create(path).map_err(|e| io_error("create", path, e))?;
        Ok(MetricsWriter { file, path: path.to_path_buf() })
    }

    /// Continues a metrics file after resuming from the checkpoint taken at step `last_step`:
    /// lines of later steps (logged before the run stopped, and about to be redone) and a last
    /// line cut off mid-write are dropped, so the file reads as if the run had never stopped.
    /// The kept lines are rewritten through a temporary and a rename. A missing file starts anew.
    pub fn resume(path: &Path, last_step: u64) -> Result<MetricsWriter> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return MetricsWriter::create(path),
            Err(e) => return Err(io_error("read", path, e)),
        };
        let mut kept = String::with_capacity(text.len());
        for (i, line) in text.split_inclusive('\n').enumerate() {
            if !line.ends_with('\n') {
                break; // cut off mid-write
            }
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(line).map_err(|e| {
                Error::Msg(format!(
                    "{}:{}: not a metrics line ({e}); fix or remove it to resume",
                    path.display(),
                    i + 1
                ))
            })?;
            if value.get("step").and_then(Value::as_u64).is_none_or(|s| s <= last_step) {
                kept.push_str(line);
            }
        }
        let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        fs::write(&tmp, &kept)
            .and_then(|()| fs::rename(&tmp, path))
            .map_err(|e| io_error("rewrite", path, e))?;
        let file = OpenOptions::new().append(true).open(path).map_err(|e| io_error("open", path, e))?;
        Ok(MetricsWriter { file, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one step's line (in a single write, so a kill leaves at most one partial line).
    pub fn write(&mut self, metrics: &StepMetrics) -> Result<()> {
        let mut line = serde_json::to_string(metrics)
            .map_err(|e| Error::Msg(format!("cannot encode metrics of step {}: {e}", metrics.step)))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| io_error("write", &self.path, e))
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Msg(format!("cannot {what} metrics file {}: {e}", path.display()))
}

/// Every line of a metrics file as a JSON object (blank lines and a last line cut off mid-write
/// are skipped).
pub fn read_metrics(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let text = fs::read_to_string(path).map_err(|e| io_error("read", path, e))?;
    let mut rows = Vec::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |problem: String| Error::Msg(format!("{}:{}: {problem}", path.display(), i + 1));
        match serde_json::from_str(line) {
            Ok(Value::Object(obj)) => rows.push(obj),
            Err(_) if !line.ends_with('\n') => {} // the last line, cut off mid-write
            Ok(_) => return Err(at("expected a JSON object".into())),
            Err(e) => return Err(at(format!("invalid JSON: {e}"))),
        }
    }
    Ok(rows)
}

/// The embedded font for plot labels: DejaVu Sans subset to ASCII (assets/fonts, license beside it),
/// registered with plotters' `ab_glyph` backend so no system font library is needed.
const FONT: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/fonts/DejaVuSans-ASCII.ttf"));
const FAMILY: &str = "sans-serif";

fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok =
        *REGISTERED.get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Msg("the embedded plot font could not be loaded".into()))
    }
}

type Series = (String, Vec<(f64, f64)>);

/// Draws the loss (raw and smoothed) against the step, and every `eval_*` field in a second panel
/// when present, from a metrics JSONL file into a PNG.
pub fn plot_curves(metrics_jsonl: &Path, png_path: &Path) -> Result<()> {
    if png_path.extension().and_then(|e| e.to_str()).is_none_or(|e| !e.eq_ignore_ascii_case("png")) {
        return Err(Error::Msg(format!("plot {}: the file name must end in .png", png_path.display())));
    }
    let rows = read_metrics(metrics_jsonl)?;
    let mut loss = Vec::new();
    let mut evals: Vec<Series> = Vec::new();
    for row in &rows {
        let Some(step) = row.get("step").and_then(Value::as_f64) else { continue };
        if let Some(l) = row.get("loss").and_then(Value::as_f64).filter(|l| l.is_finite()) {
            loss.push((step, l));
        }
        for (key, value) in row {
            let Some(v) = key.strip_prefix("eval_").and(value.as_f64()).filter(|v| v.is_finite()) else {
                continue;
            };
            match evals.iter_mut().find(|(name, _)| name == key) {
                Some((_, points)) => points.push((step, v)),
                None => evals.push((key.clone(), vec![(step, v)])),
            }
        }
    }
    if loss.is_empty() && evals.is_empty() {
        return Err(Error::Msg(format!(
            "{}: no finite loss or eval values to plot",
            metrics_jsonl.display()
        )));
    }
    register_font()?;
    draw(png_path, &loss, &evals).map_err(|e| Error::Msg(format!("cannot draw {}: {e}", png_path.display())))
}

/// Exponential moving average with bias correction (TensorBoard's smoothing), its weight chosen
/// so that it averages over about a twentieth of the run.
fn smoothed(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let w = 1.0 - 20.0 / (points.len() as f64).max(20.0);
    let (mut avg, mut norm) = (0.0, 0.0);
    points
        .iter()
        .map(|&(x, y)| {
            avg = w * avg + (1.0 - w) * y;
            norm = w * norm + (1.0 - w);
            (x, avg / norm)
        })
        .collect()
}

fn bounds(points: impl Iterator<Item = (f64, f64)>) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let (mut x0, mut x1, mut y0, mut y1) =
        (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x1 <= x0 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let pad = if y1 > y0 { 0.05 * (y1 - y0) } else { 0.5 * y0.abs().max(1e-3) };
    (x0..x1, y0 - pad..y1 + pad)
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
];
const LOSS_COLOR: RGBColor = RGBColor(31, 119, 180);

fn draw(
    png_path: &Path,
    loss: &[(f64, f64)],
    evals: &[Series],
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let height = if evals.is_empty() || loss.is_empty() { 480 } else { 840 };
    let root = BitMapBackend::new(png_path, (960, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = if evals.is_empty() || loss.is_empty() {
        (root.clone(), None)
    } else {
        let (t, b) = root.split_vertically(440);
        (t, Some(b))
    };

    if !loss.is_empty() {
        let (xs, ys) = bounds(loss.iter().copied());
        let mut chart = ChartBuilder::on(&top)
            .caption("training loss", (FAMILY, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(xs, ys)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style((FAMILY, 14))
            .draw()?;
        chart
            .draw_series(LineSeries::new(loss.iter().copied(), LOSS_COLOR.mix(0.45)))?
            .label("loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], LOSS_COLOR.mix(0.45)));
        if loss.len() >= 40 {
            chart
                .draw_series(LineSeries::new(smoothed(loss), LOSS_COLOR.stroke_width(2)))?
                .label("loss, smoothed")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], LOSS_COLOR.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }

    if !evals.is_empty() {
        let area = bottom.unwrap_or(top);
        let (xs, ys) = bounds(evals.iter().flat_map(|(_, p)| p.iter().copied()));
        let mut chart = ChartBuilder::on(&area)
            .caption("evaluation", (FAMILY, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(xs, ys)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("score")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style((FAMILY, 14))
            .draw()?;
        for (k, (name, points)) in evals.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
