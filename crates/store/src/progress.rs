//! Progress bars on a terminal (indicatif); with `LIFEBOAT_PROGRESS_FILE=PATH` (the daemon's
//! jobs set it) the current step's progress as a small JSON document in that file, replaced
//! atomically a few times a second; nothing otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rustic_core::{Progress, ProgressBars, ProgressType, RusticProgress};

#[derive(Clone, Debug)]
pub struct Bars {
    visible: bool,
    file: Option<std::sync::Arc<std::path::PathBuf>>,
}

impl Bars {
    /// Visible when stderr is a terminal and `LIFEBOAT_PROGRESS` is not `0`; written to
    /// `LIFEBOAT_PROGRESS_FILE` when that is set.
    pub fn auto() -> Self {
        let off = std::env::var("LIFEBOAT_PROGRESS").is_ok_and(|v| v == "0");
        Self {
            visible: !off && std::io::stderr().is_terminal(),
            file: std::env::var_os("LIFEBOAT_PROGRESS_FILE")
                .filter(|v| !v.is_empty())
                .map(|v| std::sync::Arc::new(v.into())),
        }
    }
}

/// One step's progress, written to the progress file.
#[derive(Debug)]
struct FileBar {
    path: std::sync::Arc<std::path::PathBuf>,
    title: std::sync::Mutex<String>,
    unit: &'static str,
    total: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
    written: std::sync::Mutex<Option<std::time::Instant>>,
}

impl FileBar {
    fn write(&self, force: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let Ok(mut last) = self.written.lock() else {
            return;
        };
        if !force && last.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
            return;
        }
        *last = Some(std::time::Instant::now());
        let doc = serde_json::json!({
            "step": self.title.lock().map(|t| t.clone()).unwrap_or_default(),
            "unit": self.unit,
            "done": self.done.load(Relaxed),
            "total": self.total.load(Relaxed),
        });
        let tmp = self.path.with_extension("tmp");
        if std::fs::write(&tmp, doc.to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, &*self.path);
        }
    }
}

impl RusticProgress for FileBar {
    fn is_hidden(&self) -> bool {
        false
    }
    fn set_length(&self, len: u64) {
        self.total.store(len, std::sync::atomic::Ordering::Relaxed);
        self.write(true);
    }
    fn set_title(&self, title: &str) {
        if let Ok(mut t) = self.title.lock() {
            *t = title.to_string();
        }
        self.write(true);
    }
    fn inc(&self, inc: u64) {
        self.done
            .fetch_add(inc, std::sync::atomic::Ordering::Relaxed);
        self.write(false);
    }
    fn finish(&self) {
        self.write(true);
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
        if let Some(path) = &self.file {
            let bar = FileBar {
                path: path.clone(),
                title: std::sync::Mutex::new(prefix.to_string()),
                unit: match t {
                    ProgressType::Bytes => "bytes",
                    ProgressType::Counter => "count",
                    _ => "",
                },
                total: Default::default(),
                done: Default::default(),
                written: Default::default(),
            };
            bar.write(true);
            return Progress::new(bar);
        }
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
