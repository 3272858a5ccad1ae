//! The octal escapes of fstab and /proc/self/mountinfo: `\040` (space), `\011` (tab), `\012`
//! (newline) and `\134` (backslash), the characters that would split or end a field. One pair
//! for every format that carries a path in a whitespace-separated field: the registry, the
//! status file's detail lines, and the kernel's mountinfo (which escapes the same four).

use std::path::{Path, PathBuf};

/// The escaped characters and their codes.
const CODES: [(char, &str); 4] = [('\\', "134"), (' ', "040"), ('\t', "011"), ('\n', "012")];

/// `text` with the four field-breaking characters escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match CODES.iter().find(|(plain, _)| *plain == c) {
            Some((_, code)) => {
                out.push('\\');
                out.push_str(code);
            }
            None => out.push(c),
        }
    }
    out
}

/// [`escape`] of a path as it displays.
pub fn escape_path(path: &Path) -> String {
    escape(&path.display().to_string())
}

/// Undoes [`escape`]; any other backslash sequence is an error (our own files are strict).
pub fn unescape(text: &str) -> Result<String, String> {
    decode(text).map_err(|()| format!("unknown escape in path {text:?}"))
}

/// [`unescape`] to a path.
pub fn unescape_path(text: &str) -> Result<PathBuf, String> {
    unescape(text).map(PathBuf::from)
}

/// Undoes [`escape`], keeping any other backslash as it is (text the kernel wrote: it escapes
/// the same four, so anything else was there literally).
pub fn unescape_lenient(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        match plain_of(&rest[at..]) {
            Some(c) => {
                out.push(c);
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn decode(text: &str) -> Result<String, ()> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        out.push(plain_of(&rest[at..]).ok_or(())?);
        rest = &rest[at + 4..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The character escaped at the start of `text` (which starts with a backslash), if it is one.
fn plain_of(text: &str) -> Option<char> {
    let code = text.get(1..4)?;
    CODES
        .iter()
        .find(|(_, c)| *c == code)
        .map(|(plain, _)| *plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_the_four_and_nothing_else() {
        let plain = "/mnt/my vols/a\\b\tc\nd:é#,=.cow";
        let escaped = escape(plain);
        assert_eq!(escaped, "/mnt/my\\040vols/a\\134b\\011c\\012d:é#,=.cow");
        assert_eq!(unescape(&escaped).unwrap(), plain);
        assert_eq!(unescape_lenient(&escaped), plain);
        assert_eq!(escape_path(Path::new(plain)), escaped);
        assert_eq!(unescape_path(&escaped).unwrap(), Path::new(plain));
        // Escaping an escape escapes its backslash only.
        assert_eq!(escape("\\040"), "\\134040");
        assert_eq!(unescape("\\134040").unwrap(), "\\040");
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn strict_refuses_what_lenient_keeps() {
        for bad in ["\\x", "a\\", "\\04", "\\041", "\\9", "x\\0401"] {
            let strict = unescape(bad);
            if bad == "x\\0401" {
                assert_eq!(strict.unwrap(), "x 1");
                continue;
            }
            let e = strict.unwrap_err();
            assert!(e.starts_with("unknown escape in path"), "{bad}: {e}");
        }
        assert_eq!(unescape_lenient("a\\134b\\011c\\9"), "a\\b\tc\\9");
        assert_eq!(unescape_lenient("a\\"), "a\\");
        assert_eq!(unescape_lenient("\\04"), "\\04");
        assert_eq!(unescape_lenient("\\041\\040"), "\\041 ");
    }
}
