//! Signals. The ones below are blocked before any thread exists (every thread inherits the
//! mask), and one thread takes them with `sigwait`, so no request thread is ever interrupted:
//!
//! - SIGTERM, SIGINT: flush every device and detach the mount ([`super::teardown::stop`]); the
//!   daemon exits once the kernel ends the FUSE connection.
//! - SIGHUP: reopen the log file of `-o log=PATH` (what logrotate sends after renaming it; new
//!   lines go to a new file at PATH). Without `log=` it is logged and ignored: a daemon has no
//!   terminal to lose.
//! - SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGPWR: their default
//!   action would end the daemon without a word and leave a stale mount ("Transport endpoint is
//!   not connected"); each is logged and ignored, the mount keeps serving.
//! - SIGTSTP, SIGTTIN, SIGTTOU: their default action would stop the daemon, and every access
//!   to the mount would wait (Ctrl-Z on `snapfs mount -f`, or a log line to the terminal from
//!   the background with `stty tostop`); logged and ignored as well.
//! - SIGPIPE is ignored: a write to a closed pipe fails with EPIPE instead.
//!
//! SIGKILL and SIGSTOP cannot be handled: SIGKILL leaves a stale mount, SIGSTOP a mount on
//! which every access waits until SIGCONT (docs/troubleshooting.md).

use super::teardown::{self, Identity};
use crate::volume::Volume;
use nix::sys::signal::{SigHandler, SigSet, Signal};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Signals that stop the mount.
const STOP: [Signal; 2] = [Signal::SIGTERM, Signal::SIGINT];

/// Signals that would kill or stop the daemon by default: logged and ignored.
const IGNORED: [Signal; 11] = [
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGIO,
    Signal::SIGPWR,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

/// Every signal the signal thread takes.
pub(super) fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for sig in STOP.iter().chain(&IGNORED).chain(&[Signal::SIGHUP]) {
        set.add(*sig);
    }
    set
}

/// Blocks [`handled`] in this thread (and so in every thread started after) and ignores
/// SIGPIPE. Call before any thread exists.
pub(super) fn block() -> nix::Result<SigSet> {
    let set = handled();
    set.thread_block()?;
    // SAFETY: SIG_IGN installs no handler code.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }?;
    Ok(set)
}

/// What the signal thread acts on.
pub(super) struct Context {
    pub volume: Arc<Volume>,
    pub mountpoint: PathBuf,
    pub ours: Identity,
    /// `-o log=PATH`, reopened on SIGHUP.
    pub log: Option<PathBuf>,
}

/// Starts the thread that takes `signals` (see the module documentation).
pub(super) fn spawn(signals: SigSet, context: Context) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("snapfs-signals".to_string())
        .spawn(move || {
            loop {
                match signals.wait() {
                    Ok(sig) => handle(sig, &context),
                    Err(e) => {
                        log::error!("sigwait failed: {e}; stop with umount");
                        return;
                    }
                }
            }
        })?;
    Ok(())
}

fn handle(sig: Signal, context: &Context) {
    let mp = context.mountpoint.display();
    if STOP.contains(&sig) {
        log::info!("{sig}: flushing and unmounting {mp}");
        if let Err(e) = context.volume.flush_all() {
            log::error!("flush failed: {e}");
        }
        teardown::stop(&context.mountpoint, &context.ours);
        return;
    }
    if sig == Signal::SIGHUP {
        match &context.log {
            Some(path) => reopen_log(path),
            None => log::info!(
                "SIGHUP ignored: no log file to reopen (-o log=PATH); {mp} keeps serving \
                 (stop it with umount or SIGTERM)"
            ),
        }
        return;
    }
    log::info!("{sig} ignored: {mp} keeps serving (stop it with umount or SIGTERM)");
}

/// Points the log at a fresh open of `path` (after a rotation renamed the old file). On any
/// failure the log stays where it was, and says why.
fn reopen_log(path: &Path) {
    if let Err(e) = crate::host::reach::check_live_log(path) {
        log::error!("SIGHUP: not reopening the log: {e}");
        return;
    }
    match super::open_log(path) {
        Ok(file) => {
            log::info!("SIGHUP: reopening the log file {}", path.display());
            super::redirect_stderr(file);
            log::info!("SIGHUP: log file {} reopened", path.display());
        }
        Err(e) => log::error!("SIGHUP: cannot reopen the log: {e}; logging on where it was"),
    }
}
