//! The FSEvents backend (macOS, the default there): one stream for the root with file-level
//! events (`FileEvents`), no deferral (`NoDefer`) and a watch on the root's own path
//! (`WatchRoot`), run on a dedicated thread's run loop. Its callback decodes each event's flags
//! into hints ([`crate::fsevents_flags`], tested on every platform) and sends them on.
//!
//! FSEvents has no per-directory watches to keep up: moves, new directories and deep trees cost
//! nothing. When it loses events (`UserDropped`, `KernelDropped`) it says so, which becomes
//! [`WatchEvent::Overflow`].
//!
//! It also keeps a history on each volume. After every batch the callback sends a
//! [`WatchEvent::Checkpoint`] (the volume's event-store UUID and the batch's last event id); a
//! consumer that saved one passes it back at the next start, and the stream then begins at that
//! id (`sinceWhen`): what changed while the agent was stopped arrives as ordinary hints, ended by
//! `HistoryDone` ([`WatchEvent::Replayed`]). Whether a checkpoint is still good is decided by
//! [`crate::resume::decide`].
#![allow(unsafe_code)] // the CoreServices C API

use crate::resume::{self, Position, Start};
use crate::{Checkpoint, WatchConfig, WatchError, WatchEvent, Watcher, fsevents_flags};
use crossbeam_channel::Sender;
use fsevent_sys as fs;
use fsevent_sys::core_foundation as cf;
use std::ffi::{CStr, CString, OsStr, c_char, c_void};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// Seconds FSEvents may gather events before calling back (with `NoDefer`, the first event of
/// a quiet period is delivered at once).
const LATENCY: f64 = 0.01;

/// The backend's name in its checkpoints.
const NAME: &str = "fsevents";

#[link(name = "CoreFoundation", kind = "framework")]
unsafe extern "C" {
    fn CFRunLoopRunInMode(mode: cf::CFStringRef, seconds: f64, return_after_source_handled: cf::Boolean) -> i32;
    fn CFUUIDCreateString(alloc: cf::CFAllocatorRef, uuid: cf::CFRef) -> cf::CFStringRef;
}

#[link(name = "CoreServices", kind = "framework")]
unsafe extern "C" {
    /// `dev` is a `dev_t`, 32 bits on macOS. Returns a `CFUUIDRef` (to release), or null when
    /// the volume keeps no event history.
    fn FSEventsCopyUUIDForDevice(dev: i32) -> cf::CFRef;
}

/// The event-history UUID of device `dev`, as text; `None` when the volume keeps no history.
fn history_uuid(dev: u64) -> Option<String> {
    // `st_dev` is an `i32` widened to 64 bits by std: narrowing it back is exact.
    #[allow(clippy::cast_possible_truncation)]
    let dev = dev as i32;
    // SAFETY: plain CoreFoundation calls; every object created is released here, and the
    // buffer outlives the call that fills it.
    unsafe {
        let uuid = FSEventsCopyUUIDForDevice(dev);
        if uuid.is_null() {
            return None;
        }
        let text = CFUUIDCreateString(cf::kCFAllocatorDefault, uuid);
        cf::CFRelease(uuid);
        if text.is_null() {
            return None;
        }
        let mut buf = [0 as c_char; 64];
        let ok = cf::CFStringGetCString(text, buf.as_mut_ptr(), 64, cf::kCFStringEncodingUTF8);
        cf::CFRelease(text);
        if !ok {
            return None;
        }
        Some(CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned())
    }
}

/// What the callback needs, owned by the stream's thread.
struct Context {
    root: PathBuf,
    /// The volume's history UUID: checkpoints are sent only when there is one.
    uuid: Option<String>,
    sink: Sender<WatchEvent>,
    /// Set when the consumer is gone or the root went away.
    done: Arc<AtomicBool>,
}

#[derive(Debug)]
pub(crate) struct FsEventsWatcher {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    replaying: bool,
}

impl FsEventsWatcher {
    pub(crate) fn start(config: WatchConfig, sink: Sender<WatchEvent>) -> Result<Self, WatchError> {
        let io = |source| WatchError::Io { path: config.root.clone(), source };
        // FSEvents reports canonical paths (/private/var/..., not /var/...).
        let root = config.root.canonicalize().map_err(io)?;
        let c_root = CString::new(root.as_os_str().as_bytes())
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let dev = std::fs::metadata(&root).map_err(io)?.dev();
        let uuid = history_uuid(dev);
        // SAFETY: no arguments; reads the machine's event counter.
        let current = unsafe { fs::FSEventsGetCurrentEventId() };
        let since = match resume::decide(NAME, config.resume.as_ref(), uuid.as_deref(), current) {
            Start::Replay(id) => {
                log::info!("{}: replaying file-system events since event {id}", root.display());
                Some(id)
            }
            Start::Fresh(why) => {
                if config.resume.is_some() {
                    log::info!("{}: not replaying file-system events: {why}", root.display());
                }
                None
            }
        };
        // Everything before now is the consumer's to scan (or is being replayed): this is a
        // position it may save once it has.
        if since.is_none()
            && let Some(u) = &uuid
        {
            let _ = sink.send(WatchEvent::Checkpoint(resume::encode(NAME, &Position { uuid: u.clone(), id: current })));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("watch-fsevents".into())
                .spawn(move || {
                    let ctx = Box::new(Context { root, uuid, sink, done: stop.clone() });
                    run_stream(&c_root, since, ctx, &stop, &ready_tx);
                })
                .map_err(io)?
        };
        // Watching before start() returns: a change made after it is never missed.
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { thread: Some(thread), stop, replaying: since.is_some() }),
            Ok(Err(e)) => Err(io(std::io::Error::other(e))),
            Err(_) => Err(io(std::io::Error::other("the FSEvents thread ended"))),
        }
    }
}

/// Creates, runs and tears down the stream on this thread's run loop until `stop` is set. With
/// `since`, the stream first replays the volume's history after that event id.
fn run_stream(
    root: &CStr,
    since: Option<u64>,
    ctx: Box<Context>,
    stop: &AtomicBool,
    ready: &Sender<Result<(), String>>,
) {
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
            since.unwrap_or(fs::kFSEventStreamEventIdSinceNow),
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
    ids: *const fs::FSEventStreamEventId,
) {
    // Never unwind into C.
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: `info` is the Context given to FSEventStreamCreate, alive while the stream
        // is; without UseCFTypes, `paths` is an array of `count` C strings, and `flags` and
        // `ids` arrays of `count` values, valid for this call.
        let (ctx, paths, flags, ids) = unsafe {
            (
                &*info.cast::<Context>(),
                std::slice::from_raw_parts(paths.cast::<*const c_char>(), count),
                std::slice::from_raw_parts(flags, count),
                std::slice::from_raw_parts(ids, count),
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
        // Every hint of this batch is on its way: the consumer may save this position once it
        // has acted on them.
        // (An id of 0 says nothing of a position: no checkpoint from it; the last one stands.)
        if let (Some(uuid), Some(id)) = (&ctx.uuid, ids.iter().copied().filter(|&i| i != 0).max()) {
            let c: Checkpoint = resume::encode(NAME, &Position { uuid: uuid.clone(), id });
            if ctx.sink.send(WatchEvent::Checkpoint(c)).is_err() {
                ctx.done.store(true, Ordering::SeqCst);
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

    fn replaying(&self) -> bool {
        self.replaying
    }

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
