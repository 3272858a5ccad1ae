//! Talking to a mounted snapfs: its `status` file and its `control` file.

use snapfs::status::Report;
use std::path::{Path, PathBuf};

/// A snapfs mountpoint, checked to be one.
pub struct Mount {
    dir: PathBuf,
}

/// What a control command answered: the `ok` line, any `warning:` lines, and the other lines
/// (what a snapshot froze).
pub struct Answer {
    pub ok: String,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

impl Mount {
    /// Checks that `dir` is a live snapfs mount (its `status` file starts with the origin's
    /// target line).
    pub fn open(dir: &Path) -> Result<Mount, String> {
        let dir = dir
            .canonicalize()
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let mount = Mount { dir };
        let text = mount.status_text()?;
        if !text.starts_with("origin: 0 ") {
            return Err(format!("{} is not a snapfs mount", mount.dir.display()));
        }
        Ok(mount)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn status_text(&self) -> Result<String, String> {
        let path = self.dir.join("status");
        std::fs::read_to_string(&path).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => format!(
                "{} is not a snapfs mount (no status file)",
                self.dir.display()
            ),
            Some(libc::ENOTCONN) => format!(
                "{}: the snapfs daemon is gone (Transport endpoint is not connected); \
                 see docs/troubleshooting.md, stale mounts",
                self.dir.display()
            ),
            _ => format!("{}: {e}", path.display()),
        })
    }

    /// The status file, parsed.
    pub fn status(&self) -> Result<Report, String> {
        Report::parse(&self.status_text()?)
    }

    /// Runs one control command. A refusal is `Err` with the daemon's reason (and, for EBUSY,
    /// a hint that the thing is busy).
    pub fn command(&self, command: &str) -> Result<Answer, String> {
        self.transaction(command).map(|text| parse_answer(&text))
    }

    /// Runs one command and reads its answer on the same handle (the daemon keeps a handle's
    /// own answer), so no other command's answer can be read instead, whoever else sends
    /// commands meanwhile. A refusal is `Err` with the daemon's reason (and, for EBUSY, a hint
    /// that the thing is busy).
    pub fn transaction(&self, command: &str) -> Result<String, String> {
        use std::os::unix::fs::FileExt;
        let path = self.dir.join("control");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => format!(
                    "{} has no control file: it is mounted read-only",
                    self.dir.display()
                ),
                _ => format!("{}: {e}", path.display()),
            })?;
        let written = file.write_at(format!("{command}\n").as_bytes(), 0);
        let mut answer = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read_at(&mut buf, answer.len() as u64)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        let answer = String::from_utf8_lossy(&answer).into_owned();
        match written {
            Ok(_) => Ok(answer),
            Err(e) => {
                let reason = answer
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("error: "))
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string());
                Err(match e.raw_os_error() {
                    Some(libc::EBUSY) => format!("busy: {reason}"),
                    _ => reason,
                })
            }
        }
    }

    /// Snapshot `name`'s changed-chunk map, read page by page (see `snapfs::changes`).
    pub fn changes(&self, name: &str) -> Result<snapfs::changes::ChangeMap, String> {
        let mut runs = Vec::new();
        let mut from = 0u64;
        let chunk_bytes = loop {
            let text = self.transaction(&format!("changes {name} {from}"))?;
            let page = snapfs::changes::parse_page(name, &text)?;
            runs.extend(page.runs);
            match page.next {
                // Pages move forward only, whatever the daemon answers.
                Some(next) if next > from => from = next,
                Some(next) => {
                    return Err(format!("page at {from} points back to {next}"));
                }
                None => break page.chunk_bytes,
            }
        };
        Ok(snapfs::changes::ChangeMap::from_runs(chunk_bytes, runs))
    }
}

fn parse_answer(text: &str) -> Answer {
    let mut lines = text.lines();
    let ok = lines.next().unwrap_or_default().to_string();
    let (warnings, notes) = lines.partition::<Vec<&str>, _>(|l| l.starts_with("warning: "));
    let warnings = warnings
        .iter()
        .filter_map(|l| l.strip_prefix("warning: "))
        .map(|l| l.to_string())
        .collect();
    let notes = notes.iter().map(|l| l.to_string()).collect();
    Answer {
        ok,
        warnings,
        notes,
    }
}

/// Prints warnings so that nobody misses them: on stderr, each on its own line.
pub fn shout(warnings: &[String]) {
    for w in warnings {
        eprintln!("snapfs: WARNING: {w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let a = parse_answer(
            "ok snapshot a attached: /a.cow P 8\nwarning: snapshot a is recorded nowhere\n",
        );
        assert_eq!(a.ok, "ok snapshot a attached: /a.cow P 8");
        assert_eq!(a.warnings, ["snapshot a is recorded nowhere"]);
        assert!(parse_answer("ok merging a\n").warnings.is_empty());
        let a = parse_answer(
            "ok snapshot a attached\nfroze /m (ext4 on /dev/loop3) in 9 ms, for 1 ms\n",
        );
        assert_eq!(a.notes, ["froze /m (ext4 on /dev/loop3) in 9 ms, for 1 ms"]);
        assert!(a.warnings.is_empty());
    }
}
