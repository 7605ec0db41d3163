//! PNG charts (plotters) of numbers the workloads record while they run:
//! throughput vs threads and latency percentiles (W1), hit ratio vs
//! capacity (W3). The workloads call [`point`]; `main` calls [`render`]
//! once at the end, which writes the PNG files next to the document and
//! returns the Markdown that shows them.

use plotters::prelude::*;
use std::path::Path;
use std::sync::Mutex;

/// One chart: file name, title, axis labels.
pub struct Spec {
    pub file: &'static str,
    pub title: &'static str,
    pub x: &'static str,
    pub y: &'static str,
    pub log_y: bool,
    /// Tick labels for x values (the latency chart's percentiles).
    pub x_ticks: &'static [(f64, &'static str)],
}

pub const W1_THREADS: Spec = Spec {
    file: "w1-throughput-vs-threads.png",
    title: "W1 hot read: gets/s vs threads",
    x: "threads",
    y: "gets/s (median)",
    log_y: true,
    x_ticks: &[(1.0, "1"), (2.0, "2")],
};

pub const W1_LATENCY: Spec = Spec {
    file: "w1-latency-percentiles.png",
    title: "W1 hot read: get latency, 1 thread",
    x: "percentile",
    y: "latency (ns)",
    log_y: true,
    x_ticks: &[(1.0, "p50"), (2.0, "p99"), (3.0, "p99.9")],
};

pub const W3_CAPACITY: Spec = Spec {
    file: "w3-hit-ratio-vs-capacity.png",
    title: "W3 hit ratio vs capacity (Zipf 1.0, 100k keys at scale 1)",
    x: "capacity (% of keys)",
    y: "hit ratio (%)",
    log_y: false,
    x_ticks: &[],
};

struct Recorded {
    spec: &'static Spec,
    series: Vec<(String, Vec<(f64, f64)>)>,
}

static CHARTS: Mutex<Vec<Recorded>> = Mutex::new(Vec::new());

/// Records `(x, y)` in `series` of the chart `spec`.
pub fn point(spec: &'static Spec, series: &str, x: f64, y: f64) {
    if !(x.is_finite() && y.is_finite()) {
        return;
    }
    let mut charts = CHARTS.lock().expect("charts");
    let idx = match charts.iter().position(|c| std::ptr::eq(c.spec, spec)) {
        Some(i) => i,
        None => {
            charts.push(Recorded {
                spec,
                series: Vec::new(),
            });
            charts.len() - 1
        }
    };
    let c = &mut charts[idx];
    match c.series.iter_mut().find(|s| s.0 == series) {
        Some(s) => s.1.push((x, y)),
        None => c.series.push((series.to_string(), vec![(x, y)])),
    }
}

/// The font plotters draws text with (its `ab_glyph` backend reads no
/// system font by itself).
fn register_font() -> Result<(), String> {
    const FONTS: &[&str] = &[
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ];
    let bytes = FONTS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or("no DejaVuSans.ttf found (install fonts-dejavu-core)")?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| "the font file could not be parsed".to_string())
}

/// Writes every recorded chart as a PNG into `dir` and returns Markdown
/// image links (relative to the document, through `rel`).
pub fn render(dir: &Path, rel: &str) -> String {
    let charts = std::mem::take(&mut *CHARTS.lock().expect("charts"));
    if charts.is_empty() {
        return String::new();
    }
    let mut md = String::from("## Charts\n\n");
    if let Err(e) = register_font() {
        md.push_str(&format!("(Charts not drawn: {e}.)\n\n"));
        return md;
    }
    if let Err(e) = std::fs::create_dir_all(dir) {
        md.push_str(&format!("(Charts not drawn: {}: {e}.)\n\n", dir.display()));
        return md;
    }
    for c in &charts {
        let path = dir.join(c.spec.file);
        match draw(c, &path) {
            Ok(()) => md.push_str(&format!("![{}]({rel}/{})\n\n", c.spec.title, c.spec.file)),
            Err(e) => md.push_str(&format!("({}: not drawn: {e}.)\n\n", c.spec.title)),
        }
    }
    md
}

const COLORS: [RGBColor; 8] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
    RGBColor(23, 190, 207),
];

fn draw(c: &Recorded, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let pts = c.series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    let pad = (x1 - x0) * 0.05;
    let (x0, x1) = (x0 - pad, x1 + pad);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(c.spec.title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80);
    let ticks = c.spec.x_ticks;
    let fmt_x = |x: &f64| {
        if ticks.is_empty() {
            return format!("{x}");
        }
        ticks
            .iter()
            .find(|t| (t.0 - x).abs() < 1e-6)
            .map_or(String::new(), |t| t.1.to_string())
    };
    // Each branch builds a differently typed chart; the drawing is shared.
    macro_rules! plot {
        ($chart:expr) => {{
            let mut chart = $chart;
            let mut mesh = chart.configure_mesh();
            mesh.x_desc(c.spec.x)
                .y_desc(c.spec.y)
                .x_label_formatter(&fmt_x)
                .y_label_formatter(&|y: &f64| crate::report::si(*y))
                .label_style(("sans-serif", 15));
            if !ticks.is_empty() {
                mesh.x_labels(ticks.len() * 2 + 1);
            }
            mesh.draw()?;
            for (i, (name, points)) in c.series.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                let mut points = points.clone();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 15))
                .position(SeriesLabelPosition::LowerRight)
                .draw()?;
        }};
    }
    if c.spec.log_y {
        // Whole decades: plotters then labels each power of ten once. On
        // a range cut inside decades (say 519 to 48 k) it crowded labels
        // and grid lines around 10 k and printed "10.0 k" twice.
        let lo = 10f64.powf(y0.max(1e-9).log10().floor());
        let hi = 10f64.powf(y1.max(1e-9).log10().ceil()).max(lo * 10.0);
        plot!(builder.build_cartesian_2d(x0..x1, (lo..hi).log_scale())?);
    } else {
        let pad = (y1 - y0).max(1.0) * 0.05;
        plot!(builder.build_cartesian_2d(x0..x1, (y0 - pad).max(0.0)..y1 + pad)?);
    }
    root.present()?;
    Ok(())
}
