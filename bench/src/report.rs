//! The one table the bench prints, its footer, and the JSON file.

use serde_json::{json, Value};

/// How a row's ratio is shown, and which way is good.
#[derive(Debug, Clone, Copy)]
pub enum Ratio {
    /// drover / machine as a percentage (throughput-like: higher is better).
    Percent,
    /// drover / machine as a factor (latency-like: lower is better).
    Times,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub key: &'static str,
    pub metric: String,
    pub drover: f64,
    pub unit: &'static str,
    /// The machine's own limit measured in the same run, or NaN when the row has none
    /// (then `machine_what` says so and why).
    pub machine: f64,
    /// What the machine figure is, e.g. "raw spawn+wait".
    pub machine_what: String,
    pub ratio: Ratio,
    pub target: String,
    /// None: no target for this row.
    pub ok: Option<bool>,
    /// The verdict is on the ratio to a limit measured in each run (throughput against
    /// the raw spawn rate), so the run shown is the one with the median ratio, not the
    /// one with the median Drover figure: the limit moves from run to run too.
    pub median_by_ratio: bool,
    /// The Drover figure of every repeat (filled by [`merge_runs`]).
    pub runs: Vec<f64>,
}

/// The limit cell of a row with no measured limit.
pub fn no_limit(why: &str) -> (f64, String) {
    (f64::NAN, format!("none: {why}"))
}

/// Folds repeated runs of the same rows into one row per key: the run with the median
/// Drover figure is shown (with its own limit, measured in that run, so the ratio stays
/// within one run), or with the median ratio for a row judged on it, and `runs` keeps
/// every run's figure for the range.
pub fn merge_runs(runs: Vec<Vec<Row>>) -> Vec<Row> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    let keys: Vec<&'static str> = first.iter().map(|r| r.key).collect();
    keys.into_iter()
        .filter_map(|key| {
            let mut same: Vec<&Row> = runs
                .iter()
                .filter_map(|rs| rs.iter().find(|r| r.key == key))
                .collect();
            same.sort_by(|a, b| a.drover.total_cmp(&b.drover));
            let figures = same.iter().map(|r| r.drover).collect();
            if same.first()?.median_by_ratio {
                same.sort_by(|a, b| a.ratio_value().total_cmp(&b.ratio_value()));
            }
            let mut row = (*same.get(same.len() / 2)?).clone();
            row.runs = figures;
            Some(row)
        })
        .collect()
}

impl Row {
    fn ratio_value(&self) -> f64 {
        self.drover / self.machine
    }

    fn range(&self) -> String {
        match (self.runs.first(), self.runs.last()) {
            (Some(lo), Some(hi)) if self.runs.len() > 1 => format!(
                "{}–{} ({} runs)",
                fmt_value(*lo, ""),
                fmt_value(*hi, self.unit),
                self.runs.len()
            ),
            _ => "1 run".into(),
        }
    }

    fn cells(&self) -> [String; 7] {
        let r = self.ratio_value();
        let ratio = if !r.is_finite() {
            "—".to_string()
        } else {
            match self.ratio {
                Ratio::Percent => format!("{:.1} %", r * 100.0),
                Ratio::Times => format!("{r:.2}×"),
            }
        };
        [
            self.metric.clone(),
            fmt_value(self.drover, self.unit),
            self.range(),
            if self.machine.is_finite() {
                format!(
                    "{} {}",
                    fmt_value(self.machine, self.unit),
                    self.machine_what
                )
            } else {
                self.machine_what.clone()
            },
            ratio,
            self.target.clone(),
            match self.ok {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => "—".into(),
            },
        ]
    }

    pub fn json(&self) -> Value {
        json!({
            "key": self.key,
            "metric": self.metric,
            "drover": finite(self.drover),
            "machine": finite(self.machine),
            "machine_what": self.machine_what,
            "unit": self.unit,
            "ratio": finite(self.ratio_value()),
            "target": self.target,
            "ok": self.ok,
            "runs": self.runs.iter().map(|v| finite(*v)).collect::<Vec<Value>>(),
        })
    }
}

fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

pub fn fmt_value(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    let digits = match v.abs() {
        a if a >= 100.0 => 0,
        a if a >= 10.0 => 1,
        _ => 2,
    };
    format!("{v:.digits$} {unit}").trim_end().to_string()
}

