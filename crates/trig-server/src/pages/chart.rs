//! The run chart: rows read per run (bars) and run duration (a line) over
//! the last days, as inline SVG drawn here, so a stalled or shrinking feed
//! shows at a glance without a script. A failed run is a cross under the
//! axis (a shape, not only a colour). Everything drawn is a number or our
//! own words: nothing of the customer's is put into the SVG.

use std::fmt::Write;

use trig_store::Micros;

/// One run on the chart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub at: Micros,
    pub rows: u64,
    pub seconds: f64,
    pub failed: bool,
}

const W: f64 = 720.0;
const PANEL: f64 = 100.0;
const LEFT: f64 = 56.0;
const GAP: f64 = 28.0;

fn compact(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// The chart of `points` between `from` and `to`, with a sentence for screen readers.
pub fn svg(points: &[Point], from: Micros, to: Micros) -> String {
    let span = (to - from).max(1) as f64;
    let x = |t: Micros| LEFT + ((t - from) as f64 / span).clamp(0.0, 1.0) * (W - LEFT - 8.0);
    let max_rows = points.iter().map(|p| p.rows).max().unwrap_or(0).max(1) as f64;
    let max_secs = points.iter().map(|p| p.seconds).fold(0.0f64, f64::max).max(1.0);
    let failed = points.iter().filter(|p| p.failed).count();
    let total: u64 = points.iter().map(|p| p.rows).sum();
    let summary = format!(
        "{} runs over the last {} days, {} rows read in all ({} per run at most), {} failed, the longest took {:.0} s",
        points.len(),
        ((to - from) as f64 / 86_400e6).round(),
        total,
        max_rows as u64,
        failed,
        max_secs
    );
    let h = PANEL * 2.0 + GAP * 2.0 + 10.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {W} {h}" role="img" aria-labelledby="chart-title chart-desc"><title id="chart-title">Rows read and duration per run</title><desc id="chart-desc">{summary}</desc>"#
    );
    // The rows panel.
    let top = 14.0;
    let base = top + PANEL;
    let _ = write!(s, r#"<text x="0" y="{:.0}" class="axis">rows</text>"#, top - 4.0);
    let _ = write!(s, r#"<text x="{:.0}" y="{:.0}" class="axis" text-anchor="end">{}</text>"#, LEFT - 6.0, top + 8.0, compact(max_rows));
    let _ = write!(s, r#"<text x="{:.0}" y="{base:.0}" class="axis" text-anchor="end">0</text>"#, LEFT - 6.0);
    let _ = write!(s, r#"<line x1="{LEFT}" y1="{base}" x2="{}" y2="{base}" class="rule"/>"#, W - 8.0);
    let bar = ((W - LEFT) / (points.len().max(1) as f64) * 0.6).clamp(1.0, 12.0);
    for p in points {
        let hgt = (p.rows as f64 / max_rows) * PANEL;
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="{bar:.1}" height="{:.1}" class="bar"/>"#,
            x(p.at) - bar / 2.0,
            base - hgt,
            hgt.max(if p.rows > 0 { 1.0 } else { 0.0 })
        );
        if p.failed {
            let (cx, cy) = (x(p.at), base + 7.0);
            let _ = write!(s, r#"<path d="M{:.1} {:.1}l6 6m0 -6l-6 6" class="failed"/>"#, cx - 3.0, cy - 3.0);
        }
    }
    // The duration panel.
    let top2 = base + GAP + 10.0;
    let base2 = top2 + PANEL;
    let _ = write!(s, r#"<text x="0" y="{:.0}" class="axis">seconds</text>"#, top2 - 4.0);
    let _ = write!(s, r#"<text x="{:.0}" y="{:.0}" class="axis" text-anchor="end">{:.0}</text>"#, LEFT - 6.0, top2 + 8.0, max_secs);
    let _ = write!(s, r#"<text x="{:.0}" y="{base2:.0}" class="axis" text-anchor="end">0</text>"#, LEFT - 6.0);
    let _ = write!(s, r#"<line x1="{LEFT}" y1="{base2}" x2="{}" y2="{base2}" class="rule"/>"#, W - 8.0);
    let mut line = String::new();
    for p in points {
        let _ = write!(line, "{:.1},{:.1} ", x(p.at), base2 - (p.seconds / max_secs) * PANEL);
    }
    if !line.is_empty() {
        let _ = write!(s, r#"<polyline points="{}" class="line"/>"#, line.trim_end());
    }
    for p in points {
        let _ = write!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="2" class="dot"/>"#, x(p.at), base2 - (p.seconds / max_secs) * PANEL);
    }
    let _ = write!(s, r#"<text x="{LEFT}" y="{:.0}" class="axis">{}</text>"#, base2 + 16.0, super::date(from));
    let _ = write!(s, r#"<text x="{}" y="{:.0}" class="axis" text-anchor="end">{}</text>"#, W - 8.0, base2 + 16.0, super::date(to));
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_draws_a_bar_per_run_marks_failures_and_says_it_in_words() {
        let day = 86_400_000_000;
        let pts = vec![
            Point { at: day, rows: 100, seconds: 2.0, failed: false },
            Point { at: 2 * day, rows: 0, seconds: 30.0, failed: true },
            Point { at: 3 * day, rows: 50, seconds: 1.0, failed: false },
        ];
        let s = svg(&pts, 0, 7 * day);
        assert_eq!(s.matches("<rect").count(), 3);
        assert_eq!(s.matches(r#"class="failed""#).count(), 1);
        assert!(s.contains("3 runs over the last 7 days, 150 rows read in all (100 per run at most), 1 failed"), "{s}");
        assert!(s.starts_with("<svg") && s.ends_with("</svg>") && !s.contains("<script"));
        // No runs: an empty chart, not a division by zero.
        let e = svg(&[], 0, day);
        assert!(e.contains("0 runs") && !e.contains("NaN"), "{e}");
    }
}
