//! The latency-by-percentile chart: one curve per run, the percentile on
//! a scale that stretches the tail (90 %, 99 %, 99.9 %, ... equally
//! spaced), latency on a log scale.

use std::path::Path;

use plotters::prelude::*;

/// The farthest tail drawn: 99.9999 %.
const NINES_MAX: f64 = 6.0;

/// How many nines `q` has: 0.9 → 1, 0.99 → 2; capped at [`NINES_MAX`].
fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        return NINES_MAX;
    }
    (-(1.0 - q).log10()).min(NINES_MAX)
}

/// Draws `curves` (label, points of (percentile as a fraction, µs)) into
/// the SVG file `path`.
pub(crate) fn draw(path: &Path, curves: &[(String, Vec<(f64, u64)>)]) -> Result<(), String> {
    let failed = |error: &dyn std::fmt::Display| format!("cannot draw {}: {error}", path.display());
    let top = curves
        .iter()
        .flat_map(|(_, points)| points.iter().map(|&(_, us)| us))
        .max()
        .unwrap_or(1)
        .max(10);
    let right = curves
        .iter()
        .flat_map(|(_, points)| points.iter().map(|&(q, _)| nines(q)))
        .fold(1.0_f64, f64::max)
        .ceil();
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("latency by percentile", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..right, (1u64..top * 2).log_scale())
        .map_err(|e| failed(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_labels(right as usize + 1)
        .x_label_formatter(&|x| {
            let q = 1.0 - 10f64.powf(-x);
            format!("{}%", (q * 1e6).round() / 1e4)
        })
        .draw()
        .map_err(|e| failed(&e))?;
    for (index, (label, points)) in curves.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        let series = points.iter().map(|&(q, us)| (nines(q), us.max(1)));
        chart
            .draw_series(LineSeries::new(series, color.stroke_width(2)))
            .map_err(|e| failed(&e))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| failed(&e))?;
    root.present().map_err(|e| failed(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_stretch_the_tail_evenly() {
        assert!((nines(0.9) - 1.0).abs() < 1e-9);
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(nines(1.0), NINES_MAX);
        assert_eq!(nines(0.0), 0.0);
    }

    #[test]
    fn a_chart_of_two_curves_names_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("latency.svg");
        let curve = |scale: u64| vec![(0.5, 100 * scale), (0.99, 300 * scale), (1.0, 900 * scale)];
        draw(
            &path,
            &[
                ("first".to_owned(), curve(1)),
                ("second".to_owned(), curve(2)),
            ],
        )
        .expect("drawn");
        let svg = std::fs::read_to_string(&path).expect("written");
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.contains("first") && svg.contains("second"));
        assert!(svg.contains("99%"), "the tail is labelled");
    }
}
