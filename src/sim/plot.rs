//! `--plot`: how writes spread and how crashes came to be known, drawn as SVG. The upper panel
//! has one curve per watched write (the fraction of running nodes holding it against the time
//! since it was acknowledged); the lower one, when the run crashed nodes, one curve per crash
//! (the fraction of the nodes that had to declare it failed that did, against the time since
//! the crash), red where the host answered for the killed process, blue where it fell silent.

use std::path::Path;

use murmur_sim::{Curve, DetectionCurve};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Draws the curves into an SVG file at `path`.
pub fn write_curves(
    path: &Path,
    title: &str,
    writes: &[Curve],
    detections: &[DetectionCurve],
) -> Result<(), String> {
    if writes.is_empty() && detections.is_empty() {
        return Err(
            "the run acknowledged no write and crashed no node to draw (is the workload empty?)"
                .into(),
        );
    }
    let height = if detections.is_empty() { 600 } else { 1100 };
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = if detections.is_empty() {
        vec![root.clone()]
    } else {
        root.split_evenly((2, 1))
    };
    if !writes.is_empty() {
        let curves = writes
            .iter()
            .enumerate()
            .map(|(i, c)| (c, Palette99::pick(i).to_rgba()));
        let labels = Labels {
            caption: format!("How writes spread: {title}"),
            x: "seconds since the write was acknowledged",
            y: "fraction of nodes holding it",
        };
        panel(&panels[0], &labels, curves)?;
    }
    if let Some(area) = panels.last().filter(|_| !detections.is_empty()) {
        let curves = detections.iter().map(|d| {
            let color = if d.host_answered { RED } else { BLUE };
            (&d.curve, color.mix(0.7))
        });
        let labels = Labels {
            caption: format!(
                "How crashes came to be known (red: killed, blue: silent host): {title}"
            ),
            x: "seconds since the crash",
            y: "fraction of nodes that declared it failed",
        };
        panel(area, &labels, curves)?;
    }
    root.present().map_err(|e| e.to_string())
}

/// What a panel says.
struct Labels {
    caption: String,
    x: &'static str,
    y: &'static str,
}

/// Draws one panel of fractions (0 to 1) over seconds.
fn panel<'a>(
    area: &DrawingArea<SVGBackend, Shift>,
    labels: &Labels,
    curves: impl Iterator<Item = (&'a Curve, RGBAColor)> + Clone,
) -> Result<(), String> {
    let longest = curves
        .clone()
        .filter_map(|(c, _)| c.points.last())
        .map(|&(t, _)| t)
        .fold(0.1_f64, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(&labels.caption, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..longest * 1.05, 0.0..1.05)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(labels.x)
        .y_desc(labels.y)
        .draw()
        .map_err(|e| e.to_string())?;
    for (curve, color) in curves {
        chart
            .draw_series(LineSeries::new(curve.points.iter().copied(), color))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
