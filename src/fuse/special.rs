//! The `status` and `control` files.
//!
//! `status` is generated when opened and again by every read at offset 0, and kept per handle,
//! so that `cat` (reads at 0, then further on) sees one consistent text while a program that
//! re-reads from 0 on one handle sees fresh figures. Its reported size is the current text's;
//! with direct I/O the kernel does not rely on it.
//!
//! `control` takes one command per write and answers with the result of the last command
//! when read (`ok ...` or `error: reason`). A handle that wrote a command reads the answer to
//! its own last command, whatever other handles send meanwhile: open read-write, write, read
//! from offset 0 is one transaction (what `snapfs changes` relies on for its pages). Another
//! handle reads the last answer of all. The answer is kept per handle like `status`'s text
//! (taken at a read at offset 0), so a reader gets one whole answer even while other commands
//! run. A refused command fails the write with `EINVAL` (`EBUSY` when the volume is busy with
//! it, e.g. a merge already running).

use super::SnapFs;
use crate::control::{CONTROL_WRITE_MAX, Command, CommandError, Context, execute, parse_command};
use fuser::Errno;
use std::sync::atomic::Ordering;

/// The part of `text` a read of `size` bytes at `offset` gets.
fn slice(text: &[u8], offset: u64, size: u32) -> Vec<u8> {
    let start = (offset.min(text.len() as u64)) as usize;
    let end = start.saturating_add(size as usize).min(text.len());
    text[start..end].to_vec()
}

impl SnapFs {
    /// A new handle on `status`, holding the text of this moment.
    pub(super) fn open_status(&self) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let text = self.status_text();
        self.status_texts.lock().insert(fh, text);
        fh
    }

    pub(super) fn read_status(&self, fh: u64, offset: u64, size: u32) -> Vec<u8> {
        let mut texts = self.status_texts.lock();
        let text = texts.entry(fh).or_default();
        if offset == 0 || text.is_empty() {
            *text = self.status_text();
        }
        slice(text, offset, size)
    }

    /// Target lines and detail lines (see `crate::status`). The registry is brought up to date
    /// after the text is made, so the file is never older than the text: a merge that the text
    /// shows complete is out of the registry by the time anyone reads the text. (Syncing first
    /// would leave a window where a merge completes between the two.)
    fn status_text(&self) -> Vec<u8> {
        let text = crate::status::render(&self.volume, &self.ledger).into_bytes();
        self.ledger.sync(&self.volume);
        text
    }

    /// Forgets the text kept for a `status` or `control` handle.
    pub(super) fn release_status(&self, fh: u64) {
        self.status_texts.lock().remove(&fh);
        self.handle_answers.lock().remove(&fh);
    }

    /// A new handle on `control`; it gets its answer text at its first read.
    pub(super) fn open_control(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// The answer to the last command, as one or more lines: taken at a read at offset 0 and
    /// kept for the handle's later reads, so that a command run between two reads cannot give
    /// the reader the head of one answer and the tail of another.
    pub(super) fn read_control(&self, fh: u64, offset: u64, size: u32) -> Vec<u8> {
        if let Some(own) = self.handle_answers.lock().get(&fh) {
            return slice(own, offset, size);
        }
        let kept = match offset {
            0 => None,
            _ => self.status_texts.lock().get(&fh).cloned(),
        };
        let text = kept.unwrap_or_else(|| {
            let mut text = self.control.lock().clone().into_bytes();
            text.push(b'\n');
            self.status_texts.lock().insert(fh, text.clone());
            text
        });
        slice(&text, offset, size)
    }

    /// Runs one command written by the process `caller`. Commands are serialised by the
    /// answer's lock.
    pub(super) fn write_control(&self, fh: u64, data: &[u8], caller: Caller) -> Result<u32, Errno> {
        let mut answer = self.control.lock();
        let result = self.run_control(&mut answer, data, caller);
        // Taken under the answer's lock: no other command's answer can come in between.
        let mut own = answer.clone().into_bytes();
        own.push(b'\n');
        self.handle_answers.lock().insert(fh, own);
        result
    }

    /// Runs one command, leaving its answer in `answer` (the answer's lock is held).
    fn run_control(&self, answer: &mut String, data: &[u8], caller: Caller) -> Result<u32, Errno> {
        if data.len() > CONTROL_WRITE_MAX {
            let reason = format!(
                "command too long ({} bytes; at most {CONTROL_WRITE_MAX})",
                data.len()
            );
            log::warn!("control: {reason}");
            *answer = format!("error: {reason}");
            return Err(Errno::EINVAL);
        }
        let shown = shown_command(data);
        let open_handles = |name: &str| self.open_handles_of(name);
        let context = Context {
            volume: &self.volume,
            ledger: &self.ledger,
            open_handles: &open_handles,
        };
        // A merge that completed meanwhile is recorded before the command looks at names.
        self.ledger.sync(&self.volume);
        let outcome = parse_command(data).and_then(|command| {
            may_run(&command, caller)?;
            execute(&context, &command)
        });
        self.ledger.sync(&self.volume);
        // Attach and drop change the directory; so may a failed command that got half-way.
        self.sync_inodes();
        match outcome {
            Ok(text) => {
                log::info!(
                    "control: {shown}: {}",
                    text.lines().next().unwrap_or_default()
                );
                *answer = text;
                Ok(data.len() as u32)
            }
            Err(refusal) => {
                log::warn!("control: {shown}: {refusal}");
                *answer = format!("error: {refusal}");
                Err(super::errno::command_errno(&refusal))
            }
        }
    }
}