/// A markdown table (so it can be pasted into BENCHMARKS.md as it is).
pub fn table(rows: &[Row]) -> String {
    let header = [
        "metric",
        "drover (median)",
        "range",
        "machine limit (same run)",
        "ratio",
        "target",
        "ok?",
    ];
    let cells: Vec<[String; 7]> = rows.iter().map(Row::cells).collect();
    let mut width = header.map(|h| h.chars().count());
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c.iter()) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |c: &[String]| {
        let parts: Vec<String> = c
            .iter()
            .zip(width.iter())
            .map(|(s, w)| format!("{s}{}", " ".repeat(w - s.chars().count())))
            .collect();
        format!("| {} |", parts.join(" | "))
    };
    let mut out = String::new();
    out.push_str(&line(&header.map(String::from)));
    out.push('\n');
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
    for c in &cells {
        out.push_str(&line(c));
        out.push('\n');
    }
    out
}

/// What the numbers were measured on.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub mem_gib: f64,
    pub kernel: String,
    pub pg_version: String,
    pub pg_durability: String,
    pub pg_where: String,
    pub date: String,
    /// /proc/loadavg (1-minute) at the start and end: other work on the machine skews
    /// every figure.
    pub load_start: f64,
    pub load_end: f64,
}

pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

impl Machine {
    pub fn local() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu,
            mem_gib: mem_kib / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            load_start: loadavg(),
            ..Machine::default()
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "nproc": self.nproc,
            "cpu": self.cpu,
            "mem_gib": self.mem_gib,
            "kernel": self.kernel,
            "postgres": self.pg_version,
            "postgres_durability": self.pg_durability,
            "postgres_server": self.pg_where,
            "date": self.date,
            "load_start": finite(self.load_start),
            "load_end": finite(self.load_end),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &'static str, drover: f64, machine: f64) -> Row {
        Row {
            key,
            metric: key.into(),
            drover,
            unit: "ms",
            machine,
            machine_what: "limit".into(),
            ratio: Ratio::Times,
            target: "—".into(),
            ok: Some(drover < 10.0),
            median_by_ratio: false,
            runs: Vec::new(),
        }
    }

    #[test]
    fn merged_rows_show_the_median_run_with_its_own_limit_and_every_run() {
        let runs = vec![
            vec![row("a", 9.0, 1.0), row("b", 1.0, 1.0)],
            vec![row("a", 30.0, 2.0), row("b", 2.0, 1.0)],
            vec![row("a", 3.0, 3.0), row("b", 3.0, 1.0)],
        ];
        let merged = merge_runs(runs);
        assert_eq!(merged.len(), 2);
        let a = &merged[0];
        assert_eq!((a.key, a.drover, a.machine), ("a", 9.0, 1.0));
        assert_eq!(a.runs, vec![3.0, 9.0, 30.0]);
        assert_eq!(a.ok, Some(true));
        assert_eq!(a.range(), "3.00–30.0 ms (3 runs)");
        assert_eq!(merged[1].drover, 2.0);
    }

    /// Throughput's limit moves between runs: 867 jobs/s against 1 462 is the median
    /// figure but the highest share; the row shows the run whose share is the median.
    #[test]
    fn a_row_judged_on_its_ratio_shows_the_run_with_the_median_ratio() {
        let run = |d: f64, m: f64| {
            let mut r = row("t", d, m);
            r.ratio = Ratio::Percent;
            r.median_by_ratio = true;
            r.ok = Some(d / m >= 0.5);
            r
        };
        let merged = merge_runs(vec![
            vec![run(867.0, 1462.0)],
            vec![run(836.0, 1845.0)],
            vec![run(918.0, 1765.0)],
        ]);
        let t = &merged[0];
        assert_eq!((t.drover, t.machine), (918.0, 1765.0));
        assert_eq!(t.cells()[4], "52.0 %");
        assert_eq!(t.runs, vec![836.0, 867.0, 918.0]);
    }

    #[test]
    fn a_row_without_a_limit_says_so_and_has_no_ratio() {
        let (m, what) = no_limit("a setting");
        let mut r = row("c", 5.0, m);
        r.machine_what = what;
        let cells = r.cells();
        assert_eq!(cells[3], "none: a setting");
        assert_eq!(cells[4], "—");
        assert_eq!(r.json()["machine"], Value::Null);
    }
}
