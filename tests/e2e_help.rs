//! Help where people look: the man pages and shell completions `snapfs generate` makes from the
//! clap definitions, and `scripts/install.sh` putting them in the standard places under DESTDIR.
//! Needs no root; `man -l` and the shells' syntax checks run where they are installed.

mod e2e_support;

use e2e_support::{BIN, mount_helper};
use std::path::{Path, PathBuf};
use std::process::Command;

const SUBCOMMANDS: [&str; 9] = [
    "mount", "status", "snapshot", "drop", "merge", "inspect", "demo", "changes", "backup",
];

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("snapfs-help-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every page is there, is roff with a title and a NAME section, and reads with `man -l`
/// without warnings; snapfs(8) names every subcommand and each has its own page.
fn check_man_pages(dir: &Path) {
    let mut pages = vec!["snapfs".to_string(), "mount.snapfs".to_string()];
    pages.extend(SUBCOMMANDS.iter().map(|s| format!("snapfs-{s}")));
    for name in &pages {
        let path = dir.join(format!("{name}.8"));
        let roff = read(&path);
        let th = format!(".TH {} 8 ", name.to_uppercase());
        assert!(roff.lines().any(|l| l.starts_with(&th)), "{name}: {roff}");
        for section in [".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION"] {
            assert!(roff.contains(section), "{name} lacks {section}");
        }
        if has("man") {
            let out = Command::new("man")
                .args(["--warnings", "-l"])
                .arg(&path)
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "100")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "man -l {name}: {out:?}");
            assert!(out.stderr.is_empty(), "man -l {name}: {out:?}");
            assert!(
                text.contains("NAME") && text.contains(name.as_str()),
                "{text}"
            );
        }
    }
    let top = read(&dir.join("snapfs.8"));
    for sub in SUBCOMMANDS {
        assert!(
            top.contains(&format!("snapfs\\-{sub}(8)")),
            "snapfs.8 names {sub}"
        );
    }
    let mount = read(&dir.join("snapfs-mount.8"));
    assert!(mount.contains(".SH EXAMPLES") && mount.contains("snapshot=NAME:COW"));
    let helper = read(&dir.join("mount.snapfs.8"));
    assert!(
        helper.contains("mount.snapfs \\- the mount(8) helper for snapfs"),
        "{helper}"
    );
    assert!(
        !top.contains("generate"),
        "the generator is not part of the documented command"
    );
}

/// Each completion script is accepted by its shell's syntax check (where installed) and
/// offers every subcommand, not the generator; bash's completes.
fn check_completions(bash: &Path, zsh: &Path, fish: &Path) {
    for (shell, path) in [("bash", bash), ("zsh", zsh), ("fish", fish)] {
        let script = read(path);
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell} completion offers {sub}");
        }
        assert!(!script.contains("generate"), "{shell}: {script}");
        if has(shell) {
            let check = if shell == "fish" {
                "--no-execute"
            } else {
                "-n"
            };
            let out = Command::new(shell).arg(check).arg(path).output().unwrap();
            assert!(out.status.success(), "{shell} {check}: {out:?}");
        }
    }
    assert!(read(bash).contains("complete -F _snapfs"));
    // bash completes a command and a command's options.
    let complete = |words: &str| {
        let script = format!(
            "source '{}'; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             _snapfs snapfs \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; echo \"${{COMPREPLY[*]}}\"",
            bash.display()
        );
        let out = Command::new("bash").args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(complete("snapfs me"), "merge");
    assert!(complete("snapfs snapshot --").contains("--cow"));
    assert!(complete("snapfs backup --").contains("--cow-dir"));
    assert!(complete("snapfs inspect --").contains("--changes"));
    assert!(read(zsh).starts_with("#compdef snapfs"));
}

#[test]
fn generator_writes_pages_and_completions() {
    let tmp = TempDir::new("gen");
    let man = tmp.0.join("man8");
    let out = Command::new(BIN)
        .args(["generate", "man"])
        .arg(&man)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 11);
    check_man_pages(&man);
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["generate", "completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::write(tmp.0.join(shell), &out.stdout).unwrap();
    }
    check_completions(&tmp.0.join("bash"), &tmp.0.join("zsh"), &tmp.0.join("fish"));

    // Hidden from the documented command line; a bad request is a usage error.
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("generate"));
    let bad = Command::new(BIN)
        .args(["generate", "completions", "nosh"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

#[test]
fn install_puts_them_in_the_standard_places() {
    let tmp = TempDir::new("install");
    let root = tmp.0.join("root");
    let bin_dir = mount_helper().parent().unwrap().to_path_buf();
    let install = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh"))
        .arg("--no-build")
        .env("DESTDIR", &root)
        .env("TARGET_DIR", &bin_dir)
        .env_remove("PREFIX")
        .env_remove("MANDIR")
        .output()
        .unwrap();
    assert!(install.status.success(), "install.sh: {install:?}");
    let share = root.join("usr/local/share");
    check_man_pages(&share.join("man/man8"));
    check_completions(
        &share.join("bash-completion/completions/snapfs"),
        &share.join("zsh/site-functions/_snapfs"),
        &share.join("fish/vendor_completions.d/snapfs.fish"),
    );
    // The helper's --help is the text its page is made of.
    let help = Command::new(root.join("sbin/mount.snapfs"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.starts_with("usage: mount.snapfs ORIGIN DIR"), "{help}");
    assert!(help.ends_with("docs/cli.md.\n"), "{help:?}");
}