/// Who wrote a command, as FUSE reports it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Caller {
    pub uid: u32,
    pub pid: u32,
}

/// Commands change what the daemon opens and writes with root's rights: a `snapshot` names a
/// path the daemon opens and formats, `drop` and `merge` change the volume for everyone,
/// `changes` tells which blocks of the volume were written. So only root may send them, whoever owns the files (`uid=`, `allow_other`). `help` changes
/// nothing and is anyone's.
fn may_run(command: &Command, caller: Caller) -> Result<(), CommandError> {
    if caller.uid == 0 || matches!(command, Command::Help) {
        return Ok(());
    }
    Err(CommandError::Denied(format!(
        "only root may send control commands (uid {} of process {} tried); the mount's \
         files may belong to another user (uid=), its commands do not",
        caller.uid, caller.pid
    )))
}

/// A command as the log shows it: one line, at most [`SHOWN_MAX_CHARS`] characters, with
/// control characters and bytes that are not UTF-8 escaped, so that junk written to `control`
/// cannot forge log lines or reach a terminal raw.
fn shown_command(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let mut shown: String = text.trim_end().escape_debug().collect();
    if shown.chars().count() > SHOWN_MAX_CHARS {
        shown = shown.chars().take(SHOWN_MAX_CHARS).collect();
        shown.push_str("...");
    }
    shown
}

/// See [`shown_command`].
const SHOWN_MAX_CHARS: usize = 200;

#[cfg(test)]
mod tests {
    use super::{SHOWN_MAX_CHARS, shown_command, slice};

    #[test]
    fn junk_is_escaped_for_the_log() {
        assert_eq!(shown_command(b"drop a\n"), "drop a");
        let shown = shown_command(b"\x1b[2Jfake\nsnapfs: line\xff\x00");
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(
            shown.contains("\\u{1b}") && shown.contains("\\n"),
            "{shown}"
        );
        assert!(shown_command(&[b'x'; 5000]).len() <= SHOWN_MAX_CHARS + 3);
    }

    #[test]
    fn slices() {
        assert_eq!(slice(b"hello", 0, 100), b"hello");
        assert_eq!(slice(b"hello", 1, 2), b"el");
        assert_eq!(slice(b"hello", 5, 2), b"");
        assert_eq!(slice(b"hello", 99, 2), b"");
        assert_eq!(slice(b"hello", 3, u32::MAX), b"lo");
    }
}
