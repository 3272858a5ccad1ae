//! The one rule for snapshot names, used by every entry point: the CLI, `control`, `-o
//! snapshot=`, the registry and the volume itself.
//!
//! A name travels through many formats: a file name in the mount, a word in a control command,
//! a field of a registry line (where `#` starts a comment), a field of a status line, a mount
//! option (`,` `=` `:` are separators there), JSON, a log line and a shell. Rather than escape
//! it in each, snapfs accepts only names every one of them carries as they are: LVM's rule,
//! `[A-Za-z0-9+_.-]`, 1 to [`NAME_MAX_BYTES`] bytes, not starting with `-` (an option to every
//! command-line tool), not `.` or `..`, and not a name the mount already uses for its own files.

/// Names of the files every mount shows: a snapshot may not take them.
pub const RESERVED_NAMES: [&str; 3] = ["origin", "status", "control"];

/// LVM's limit for a logical volume name (NAME_LEN 128, with the terminating NUL).
pub const NAME_MAX_BYTES: usize = 127;

/// Whether `c` may appear in a snapshot name.
fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '_' | '.' | '-')
}

/// Checks a snapshot name against the rule above. The error is one line and shows the name
/// escaped, so that a name with control characters cannot break a log line or a terminal.
pub fn check_snapshot_name(name: &str) -> Result<(), String> {
    let shown = shown_name(name);
    if name.is_empty() {
        return Err("empty snapshot name".to_string());
    }
    if name.len() > NAME_MAX_BYTES {
        return Err(format!(
            "snapshot name \"{shown}\" is longer than {NAME_MAX_BYTES} bytes"
        ));
    }
    if let Some(bad) = name.chars().find(|&c| !allowed(c)) {
        return Err(format!(
            "snapshot name \"{shown}\" contains {:?}: use only letters, digits and + _ . - \
             (as LVM does)",
            bad
        ));
    }
    if name.starts_with('-') {
        return Err(format!(
            "snapshot name \"{shown}\" starts with '-', which tools read as an option"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("snapshot name \"{shown}\" is not a file name"));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!(
            "snapshot name \"{shown}\" is reserved (origin, status and control are taken)"
        ));
    }
    Ok(())
}

/// A refused name as a message shows it: escaped, and cut after 40 characters (a 4 KiB name
/// would drown the reason).
fn shown_name(name: &str) -> String {
    let escaped: String = name.escape_debug().collect();
    match escaped.char_indices().nth(40) {
        Some((at, _)) => format!("{}...", &escaped[..at]),
        None => escaped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_format_carries() {
        for good in [
            "a",
            "nightly",
            "2026-12-06",
            "db_v1.2+hot",
            "A.b-C_d",
            "x.",
            "a-",
        ] {
            assert_eq!(check_snapshot_name(good), Ok(()), "{good:?}");
        }
        let longest = "n".repeat(NAME_MAX_BYTES);
        assert_eq!(check_snapshot_name(&longest), Ok(()));
    }

    #[test]
    fn names_some_format_cannot_carry() {
        let too_long = "n".repeat(NAME_MAX_BYTES + 1);
        let e = check_snapshot_name(&"x".repeat(4000)).unwrap_err();
        assert!(e.len() < 120 && e.contains("longer than 127 bytes"), "{e}");
        for bad in [
            "",
            "#x",
            "a,b",
            "a=b",
            "a:b",
            "a b",
            "a\tb",
            "a\nb",
            "a/b",
            "a\\b",
            "\u{202e}x",
            "\u{7f}",
            "caf\u{e9}",
            "-x",
            ".",
            "..",
            "origin",
            "status",
            "control",
            "a\"b",
            "$(id)",
            "a;b",
            "*",
            too_long.as_str(),
        ] {
            let e = check_snapshot_name(bad).expect_err(bad);
            assert!(!e.contains('\n') && !e.contains('\t'), "one line: {e:?}");
        }
    }
}
