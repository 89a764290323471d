//! `--plot`: how writes spread and how crashes came to be known, drawn as SVG. One panel has
//! one curve per watched write (the fraction of running nodes holding it against the time since
//! it was acknowledged); when the run crashed nodes, one panel for killed processes (their
//! hosts answered) and one for silent hosts have a curve per crash (the fraction of the nodes
//! that had to declare it failed that did, against the time since the crash). The two kinds
//! differ by two orders of magnitude, so they do not share an axis.

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
    let killed: Vec<&Curve> = detections
        .iter()
        .filter(|d| d.host_answered)
        .map(|d| &d.curve)
        .collect();
    let silent: Vec<&Curve> = detections
        .iter()
        .filter(|d| !d.host_answered)
        .map(|d| &d.curve)
        .collect();
    let panels = [
        (
            writes.iter().collect::<Vec<_>>(),
            format!("How writes spread: {title}"),
            "seconds since the write was acknowledged",
            "fraction of nodes holding it",
        ),
        (
            killed,
            format!("How killed processes came to be known (their hosts answered): {title}"),
            "seconds since the crash",
            "fraction of nodes that declared it failed",
        ),
        (
            silent,
            format!("How silent hosts came to be known: {title}"),
            "seconds since the crash",
            "fraction of nodes that declared it failed",
        ),
    ];
    let panels: Vec<_> = panels.into_iter().filter(|p| !p.0.is_empty()).collect();
    let root = SVGBackend::new(path, (960, 550 * panels.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((panels.len(), 1));
    for (area, (curves, caption, x, y)) in areas.iter().zip(&panels) {
        panel(area, caption, (x, y), curves)?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Draws one panel of fractions (0 to 1) over seconds, one curve per event.
fn panel(
    area: &DrawingArea<SVGBackend, Shift>,
    caption: &str,
    (x, y): (&str, &str),
    curves: &[&Curve],
) -> Result<(), String> {
    let longest = curves
        .iter()
        .filter_map(|c| c.points.last())
        .map(|&(t, _)| t)
        .fold(0.1_f64, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..longest * 1.05, 0.0..1.05)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x)
        .y_desc(y)
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, curve) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(thinned(&curve.points), color))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Most points drawn per curve: a curve has one per node, and 24 curves of 10,000 points made
/// an SVG of megabytes that looks the same as this.
const MAX_POINTS: usize = 400;

/// Every k-th point of `points`, and the last, so at most about [`MAX_POINTS`] remain.
fn thinned(points: &[(f64, f64)]) -> impl Iterator<Item = (f64, f64)> + '_ {
    let step = points.len().div_ceil(MAX_POINTS).max(1);
    let last = points.len().saturating_sub(1);
    points
        .iter()
        .enumerate()
        .filter(move |(k, _)| k % step == 0 || *k == last)
        .map(|(_, &p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_curve_is_thinned_to_its_shape_and_end() {
        let points: Vec<(f64, f64)> = (1..=10_000).map(|k| (k as f64, k as f64 / 1e4)).collect();
        let kept: Vec<(f64, f64)> = thinned(&points).collect();
        assert!(kept.len() <= MAX_POINTS + 1, "{}", kept.len());
        assert_eq!(kept.first(), points.first());
        assert_eq!(kept.last(), points.last());
        let short = [(0.0, 0.5), (1.0, 1.0)];
        assert_eq!(thinned(&short).count(), 2);
    }
}
