//! The replicas' own log lines, caught per thread and put into the trace where they happen
//! (`mirror-sim --trace --log`).

use std::cell::RefCell;

thread_local! {
    static LINES: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

struct Catch;

impl log::Log for Catch {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Debug
    }

    fn log(&self, r: &log::Record<'_>) {
        LINES.with(|l| {
            if let Some(v) = l.borrow_mut().as_mut() {
                v.push(format!("[{}] {}", r.level(), r.args()));
            }
        });
    }

    fn flush(&self) {}
}

static CATCH: Catch = Catch;

/// From now on this thread's replicas' log lines (debug and above) are kept for the trace.
pub fn catch() {
    if log::set_logger(&CATCH).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
    LINES.with(|l| *l.borrow_mut() = Some(Vec::new()));
}

/// The lines caught since the last call.
pub(crate) fn take() -> Vec<String> {
    LINES.with(|l| l.borrow_mut().as_mut().map(std::mem::take).unwrap_or_default())
}
