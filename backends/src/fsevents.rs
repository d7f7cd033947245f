//! The FSEvents backend (macOS, the default there): one stream for the root with file-level
//! events (`FileEvents`), no deferral (`NoDefer`) and a watch on the root's own path
//! (`WatchRoot`), run on a dedicated thread's run loop. Its callback decodes each event's flags
//! into hints ([`crate::fsevents_flags`], tested on every platform) and sends them on.
//!
//! FSEvents has no per-directory watches to keep up: moves, new directories and deep trees cost
//! nothing. When it loses events (`UserDropped`, `KernelDropped`) it says so, which becomes
//! [`WatchEvent::Overflow`].
#![allow(unsafe_code)] // the CoreServices C API

use crate::fsevents_flags;
use crate::{WatchConfig, WatchError, WatchEvent, Watcher};
use crossbeam_channel::Sender;
use fsevent_sys as fs;
use fsevent_sys::core_foundation as cf;
use std::ffi::{CStr, CString, OsStr, c_char, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// Seconds FSEvents may gather events before calling back (with `NoDefer`, the first event of
/// a quiet period is delivered at once).
const LATENCY: f64 = 0.01;

#[link(name = "CoreFoundation", kind = "framework")]
unsafe extern "C" {
    fn CFRunLoopRunInMode(mode: cf::CFStringRef, seconds: f64, return_after_source_handled: cf::Boolean) -> i32;
}

/// What the callback needs, owned by the stream's thread.
struct Context {
    root: PathBuf,
    sink: Sender<WatchEvent>,
    /// Set when the consumer is gone or the root went away.
    done: Arc<AtomicBool>,
}

#[derive(Debug)]
pub(crate) struct FsEventsWatcher {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl FsEventsWatcher {
    pub(crate) fn start(config: WatchConfig, sink: Sender<WatchEvent>) -> Result<Self, WatchError> {
        let io = |source| WatchError::Io { path: config.root.clone(), source };
        // FSEvents reports canonical paths (/private/var/..., not /var/...).
        let root = config.root.canonicalize().map_err(io)?;
        let c_root = CString::new(root.as_os_str().as_bytes())
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("watch-fsevents".into())
                .spawn(move || {
                    let ctx = Box::new(Context { root, sink, done: stop.clone() });
                    run_stream(&c_root, ctx, &stop, &ready_tx);
                })
                .map_err(io)?
        };
        // Watching before start() returns: a change made after it is never missed.
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { thread: Some(thread), stop }),
            Ok(Err(e)) => Err(io(std::io::Error::other(e))),
            Err(_) => Err(io(std::io::Error::other("the FSEvents thread ended"))),
        }
    }
}

/// Creates, runs and tears down the stream on this thread's run loop until `stop` is set.
fn run_stream(root: &CStr, ctx: Box<Context>, stop: &AtomicBool, ready: &Sender<Result<(), String>>) {
    let info = Box::into_raw(ctx);
    // SAFETY: every CoreFoundation object created here is released here; `info` outlives the
    // stream (it is freed after the stream is invalidated and released); the callback only
    // reads it.
    unsafe {
        let paths = cf::CFArrayCreateMutable(cf::kCFAllocatorDefault, 1, &cf::kCFTypeArrayCallBacks);
        let path = cf::CFStringCreateWithCString(cf::kCFAllocatorDefault, root.as_ptr(), cf::kCFStringEncodingUTF8);
        cf::CFArrayAppendValue(paths, path);
        cf::CFRelease(path);
        let context = fs::FSEventStreamContext {
            version: 0,
            info: info.cast::<c_void>(),
            retain: None,
            release: None,
            copy_description: None,
        };
        let flags = fs::kFSEventStreamCreateFlagFileEvents
            | fs::kFSEventStreamCreateFlagNoDefer
            | fs::kFSEventStreamCreateFlagWatchRoot;
        let stream = fs::FSEventStreamCreate(
            cf::kCFAllocatorDefault,
            callback,
            &context,
            paths,
            fs::kFSEventStreamEventIdSinceNow,
            LATENCY,
            flags,
        );
        cf::CFRelease(paths);
        if stream.is_null() {
            let _ = ready.send(Err("FSEventStreamCreate failed".into()));
            drop(Box::from_raw(info));
            return;
        }
        let run_loop = cf::CFRunLoopGetCurrent();
        fs::FSEventStreamScheduleWithRunLoop(stream, run_loop, cf::kCFRunLoopDefaultMode);
        if fs::FSEventStreamStart(stream) == 0 {
            let _ = ready.send(Err("FSEventStreamStart failed".into()));
        } else {
            let _ = ready.send(Ok(()));
            // Short turns, so that a stop is seen without a cross-thread CFRunLoopStop race.
            while !stop.load(Ordering::SeqCst) {
                CFRunLoopRunInMode(cf::kCFRunLoopDefaultMode, 0.2, 0);
            }
            fs::FSEventStreamStop(stream);
        }
        fs::FSEventStreamInvalidate(stream);
        fs::FSEventStreamRelease(stream);
        drop(Box::from_raw(info));
    }
}

extern "C" fn callback(
    _stream: fs::FSEventStreamRef,
    info: *mut c_void,
    count: usize,
    paths: *mut c_void,
    flags: *const fs::FSEventStreamEventFlags,
    _ids: *const fs::FSEventStreamEventId,
) {
    // Never unwind into C.
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: `info` is the Context given to FSEventStreamCreate, alive while the stream
        // is; without UseCFTypes, `paths` is an array of `count` C strings and `flags` an array
        // of `count` flags, valid for this call.
        let (ctx, paths, flags) = unsafe {
            (
                &*info.cast::<Context>(),
                std::slice::from_raw_parts(paths.cast::<*const c_char>(), count),
                std::slice::from_raw_parts(flags, count),
            )
        };
        if ctx.done.load(Ordering::SeqCst) {
            return;
        }
        for (p, f) in paths.iter().zip(flags) {
            // SAFETY: each entry is a NUL-terminated string owned by FSEvents for this call.
            let abs = Path::new(OsStr::from_bytes(unsafe { CStr::from_ptr(*p) }.to_bytes()));
            for ev in fsevents_flags::decode(&ctx.root, abs, *f) {
                let gone = ev == WatchEvent::RootGone;
                if ctx.sink.send(ev).is_err() || gone {
                    ctx.done.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    });
}

impl Watcher for FsEventsWatcher {
    fn backend(&self) -> crate::Backend {
        crate::Backend::FsEvents
    }

    /// FSEvents watches the whole tree whatever the ignore rules say: nothing to refresh.
    fn refresh(&self, _path: &Path) {}

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FsEventsWatcher {
    fn drop(&mut self) {
        self.stop();
    }
}
