//! How a training run reports: a progress bar on a terminal, one plain line per epoch in a log,
//! or nothing.

use super::EpochSummary;
use crate::{Result, Tensor};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::time::{Duration, Instant};

/// What a training run prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// Nothing (the library's default).
    Silent,
    /// One line per epoch on stdout: for logs and pipes.
    Lines,
    /// A progress bar on stderr while an epoch runs, then its line on stdout: for a terminal.
    Bar,
}

impl Report {
    /// `Bar` when stderr is a terminal, else `Lines`; `Silent` when `quiet`.
    pub fn for_terminal(quiet: bool) -> Report {
        use std::io::IsTerminal;
        if quiet {
            Report::Silent
        } else if std::io::stderr().is_terminal() {
            Report::Bar
        } else {
            Report::Lines
        }
    }
}

/// One epoch's progress. The bar reads the latest loss a few times a second (the only host
/// synchronisation of a step) and is cleared when the epoch ends or the run fails, so an error
/// message starts on a line of its own.
pub(crate) struct Progress {
    report: Report,
    epochs: usize,
    bar: Option<ProgressBar>,
    last_loss_read: Option<Instant>,
}

impl Progress {
    pub(crate) fn new(report: Report, epoch: usize, epochs: usize, steps: usize) -> Self {
        let bar = (report == Report::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr_with_hz(4));
            let style =
                ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {per_sec} loss {msg} ETA {eta}")
                    .map(|s| s.progress_chars("=> "))
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(format!("{epoch}/{epochs}"));
            bar
        });
        Progress { report, epochs, bar, last_loss_read: None }
    }

    pub(crate) fn step(&mut self, loss: &Tensor) -> Result<()> {
        let Some(bar) = &self.bar else { return Ok(()) };
        bar.inc(1);
        if self.last_loss_read.is_none_or(|t| t.elapsed() >= Duration::from_millis(250)) {
            self.last_loss_read = Some(Instant::now());
            bar.set_message(format!("{:.4}", loss.to_scalar::<f64>()?));
        }
        Ok(())
    }

    pub(crate) fn finish(&mut self, s: &EpochSummary) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.report != Report::Silent {
            let val_loss = s.val_loss.map_or(String::new(), |l| format!("  val loss {l:.4}"));
            let _ = writeln!(
                std::io::stdout(),
                "epoch {:>3}/{}  train loss {:.4}{val_loss}  val accuracy {:.2}%  {:.1}s",
                s.epoch,
                self.epochs,
                s.train_loss,
                100.0 * s.val_accuracy,
                s.seconds
            );
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
