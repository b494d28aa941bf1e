//! Progress for long host-side work: an indicatif bar on a terminal, log lines otherwise.

use indicatif::{ProgressBar, ProgressStyle};

pub struct Steps {
    bar: Option<ProgressBar>,
    prefix: &'static str,
}

impl Steps {
    pub fn new(show: bool, prefix: &'static str, total: u64) -> Steps {
        let bar = show.then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:20}] {pos}/{len} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(prefix);
            bar
        });
        Steps { bar, prefix }
    }

    pub fn next(&self, what: &str) {
        log::info!("{}: {what}", self.prefix);
        if let Some(bar) = &self.bar {
            bar.inc(1);
            bar.set_message(what.to_string());
        }
    }

    /// One more item of a long uniform loop: the bar moves; the log says nothing (a line per
    /// image would drown it), only [`Steps::finish`] does.
    pub fn tick(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    pub fn finish(&self) {
        log::info!("{}: done", self.prefix);
        if let Some(bar) = &self.bar {
            bar.finish_with_message("done");
        }
    }
}
