//! What a run prints while it runs: logging (`-v`, `-vv`, `RUST_LOG`) that
//! does not tear the progress bars, stage log lines echoed as they are
//! logged, and plain progress lines when stderr is not a terminal.

use std::io::{IsTerminal, Write};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The progress display of this run, when it is drawn on a terminal: log
/// lines are printed above it rather than through it.
static DISPLAY: OnceLock<indicatif::MultiProgress> = OnceLock::new();

/// Print log lines above `m` from now on (when it is visible).
pub fn set_display(m: &indicatif::MultiProgress) {
    if !m.is_hidden() {
        let _ = DISPLAY.set(m.clone());
    }
}

/// The tracing filter for `-v` counts; `RUST_LOG` wins when set.
pub fn filter_for(verbose: u8) -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| {
        match verbose {
            0 => "warn",
            1 => "info",
            _ => "debug",
        }
        .into()
    })
}

/// Logging to stderr: stage log lines at info (`-v`), details at debug
/// (`-vv`), colour only on a terminal and without `NO_COLOR`.
pub fn init_tracing(verbose: u8) {
    let ansi = mrbm_stage::progress::color_enabled() && std::io::stderr().is_terminal();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter_for(verbose)))
        .with_writer(|| LineWriter(Vec::new()))
        .with_ansi(ansi)
        .with_target(false)
        .without_time()
        .try_init();
}

/// Collects one event and writes it to stderr when dropped, above the bars.
struct LineWriter(Vec<u8>);

impl Write for LineWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.0);
        let write = || {
            let _ = std::io::stderr().write_all(&bytes);
        };
        match DISPLAY.get() {
            Some(m) => m.suspend(write),
            None => write(),
        }
    }
}

/// Whether a stage log line is a warning for the summary: written by
/// `ctx.warn` (`warning: ...`), or a solver that stopped at its cap.
pub fn is_warning_line(line: &str) -> bool {
    line.starts_with(mrbm_stage::WARNING_PREFIX) || line.contains("not converged")
}

/// The warnings in a stage log, without the `warning: ` prefix.
pub fn warnings_in_log(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| is_warning_line(l))
        .map(|l| {
            l.strip_prefix(mrbm_stage::WARNING_PREFIX)
                .unwrap_or(l)
                .to_string()
        })
        .collect()
}

/// A stage's log file that also echoes each line as it is logged: at info
/// level (shown with `-v`), and warnings on stderr when no terminal display
/// shows them (the stage prints them above the bars itself).
pub struct LogTee<W: Write> {
    inner: W,
    stage_id: String,
    echo_warnings: bool,
    partial: Vec<u8>,
}

impl<W: Write> LogTee<W> {
    pub fn new(inner: W, stage_id: &str, echo_warnings: bool) -> Self {
        LogTee {
            inner,
            stage_id: stage_id.to_string(),
            echo_warnings,
            partial: Vec::new(),
        }
    }

    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        if is_warning_line(line) && self.echo_warnings {
            let msg = line
                .strip_prefix(mrbm_stage::WARNING_PREFIX)
                .unwrap_or(line);
            tracing::warn!("{}: {msg}", self.stage_id);
        } else {
            tracing::info!("{}: {line}", self.stage_id);
        }
    }
}

impl<W: Write> Write for LogTee<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.partial.extend_from_slice(&b[..n]);
        while let Some(i) = self.partial.iter().position(|&c| c == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            self.emit(&line[..line.len() - 1]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Prints the running stages' plain progress lines every `interval` on
/// stderr until dropped (for runs whose stderr is not a terminal).
pub struct Ticker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    pub fn start(interval: Duration) -> Ticker {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
                tick(&mut std::io::stderr());
            }
        });
        Ticker {
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

/// One round of progress lines.
pub fn tick(out: &mut dyn Write) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _g = ONE_AT_A_TIME.lock();
    for l in mrbm_stage::progress::plain_lines() {
        let _ = writeln!(out, "  running {l}");
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_found_in_logs() {
        let log = "train x (key k)\nwarning: 3 dead units\nclass 2: dual objective 1.0, 5 iterations (max_iter reached: not converged), 4 support vectors\nepoch 1: mean loss 0.1\n";
        let w = warnings_in_log(log);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0], "3 dead units");
        assert!(w[1].starts_with("class 2:"));
    }

    #[test]
    fn log_tee_writes_everything_through() {
        let mut t = LogTee::new(Vec::new(), "s", false);
        write!(t, "a").unwrap();
        writeln!(t, "b").unwrap();
        writeln!(t, "warning: c").unwrap();
        assert_eq!(t.inner, b"ab\nwarning: c\n");
        assert!(t.partial.is_empty());
    }

    #[test]
    fn tick_prints_one_line_per_running_bar() {
        let b = indicatif::ProgressBar::with_draw_target(
            Some(8),
            indicatif::ProgressDrawTarget::hidden(),
        );
        b.set_prefix("ticker-test");
        b.set_position(2);
        mrbm_stage::progress::register(&b);
        let mut out = Vec::new();
        tick(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.lines()
                .any(|l| l.starts_with("  running ticker-test: 2/8 (25%)")),
            "{text}"
        );
    }
}
