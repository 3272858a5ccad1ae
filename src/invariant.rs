//! The invariants of docs/ARCHITECTURE.md that are checked as the code runs, in release builds
//! too: each check costs a comparison or two per chunk, nothing next to the I/O it guards.
//!
//! A broken invariant is a bug in snapfs, never bad input (bad input is refused where it
//! enters, with an error). What happens when one breaks is chosen per invariant, by what is on
//! disk at that moment:
//! - Nothing written yet (allocation, a commit before its records are queued): [`broken`]
//!   panics with a message naming the invariant, before anything reaches the COW. In the
//!   daemon that panic stops the process ([`stop_process_on_break`]): a request thread that
//!   died with it would leave the others serving from the same broken state.
//! - Already durable (a table insert after its commit): the snapshot is invalidated, durably,
//!   and the error names the invariant (`Snapshot::insert_committed`): stopping would not undo
//!   the record, and an invalid snapshot is never read again, here or after a restart.
//!
//! Records read from a COW are input: the loader refuses a COW holding an invalid record with
//! an error (`StoreError::Corrupt`), through the same check that guards every area write.

use std::fmt::Display;

/// Allocation never hands out the header (chunk 0) or a metadata area's chunk.
pub const ALLOCATED_NOT_METADATA: &str = "no allocated chunk is a metadata area";
/// Every chunk a commit records was allocated before: it lies below `next_free`.
pub const COMMITTED_BELOW_NEXT_FREE: &str = "committed chunks are below next_free";
/// A record points at a data chunk on the COW and at a chunk of the origin.
pub const RECORDS_VALID: &str = "records are valid before an area is written";
/// An origin chunk gets one exception: a commit never records a chunk the table holds.
pub const TABLE_INSERTS_FRESH: &str = "table inserts are fresh";

/// The start of every message (panic or log) that reports a broken invariant.
pub const PREFIX: &str = "snapfs invariant broken";

/// The message that reports `invariant` broken, with what was found.
pub fn message(invariant: &str, found: impl Display) -> String {
    format!("{PREFIX}: {invariant}: {found}")
}

/// Reports `invariant` broken and panics with [`message`]; nothing may be written after this.
#[cold]
#[track_caller]
pub fn broken(invariant: &str, found: impl Display) -> ! {
    let msg = message(invariant, found);
    log::error!("{msg}");
    panic!("{msg}");
}

/// Makes a panic that reports a broken invariant end the process (after the usual panic
/// report), whichever thread it happens on; other panics are left as they were. The daemon
/// calls this once at its start.
pub fn stop_process_on_break() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let payload = info.payload();
        let text = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        if text.is_some_and(|t| t.starts_with(PREFIX)) {
            eprintln!("snapfs: stopping: a broken invariant must not reach a COW");
            std::process::abort();
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs this test binary again as a child that installs the hook and panics on a thread of
    /// its own, with a broken invariant (`break`) or an ordinary panic (`other`).
    #[test]
    fn a_break_on_any_thread_stops_the_process_and_other_panics_do_not() {
        use std::os::unix::process::ExitStatusExt;
        const CHILD: &str = "SNAPFS_INVARIANT_TEST_CHILD";
        if let Ok(what) = std::env::var(CHILD) {
            stop_process_on_break();
            let thread = std::thread::spawn(move || match what.as_str() {
                "break" => broken(TABLE_INSERTS_FRESH, "in the child"),
                _ => panic!("an ordinary panic"),
            });
            assert!(thread.join().is_err());
            std::process::exit(0);
        }
        let name =
            "invariant::tests::a_break_on_any_thread_stops_the_process_and_other_panics_do_not";
        let run = |what: &str| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--nocapture", "--test-threads=1"])
                .env(CHILD, what)
                .output()
                .unwrap()
        };
        let out = run("break");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{stderr}");
        assert!(
            stderr.contains("snapfs invariant broken: table inserts are fresh: in the child")
                && stderr.contains("stopping"),
            "{stderr}"
        );
        let out = run("other");
        assert!(out.status.success(), "{out:?}");
    }

    #[test]
    #[should_panic(expected = "snapfs invariant broken: table inserts are fresh: chunk 7")]
    fn broken_panics_naming_the_invariant() {
        broken(TABLE_INSERTS_FRESH, "chunk 7");
    }
}
