//! Markdown output: tables, medians with min/max, and the doc file itself.

use std::fmt::Write as _;
use std::path::PathBuf;

/// Medians over repeated runs, shown as `median (min–max)`.
#[derive(Clone, Debug, Default)]
pub struct Runs(pub Vec<f64>);

impl Runs {
    pub fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
    pub fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::INFINITY, f64::min)
    }
    pub fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
    /// `1.23 M (1.20–1.25)` for rates.
    pub fn rate(&self) -> String {
        format!(
            "{} ({}–{})",
            si(self.median()),
            si(self.min()),
            si(self.max())
        )
    }
}

/// 1234567 → "1.23 M".
pub fn si(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let (v, u) = if x >= 1e9 {
        (x / 1e9, " G")
    } else if x >= 1e6 {
        (x / 1e6, " M")
    } else if x >= 1e3 {
        (x / 1e3, " k")
    } else {
        (x, "")
    };
    if v >= 100.0 {
        format!("{v:.0}{u}")
    } else if v >= 10.0 {
        format!("{v:.1}{u}")
    } else {
        format!("{v:.2}{u}")
    }
}

/// Nanoseconds → "850 ns", "12.3 µs", "4.56 ms".
pub fn dur_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

pub struct Table {
    pub head: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(head: &[&str]) -> Self {
        Table {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }
    pub fn row(&mut self, r: Vec<String>) {
        println!("  {}", r.join(" | "));
        self.rows.push(r);
    }
    pub fn md(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "| {} |", self.head.join(" | "));
        let _ = writeln!(
            s,
            "|{}",
            self.head.iter().map(|_| "---|").collect::<String>()
        );
        for r in &self.rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        s
    }
}

/// The document being written; saved after every section so a run that is
/// cut short still leaves what it measured.
pub struct Doc {
    pub path: PathBuf,
    pub head: String,
    pub sections: Vec<String>,
}

impl Doc {
    pub fn add(&mut self, s: String) {
        self.sections.push(s);
        self.save();
    }
    pub fn save(&self) {
        let mut out = self.head.clone();
        for s in &self.sections {
            out.push_str(s);
            out.push('\n');
        }
        if let Some(p) = self.path.parent() {
            let _ = std::fs::create_dir_all(p);
        }
        std::fs::write(&self.path, out).expect("write the benchmark document");
    }
}
