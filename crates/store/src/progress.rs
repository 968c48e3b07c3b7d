//! Progress bars on a terminal (indicatif), nothing otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rustic_core::{Progress, ProgressBars, ProgressType, RusticProgress};

#[derive(Clone, Copy, Debug)]
pub struct Bars {
    visible: bool,
}

impl Bars {
    /// Visible when stderr is a terminal and `LIFEBOAT_PROGRESS` is not `0`.
    pub fn auto() -> Self {
        let off = std::env::var("LIFEBOAT_PROGRESS").is_ok_and(|v| v == "0");
        Self {
            visible: !off && std::io::stderr().is_terminal(),
        }
    }
}

#[derive(Debug)]
struct Bar(ProgressBar);

impl RusticProgress for Bar {
    fn is_hidden(&self) -> bool {
        self.0.is_hidden()
    }
    fn set_length(&self, len: u64) {
        self.0.set_length(len);
    }
    fn set_title(&self, title: &str) {
        self.0.set_prefix(title.to_string());
    }
    fn inc(&self, inc: u64) {
        self.0.inc(inc);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl ProgressBars for Bars {
    fn progress(&self, t: ProgressType, prefix: &str) -> Progress {
        if !self.visible {
            return Progress::hidden();
        }
        let bar = ProgressBar::new(0).with_prefix(prefix.to_string());
        bar.set_draw_target(ProgressDrawTarget::stderr());
        let style = match t {
            ProgressType::Bytes => ProgressStyle::with_template(
                "{prefix:20} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ),
            ProgressType::Counter => ProgressStyle::with_template(
                "{prefix:20} [{elapsed_precise}] {wide_bar} {pos}/{len}",
            ),
            _ => ProgressStyle::with_template("{prefix:20} [{elapsed_precise}] {spinner}"),
        }
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress::new(Bar(bar))
    }
}
