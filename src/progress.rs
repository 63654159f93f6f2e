//! Progress of the slow steps (first-run download, model load, long prompts), reported to an
//! optional callback. The library prints nothing by itself: `Engine::with_progress`,
//! `Session::set_progress` and `fetch::default_model_path_with` take a `Progress`; `Bars` is one
//! that draws indicatif bars on stderr.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What the counts of a stage are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Layers,
    Tokens,
}

/// Receives the progress of one stage at a time: `start`, any number of `update`s, `finish`. Every
/// method defaults to doing nothing.
pub trait Progress: Send + Sync {
    /// A stage begins: `what` it is ("loading model"), `total` units (0 when unknown).
    fn start(&self, _what: &str, _total: u64, _unit: Unit) {}
    /// `done` units of the current stage are complete.
    fn update(&self, _done: u64) {}
    /// The current stage is over.
    fn finish(&self) {}
    /// A line worth showing to a person (for example that a first run is downloading a model).
    fn note(&self, _line: &str) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}

/// indicatif bars on stderr. A bar appears only once its stage has run for a second (quick loads
/// and prompts stay silent), and never when stderr is not a terminal (indicatif hides it) or with
/// `quiet`. Notes are printed to stderr as lines unless `quiet`.
pub struct Bars {
    quiet: bool,
    active: Mutex<Option<Active>>,
}

struct Active {
    bar: ProgressBar,
    /// Dropped (or sent on) when the stage ends, so the thread that would reveal the bar exits.
    done: mpsc::Sender<()>,
}

/// How long a stage runs before its bar is shown.
const SHOW_AFTER: Duration = Duration::from_secs(1);

impl Bars {
    pub fn new(quiet: bool) -> Arc<Bars> {
        Arc::new(Bars { quiet, active: Mutex::new(None) })
    }

    fn end(&self) {
        if let Some(a) = self.active.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = a.done.send(());
            a.bar.finish_and_clear();
        }
    }
}

impl Progress for Bars {
    fn start(&self, what: &str, total: u64, unit: Unit) {
        self.end();
        if self.quiet {
            return;
        }
        let bar = if total > 0 { ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden()) } else { ProgressBar::hidden() };
        let counts = match unit {
            Unit::Bytes => "{bytes}/{total_bytes} ({bytes_per_sec})",
            Unit::Layers => "{pos}/{len} layers",
            Unit::Tokens => "{pos}/{len} tokens",
        };
        let template = if total > 0 {
            format!("{{spinner}} {{msg}} [{{bar:30}}] {counts} {{elapsed}}")
        } else {
            "{spinner} {msg} {elapsed}".to_string()
        };
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        let (tx, rx) = mpsc::channel::<()>();
        let shown = bar.clone();
        std::thread::spawn(move || {
            if rx.recv_timeout(SHOW_AFTER) == Err(mpsc::RecvTimeoutError::Timeout) && !shown.is_finished() {
                // Still running after a second: show it (hidden anyway if stderr is no terminal),
                // ticking so the spinner and time move while the GPU works between updates.
                shown.set_draw_target(ProgressDrawTarget::stderr());
                shown.enable_steady_tick(Duration::from_millis(200));
            }
        });
        *self.active.lock().unwrap_or_else(|e| e.into_inner()) = Some(Active { bar, done: tx });
    }

    fn update(&self, done: u64) {
        if let Some(a) = self.active.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            a.bar.set_position(done);
        }
    }

    fn finish(&self) {
        self.end();
    }

    fn note(&self, line: &str) {
        if self.quiet {
            return;
        }
        match self.active.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(a) => a.bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }
}
