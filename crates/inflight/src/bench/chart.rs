//! The chart: throughput and p95 latency against concurrency, the recommended level marked. Plain SVG written
//! by hand (a few dozen elements), so it needs no font files or drawing library and opens in any browser.
//! For an embeddings matrix it draws the recommended batch size's row; for the engine, the recommended thread
//! count's.

use std::fmt::Write;

use super::BenchReport;

const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 80.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// The chart as an SVG document.
pub fn svg_chart(r: &BenchReport) -> String {
    let row = |l: &&super::LevelReport| l.batch == r.recommendation.batch && l.threads == r.recommendation.threads;
    let levels: Vec<&super::LevelReport> = r.levels.iter().filter(row).collect();
    let by_tokens = levels.iter().any(|l| l.output_tokens_per_s > 0.0);
    let rate = |l: &super::LevelReport| if by_tokens { l.output_tokens_per_s } else { l.jobs_per_s };
    let unit = if by_tokens { "output tokens/s" } else { "jobs/s" };
    let xs: Vec<f64> = levels.iter().map(|l| (l.concurrency as f64).log2()).collect();
    let (x0, x1) = (xs.iter().copied().fold(f64::MAX, f64::min), xs.iter().copied().fold(f64::MIN, f64::max));
    let x_span = if x1 > x0 { x1 - x0 } else { 1.0 };
    let y_max = nice(levels.iter().map(|l| rate(l)).fold(0.0, f64::max));
    let l_max = nice(levels.iter().map(|l| l.latency_ms.p95).fold(0.0, f64::max));
    let px = |x: f64| LEFT + (x - x0) / x_span * (W - LEFT - RIGHT);
    let py = |y: f64, max: f64| H - BOTTOM - y / max * (H - TOP - BOTTOM);

    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{cx}" y="24" text-anchor="middle" font-size="15">Throughput and p95 latency by concurrency: {server}{batch}</text>
"##,
        cx = W / 2.0,
        server = escape(&r.server_description),
        batch = match (r.recommendation.batch, r.recommendation.threads) {
            (b, _) if b > 1 => format!(", {b} inputs per request"),
            (_, Some(t)) => format!(", {t} threads"),
            _ => String::new(),
        }
    );
    // Axes and ticks.
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>"##,
        b = H - BOTTOM,
        r = W - RIGHT
    );
    let _ = writeln!(s, r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b}" stroke="#1f77b4"/>"##, b = H - BOTTOM);
    let _ = writeln!(
        s,
        r##"<line x1="{r}" y1="{TOP}" x2="{r}" y2="{b}" stroke="#d62728"/>"##,
        r = W - RIGHT,
        b = H - BOTTOM
    );
    for (l, x) in levels.iter().zip(&xs) {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle">{}</text>"##,
            px(*x),
            H - BOTTOM + 18.0,
            l.concurrency
        );
    }
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end" fill="#1f77b4">{}</text>"##,
            LEFT - 6.0,
            py(f * y_max, y_max) + 4.0,
            short(f * y_max)
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" fill="#d62728">{}</text>"##,
            W - RIGHT + 6.0,
            py(f * l_max, l_max) + 4.0,
            short(f * l_max)
        );
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y}" x2="{r}" y2="{y}" stroke="#eee"/>"##,
            y = py(f * y_max, y_max),
            r = W - RIGHT
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle">requests in flight (log scale)</text>"##,
        W / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        s,
        r##"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle" fill="#1f77b4">{unit}</text>"##,
        H / 2.0
    );
    let _ = writeln!(
        s,
        r##"<text transform="translate({} {}) rotate(90)" text-anchor="middle" fill="#d62728">p95 latency (ms)</text>"##,
        W - 18.0,
        H / 2.0
    );
    // The recommended level.
    if let Some(i) = levels.iter().position(|l| l.concurrency == r.recommendation.concurrency) {
        let x = px(xs[i]);
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{TOP}" x2="{x}" y2="{b}" stroke="#2ca02c" stroke-width="2" stroke-dasharray="6 4"/>"##,
            b = H - BOTTOM
        );
        // The label sits on the side of the line with room for it.
        let (label_x, anchor) = if x > W / 2.0 { (x - 6.0, "end") } else { (x + 6.0, "start") };
        let _ = writeln!(
            s,
            r##"<text x="{label_x}" y="{}" text-anchor="{anchor}" fill="#2ca02c">recommended: {}</text>"##,
            TOP + 12.0,
            r.recommendation.concurrency
        );
    }
    // The two curves.
    for (color, max, value, name) in [
        ("#1f77b4", y_max, &rate as &dyn Fn(&super::LevelReport) -> f64, "throughput"),
        ("#d62728", l_max, &|l: &super::LevelReport| l.latency_ms.p95, "p95 latency"),
    ] {
        let points: Vec<String> =
            levels.iter().zip(&xs).map(|(l, x)| format!("{:.1},{:.1}", px(*x), py(value(l), max))).collect();
        let _ = writeln!(
            s,
            r##"<polyline class="{name}" fill="none" stroke="{color}" stroke-width="2" points="{}"/>"##,
            points.join(" ")
        );
        for p in &points {
            let (x, y) = p.split_once(',').unwrap_or_default();
            let _ = writeln!(s, r##"<circle cx="{x}" cy="{y}" r="3.5" fill="{color}"/>"##);
        }
    }
    let _ = writeln!(s, r##"<text x="{}" y="{}" fill="#1f77b4">&#9679; throughput</text>"##, LEFT + 10.0, TOP - 8.0);
    let _ = writeln!(s, r##"<text x="{}" y="{}" fill="#d62728">&#9679; p95 latency</text>"##, LEFT + 120.0, TOP - 8.0);
    s.push_str("</svg>\n");
    s
}

/// Rounds up to 1, 2 or 5 × a power of ten.
fn nice(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|c| *c >= v).unwrap_or(10.0 * p)
}

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_rounds_up() {
        assert_eq!(nice(7.3), 10.0);
        assert_eq!(nice(130.0), 200.0);
        assert_eq!(nice(0.0), 1.0);
    }
}
