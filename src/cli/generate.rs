//! `snapfs generate`: man pages and shell completions from the clap definitions, for
//! scripts/install.sh (nothing generated is committed). Kept out of the `snapfs` command so that
//! `--help`, the man pages and the completions do not show it: `main` hands argv over when the
//! first argument is `generate`.

use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// mount.snapfs's `--help`, the text its man page is made of.
const HELPER_HELP: &str = include_str!("../../mount-helper/src/help.txt");

/// The man pages' section: snapfs administers devices.
const SECTION: &str = "8";

#[derive(Parser)]
#[command(
    name = "snapfs generate",
    bin_name = "snapfs generate",
    about = "Generate the man pages and shell completions (used by scripts/install.sh)"
)]
struct Generate {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Write snapfs.8, snapfs-SUBCOMMAND.8 and mount.snapfs.8 into DIR
    Man { dir: PathBuf },
    /// Print the completion script for SHELL
    Completions { shell: Shell },
}

/// Runs `snapfs generate ...` (`args` from argv[0] on); returns the exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    // argv[0] and `generate` become the one program name "snapfs generate".
    let mut args = args.into_iter();
    let program = args.next().unwrap_or_default();
    args.next();
    let cli = Generate::parse_from(std::iter::once(program).chain(args));
    let outcome = match cli.what {
        What::Man { dir } => man_pages(&dir).map(|written| {
            for path in written {
                println!("{}", path.display());
            }
        }),
        What::Completions { shell } => {
            let mut cmd = super::Cli::command();
            clap_complete::generate(shell, &mut cmd, "snapfs", &mut std::io::stdout());
            Ok(())
        }
    };
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("snapfs generate: {e}");
            1
        }
    }
}

/// Writes every page into `dir` (created if missing); returns their paths.
pub fn man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = super::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = vec![page(cmd.clone(), dir)?];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        written.push(page(sub.clone(), dir)?);
    }
    let helper = dir.join(format!("mount.snapfs.{SECTION}"));
    std::fs::write(&helper, helper_page(HELPER_HELP))?;
    written.push(helper);
    Ok(written)
}

/// One page: clap_mangen's name, synopsis, options and subcommands sections; the long help and
/// the examples, which are laid out by hand for `--help`, as they are (no fill).
fn page(cmd: clap::Command, dir: &Path) -> std::io::Result<PathBuf> {
    let man = clap_mangen::Man::new(cmd.clone()).section(SECTION);
    let path = dir.join(man.get_filename());
    let mut out = Vec::new();
    out.extend(title(&man.get_filename().replace(&format!(".{SECTION}"), "")).bytes());
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    if let Some(text) = cmd.get_long_about().or(cmd.get_about()) {
        out.extend(format!(".SH DESCRIPTION\n{}", preformatted(&text.to_string())).bytes());
    }
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    if let Some(text) = cmd.get_after_long_help().or(cmd.get_after_help()) {
        let text = text.to_string();
        let (heading, body) = match text.strip_prefix("Examples:\n") {
            Some(examples) => ("EXAMPLES", examples.to_string()),
            None => ("NOTES", text.clone()),
        };
        out.extend(format!(".SH {heading}\n{}", preformatted(&body)).bytes());
    }
    std::fs::write(&path, out)?;
    Ok(path)
}

/// The `.TH` line of page `name`.
fn title(name: &str) -> String {
    let version = env!("CARGO_PKG_VERSION");
    format!(
        ".TH {} {SECTION} \"\" \"snapfs {version}\" \"System Administration\"\n",
        name.to_uppercase()
    )
}

/// Text laid out by hand, shown line for line.
fn preformatted(text: &str) -> String {
    format!(".nf\n{}\n.fi\n", roff(text.trim_end()))
}

/// mount.snapfs(8) from the helper's `--help`: the usage line is the synopsis, the paragraph
/// after it the description (its words before the first ':' the name line), the rest is shown
/// as it is.
fn helper_page(help: &str) -> String {
    let (usage, rest) = help.split_once("\n\n").unwrap_or((help, ""));
    let synopsis = usage.trim().trim_start_matches("usage:").trim();
    let (args, text) = synopsis.split_once(' ').unwrap_or((synopsis, ""));
    let (intro, details) = match rest.find("\n  ") {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, ""),
    };
    let what = intro.split(':').next().unwrap_or("").trim();
    let what = what
        .strip_prefix("The ")
        .map_or(what.to_string(), |w| format!("the {w}"));
    let version = env!("CARGO_PKG_VERSION");
    let mut page = format!(
        ".TH MOUNT.SNAPFS {SECTION} \"\" \"mount.snapfs {version}\" \"System Administration\"\n"
    );
    page += &format!(".SH NAME\nmount.snapfs \\- {}\n", roff(&what));
    page += &format!(".SH SYNOPSIS\n.B {}\n{}\n", roff(args), roff(text));
    page += &format!(".SH DESCRIPTION\n{}\n", roff(intro.trim()));
    if !details.trim().is_empty() {
        page += &format!(".PP\n{}", preformatted(details));
    }
    page += ".SH SEE ALSO\nsnapfs(8), snapfs\\-mount(8), mount(8), fstab(5)\n";
    page
}

/// `text` safe as roff input lines: backslashes and minus signs escaped, no line starting
/// with a control character.
fn roff(text: &str) -> String {
    text.lines()
        .map(|line| {
            let line = line.replace('\\', "\\e").replace('-', "\\-");
            if line.starts_with('.') || line.starts_with('\'') {
                format!("\\&{line}")
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_page_is_made_of_the_help_text() {
        let page = helper_page(HELPER_HELP);
        assert!(page.starts_with(".TH MOUNT.SNAPFS 8 "), "{page}");
        assert!(
            page.contains(".SH NAME\nmount.snapfs \\- the mount(8) helper for snapfs\n"),
            "{page}"
        );
        assert!(
            page.contains(".B mount.snapfs\nORIGIN DIR [\\-sfnv]"),
            "{page}"
        );
        assert!(
            page.contains("\\-f  check the options and paths only"),
            "{page}"
        );
        assert!(page.contains(".nf\n") && page.contains(".fi\n"), "{page}");
        for line in page.lines() {
            assert!(!line.starts_with('.') || line.len() > 1, "{line:?}");
        }
        assert_eq!(roff(".x\\y-z"), "\\&.x\\ey\\-z");
    }
}
