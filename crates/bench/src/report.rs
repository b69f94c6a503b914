//! Results: latency histograms, one report per run (a JSON line with
//! `--json`), the human table, the real-server/ceiling ratios, and the
//! markdown summary (`chat-bench report`) that takes medians over runs.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{Map, Value};

use crate::context::Ctx;

/// Latency histogram in microseconds, 1 µs to 60 s, 3 significant figures.
#[derive(Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

impl Hist {
    /// An empty histogram.
    pub fn new() -> Self {
        Hist(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"))
    }

    /// Records a duration.
    pub fn record(&mut self, d: Duration) {
        self.record_us(d.as_micros() as u64);
    }

    /// Records microseconds (clamped into range).
    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Hist) {
        let _ = self.0.add(&other.0);
    }

    /// Percentile summary fields in milliseconds, named `{prefix}p50_ms` etc.
    pub fn fields(&self, prefix: &str, out: &mut Map<String, Value>) {
        let ms = |us: u64| Value::from(us as f64 / 1000.0);
        let h = &self.0;
        let empty = h.is_empty();
        for (name, q) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999)] {
            let v = if empty {
                Value::Null
            } else {
                ms(h.value_at_quantile(q))
            };
            out.insert(format!("{prefix}{name}_ms"), v);
        }
        out.insert(
            format!("{prefix}max_ms"),
            if empty { Value::Null } else { ms(h.max()) },
        );
        out.insert(format!("{prefix}samples"), h.len().into());
    }
}

/// One run against one target.
pub struct Report {
    /// Every figure and parameter, as it goes into the JSON line.
    pub fields: Map<String, Value>,
}

