//! The progress bar: drawn on stderr once a phase has run for two seconds,
//! never when stderr is not a terminal or with `--quiet`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::context::Ctx;

/// What the bar counts.
pub enum Kind {
    /// Items done out of a known total (registrations, logins).
    Count(u64),
    /// Time through a timed phase; the counter is shown as a rate.
    Timed(Duration),
}

/// A running bar; [`Progress::finish`] clears it.
pub struct Progress {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts a bar for a phase named `label` that reads `counter`.
    pub fn start(ctx: &Ctx, label: &str, kind: Kind, counter: Arc<AtomicU64>) -> Progress {
        let drawable = !ctx.quiet && std::io::stderr().is_terminal();
        let (len, template) = match kind {
            Kind::Count(n) => (
                n,
                "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            ),
            Kind::Timed(d) => (
                d.as_millis() as u64,
                "{prefix:>10} [{elapsed_precise}] {wide_bar} {msg}",
            ),
        };
        let bar = ProgressBar::with_draw_target(Some(len.max(1)), ProgressDrawTarget::hidden());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_prefix(label.to_owned());
        let timed = matches!(kind, Kind::Timed(_));
        let b = bar.clone();
        let task = tokio::spawn(async move {
            let t0 = Instant::now();
            let mut last = (t0, 0u64);
            let mut shown = false;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let now = Instant::now();
                let v = counter.load(Ordering::Relaxed);
                if timed {
                    b.set_position(now.duration_since(t0).as_millis() as u64);
                    let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
                    b.set_message(format!("{:.0}/s", (v.saturating_sub(last.1)) as f64 / dt));
                } else {
                    b.set_position(v);
                    let dt = now.duration_since(t0).as_secs_f64().max(1e-3);
                    b.set_message(format!("{:.0}/s", v as f64 / dt));
                }
                last = (now, v);
                if drawable && !shown && now.duration_since(t0) >= Duration::from_secs(2) {
                    b.set_draw_target(ProgressDrawTarget::stderr());
                    shown = true;
                }
            }
        });
        Progress { bar, task }
    }

    /// Stops updating and clears the bar.
    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}
