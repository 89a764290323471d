//! What the latency probes print: `p50_us p99_us` of their samples, on one line.

/// Prints the median and 99th percentile of `samples` (microseconds).
pub fn report(mut samples: Vec<f64>) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!("{:.1} {:.1}", at(0.5), at(0.99));
}
