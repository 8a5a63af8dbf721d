//! Progress without a terminal.
//!
//! On a terminal, [`StageContext::bar`](crate::StageContext::bar) draws an
//! indicatif bar. When the runner's display is hidden (stderr piped, nohup,
//! Slurm), the bars are still created, so their position, message, elapsed
//! time and ETA are kept, and they are registered here: the runner prints
//! one plain line per running bar per interval ([`plain_lines`]).

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, WeakProgressBar};

/// Bars created under a hidden display, still alive or not.
static PLAIN: Mutex<Vec<WeakProgressBar>> = Mutex::new(Vec::new());

/// Remember `bar` for [`plain_lines`] (done by `StageContext::bar` when the
/// runner's display is hidden).
pub fn register(bar: &ProgressBar) {
    if let Ok(mut v) = PLAIN.lock() {
        v.retain(|w| w.upgrade().is_some_and(|b| !b.is_finished()));
        v.push(bar.downgrade());
    }
}

/// One line for each registered bar that is alive and not finished, in the
/// order they were created; bars that are gone are forgotten.
pub fn plain_lines() -> Vec<String> {
    let Ok(mut v) = PLAIN.lock() else {
        return Vec::new();
    };
    v.retain(|w| w.upgrade().is_some_and(|b| !b.is_finished()));
    v.iter()
        .filter_map(|w| w.upgrade())
        .map(|b| plain_line(&b))
        .collect()
}

/// `train[N=255]: training 120/500 (24%) loss 0.1234, elapsed 1m23s, ETA 4m10s`
pub fn plain_line(bar: &ProgressBar) -> String {
    let pos = bar.position();
    let count = match bar.length() {
        Some(len) if len > 0 => {
            format!("{pos}/{len} ({}%)", (pos.min(len) * 100) / len)
        }
        _ => format!("{pos}"),
    };
    let msg = bar.message();
    let mut line = format!("{}: {count}", bar.prefix());
    if !msg.is_empty() {
        line.push(' ');
        line.push_str(&msg);
    }
    line.push_str(&format!(", elapsed {}", human(bar.elapsed())));
    let eta = match bar.length() {
        Some(len) if len > 0 && pos > 0 && pos < len => human(bar.eta()),
        _ => "?".to_string(),
    };
    line.push_str(&format!(", ETA {eta}"));
    line
}

/// Start a bar part-way, as a stage resumed from a checkpoint does: the
/// position jumps to `pos` and the ETA counts only the work done from here
/// on (without the reset, the jump reads as work done in no time, and the
/// ETA said "1s" for most of the rest of the run).
pub fn resume_at(bar: &ProgressBar, pos: u64) {
    bar.set_position(pos);
    bar.reset_eta();
}

/// 0s, 59s, 1m05s, 2h03m.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// Whether colour is wanted: `NO_COLOR` set to anything non-empty turns it off
/// (<https://no-color.org>).
pub fn color_enabled() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The template of stage bars (no styling when colour is off).
pub fn bar_template(color: bool) -> &'static str {
    if color {
        "{prefix:.bold} {msg} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise}"
    } else {
        "{prefix} {msg} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise}"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_resume_the_eta_counts_only_the_work_since() {
        let eta_after = |reset: bool| {
            let b = ProgressBar::hidden();
            b.set_length(1000);
            if reset {
                resume_at(&b, 550);
            } else {
                b.set_position(550);
            }
            // 10 steps in at least 50 ms: at most 200 steps a second, so
            // the 440 left take at least 2.2 s (the sleep can only be longer).
            std::thread::sleep(Duration::from_millis(50));
            b.set_position(560);
            b.eta()
        };
        let resumed = eta_after(true);
        assert!(resumed >= Duration::from_secs(1), "{resumed:?}");
        // What it said before: the jump counted as work done at once.
        let naive = eta_after(false);
        assert!(naive < resumed, "{naive:?} vs {resumed:?}");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_secs(5)), "5s");
        assert_eq!(human(Duration::from_secs(65)), "1m05s");
        assert_eq!(human(Duration::from_secs(7380)), "2h03m");
    }

    #[test]
    fn plain_line_has_id_count_message_elapsed_and_eta() {
        let b = ProgressBar::hidden();
        b.set_length(500);
        b.set_prefix("train[N=255]");
        b.set_message("loss 0.1234");
        b.set_position(120);
        let l = plain_line(&b);
        assert!(
            l.starts_with("train[N=255]: 120/500 (24%) loss 0.1234, elapsed "),
            "{l}"
        );
        assert!(l.contains(", ETA "), "{l}");
    }

    #[test]
    fn no_color_template_has_no_style() {
        assert!(!bar_template(false).contains(".bold"));
        assert!(bar_template(true).contains(".bold"));
    }
}