impl Report {
    /// A report for `scenario` against `target` ("server" or "ceiling").
    pub fn new(ctx: &Ctx, scenario: &str, target: &str, headline: &str) -> Self {
        let mut fields = Map::new();
        fields.insert("scenario".into(), scenario.into());
        fields.insert("target".into(), target.into());
        fields.insert("headline".into(), headline.into());
        fields.insert("level".into(), ctx.level.into());
        fields.insert("transport".into(), ctx.transport.name().into());
        fields.insert("run".into(), format!("{:x}", ctx.run_id).into());
        fields.insert(
            "unix_time".into(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .into(),
        );
        for (k, v) in &ctx.notes {
            fields.insert(k.clone(), v.clone().into());
        }
        Report { fields }
    }

    /// Sets a field.
    pub fn set(&mut self, k: &str, v: impl Into<Value>) {
        self.fields.insert(k.into(), v.into());
    }

    /// A numeric field.
    pub fn num(&self, k: &str) -> Option<f64> {
        self.fields.get(k).and_then(Value::as_f64)
    }
}

/// Rounds to 3 significant decimals for display and JSON.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A column of the human table: field key and header.
pub type Column = (&'static str, &'static str);

/// Adds `vs_ceiling` ratios (server ÷ ceiling) to the server report, then
/// prints: JSON lines to stdout with `--json` (table to stderr), otherwise
/// the table to stdout.
pub fn emit(ctx: &Ctx, reports: &mut [Report], columns: &[Column], ratio_keys: &[&str]) {
    let ceiling = reports
        .iter()
        .position(|r| r.fields.get("target").and_then(Value::as_str) == Some("ceiling"));
    let server = reports
        .iter()
        .position(|r| r.fields.get("target").and_then(Value::as_str) == Some("server"));
    if let (Some(c), Some(s)) = (ceiling, server) {
        let mut ratios = Map::new();
        for k in ratio_keys {
            if let (Some(a), Some(b)) = (reports[s].num(k), reports[c].num(k)) {
                if b > 0.0 {
                    ratios.insert((*k).into(), round3(a / b).into());
                }
            }
        }
        reports[s].set("vs_ceiling", Value::Object(ratios));
    }
    let mut table = render_table(reports, columns, ratio_keys);
    for r in reports.iter() {
        if let Some(e) = r.fields.get("first_error").and_then(Value::as_str) {
            table.push_str(&format!(
                "{}: first error: {e}\n",
                cell(r.fields.get("target"))
            ));
        }
    }
    if ctx.json {
        let stdout = std::io::stdout();
        let mut o = stdout.lock();
        for r in reports.iter() {
            let _ = writeln!(o, "{}", Value::Object(r.fields.clone()));
        }
        let _ = o.flush();
        if !ctx.quiet {
            eprint!("{table}");
        }
    } else {
        print!("{table}");
    }
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                i.to_string()
            } else {
                let f = n.as_f64().unwrap_or(0.0);
                if f.abs() >= 100.0 {
                    format!("{f:.0}")
                } else {
                    format!("{f:.3}")
                }
            }
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn render_table(reports: &[Report], columns: &[Column], ratio_keys: &[&str]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["target".to_string()];
    header.extend(columns.iter().map(|c| c.1.to_string()));
    rows.push(header);
    for r in reports {
        let mut row = vec![cell(r.fields.get("target"))];
        row.extend(columns.iter().map(|c| cell(r.fields.get(c.0))));
        rows.push(row);
    }
    if let Some(Value::Object(ratios)) = reports.iter().find_map(|r| r.fields.get("vs_ceiling")) {
        let mut row = vec!["server/ceiling".to_string()];
        row.extend(columns.iter().map(|c| {
            if ratio_keys.contains(&c.0) {
                ratios
                    .get(c.0)
                    .and_then(Value::as_f64)
                    .map(|x| format!("{x:.2}x"))
                    .unwrap_or_else(|| "-".into())
            } else {
                String::new()
            }
        }));
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let scenario = reports
        .first()
        .and_then(|r| r.fields.get("scenario"))
        .map(|v| cell(Some(v)))
        .unwrap_or_default();
    let mut out = format!("\n{scenario}\n");
    for (n, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if n == 0 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
            out.push('\n');
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn fmt_num(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(f) if f.fract() == 0.0 => format!("{f:.0}"),
        Some(f) if f.abs() >= 100.0 => format!("{f:.0}"),
        Some(f) => format!("{f:.3}"),
    }
}

/// `chat-bench report`: medians per case and target over JSON-line files,
/// as a markdown table.
pub fn markdown(files: &[PathBuf]) -> anyhow::Result<String> {
    // case -> target -> runs
    let mut cases: BTreeMap<String, BTreeMap<String, Vec<Map<String, Value>>>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
            let Ok(Value::Object(m)) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let case = m
                .get("case")
                .or_else(|| m.get("scenario"))
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned();
            let target = m
                .get("target")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned();
            if !order.contains(&case) {
                order.push(case.clone());
            }
            cases
                .entry(case)
                .or_default()
                .entry(target)
                .or_default()
                .push(m);
        }
    }
    let mut out = String::from(
        "| case | target | runs | figure | median | p50 ms | p99 ms | p99.9 ms | max ms | lost (max) | errors (sum) | server/ceiling (median) | other (medians) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for case in order {
        let targets = &cases[&case];
        // The real server first, then the ceiling.
        let mut names: Vec<&String> = targets.keys().collect();
        names.sort_by_key(|t| (t.as_str() != "server", t.as_str() != "ceiling"));
        for target in names {
            let runs = &targets[target];
            let get = |k: &str| -> Vec<f64> {
                runs.iter()
                    .filter_map(|m| m.get(k).and_then(Value::as_f64))
                    .collect()
            };
            let headline = runs
                .iter()
                .find_map(|m| m.get("headline").and_then(Value::as_str))
                .unwrap_or("-")
                .to_owned();
            let ratio: Vec<f64> = runs
                .iter()
                .filter_map(|m| {
                    m.get("vs_ceiling")
                        .and_then(|v| v.get(&headline))
                        .and_then(Value::as_f64)
                })
                .collect();
            let lost = get("lost")
                .into_iter()
                .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
            let errors: f64 = get("errors").into_iter().sum();
            let scenario = runs
                .iter()
                .find_map(|m| m.get("scenario").and_then(Value::as_str))
                .unwrap_or("");
            let extras: &[&str] = match scenario {
                "idle" => &[
                    "logged_in",
                    "login_s",
                    "rss_before_kib",
                    "rss_hold_kib",
                    "kib_per_conn",
                ],
                "setup" => &["users", "secs", "argon2"],
                "group" => &["members", "senders", "msgs_per_s"],
                "direct" => &["pairs", "window", "rate"],
                _ => &[],
            };
            let other: Vec<String> = extras
                .iter()
                .filter_map(|k| {
                    let nums = get(k);
                    if !nums.is_empty() {
                        return Some(format!("{k}={}", fmt_num(median(nums))));
                    }
                    runs.iter()
                        .find_map(|m| m.get(*k).and_then(Value::as_str))
                        .map(|v| format!("{k}={v}"))
                })
                .collect();
            out.push_str(&format!(
                "| {case} | {target} | {} | {headline} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                runs.len(),
                fmt_num(median(get(&headline))),
                fmt_num(median(get("p50_ms"))),
                fmt_num(median(get("p99_ms"))),
                fmt_num(median(get("p999_ms"))),
                fmt_num(median(get("max_ms"))),
                fmt_num(lost),
                errors,
                match median(ratio) {
                    None => "-".into(),
                    Some(r) if r < 0.1 => format!("{r:.4}"),
                    Some(r) => format!("{r:.2}"),
                },
                other.join(", "),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn histogram_fields() {
        let mut h = Hist::new();
        for us in 1..=1000 {
            h.record_us(us);
        }
        let mut m = Map::new();
        h.fields("", &mut m);
        let p50 = m["p50_ms"].as_f64().unwrap();
        assert!((0.49..=0.51).contains(&p50), "{p50}");
        assert_eq!(m["samples"], 1000);
    }
}
