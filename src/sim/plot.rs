//! `--plot`: how writes spread, drawn as SVG — one curve per watched write, the fraction of
//! running nodes holding it against the time since it was acknowledged.

use std::path::Path;

use murmur_sim::Curve;
use plotters::prelude::*;

/// Draws `curves` into an SVG file at `path`.
pub fn write_curves(path: &Path, title: &str, curves: &[Curve]) -> Result<(), String> {
    if curves.is_empty() {
        return Err("the run acknowledged no write to draw (is the workload empty?)".into());
    }
    let longest = curves
        .iter()
        .filter_map(|c| c.points.last())
        .map(|&(t, _)| t)
        .fold(0.1_f64, f64::max);
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    let draw = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("How writes spread: {title}"), ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..longest * 1.05, 0.0..1.05)
        .map_err(|e| draw(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the write was acknowledged")
        .y_desc("fraction of nodes holding it")
        .draw()
        .map_err(|e| draw(&e))?;
    for (i, curve) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(curve.points.iter().copied(), color))
            .map_err(|e| draw(&e))?;
    }
    root.present().map_err(|e| draw(&e))
}
