//! `mount.snapfs`: what mount(8) runs for `mount -t snapfs` and fstab lines of type `snapfs`.
//!
//! mount(8) calls `/sbin/mount.snapfs SPEC DIR [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`. This helper
//! turns that into `snapfs mount SPEC DIR -o OPTS`, which validates the options (ignoring the
//! generic ones mount passes, such as `defaults`, `nofail` or `_netdev`), mounts, and returns
//! only once the mount is live. Exit codes follow mount(8): 0 success, 1 incorrect invocation,
//! 2 system error (snapfs not found), 32 mount failure.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const EX_USAGE: u8 = 1;
const EX_SYSERR: u8 = 2;
const EX_FAIL: u8 = 32;

/// What mount(8) asked for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Request {
    spec: String,
    dir: String,
    options: Vec<String>,
    fake: bool,
    verbose: bool,
}

/// What `--help` prints; `snapfs generate man` turns the same text into mount.snapfs(8).
const HELP: &str = include_str!("help.txt");

/// What to do: mount, or answer `--help`/`--version`.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Mount(Request),
    Help,
    Version,
}

/// The mount request of `args` (tests: what mount(8) passes must parse to a mount).
#[cfg(test)]
fn parse(args: &[String]) -> Result<Request, String> {
    match parse_action(args)? {
        Action::Mount(req) => Ok(req),
        _ => Err("not a mount request".to_string()),
    }
}

fn parse_action(args: &[String]) -> Result<Action, String> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Action::Help);
    }
    if args.iter().any(|a| a == "--version" || a == "-V") {
        return Ok(Action::Version);
    }
    let mut req = Request::default();
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-o" => req
                .options
                .push(it.next().ok_or("-o needs a value")?.clone()),
            // -t TYPE and -N NAMESPACE carry a value we do not need.
            "-t" | "-N" => {
                it.next().ok_or_else(|| format!("{arg} needs a value"))?;
            }
            long if long.starts_with("--") => {
                return Err(format!("unknown option {long} (try --help)"));
            }
            flags if flags.starts_with('-') && flags.len() > 1 => {
                if let Some(rest) = flags.strip_prefix("-o") {
                    req.options.push(rest.to_string());
                    continue;
                }
                for f in flags[1..].chars() {
                    match f {
                        // sloppy and no-mtab: nothing to do (snapfs keeps no mtab).
                        's' | 'n' => {}
                        'f' => req.fake = true,
                        'v' => req.verbose = true,
                        other => return Err(format!("unknown flag -{other} (try --help)")),
                    }
                }
            }
            _ => positional.push(arg.clone()),
        }
    }
    match positional.as_slice() {
        [spec, dir] => {
            req.spec = spec.clone();
            req.dir = dir.clone();
            Ok(Action::Mount(req))
        }
        _ => Err("usage: mount.snapfs ORIGIN DIR [-sfnv] [-o OPTIONS] (try --help)".to_string()),
    }
}

/// The `snapfs` binary: $SNAPFS_BIN, else beside this helper, else PATH, else the usual
/// places (boot-time mounts may run with a minimal PATH).
fn find_snapfs() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SNAPFS_BIN") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        dirs.push(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    for d in [
        "/usr/local/bin",
        "/usr/local/sbin",
        "/usr/bin",
        "/usr/sbin",
        "/bin",
        "/sbin",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.into_iter()
        .map(|d| d.join("snapfs"))
        .find(|p| p.is_file())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let req = match parse_action(&args) {
        Ok(Action::Mount(r)) => r,
        Ok(Action::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Action::Version) => {
            println!("mount.snapfs {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mount.snapfs: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let Some(snapfs) = find_snapfs() else {
        eprintln!("mount.snapfs: cannot find the snapfs binary (install it in /usr/local/bin)");
        return ExitCode::from(EX_SYSERR);
    };
    let mut cmd = Command::new(&snapfs);
    cmd.arg("mount").arg(&req.spec).arg(&req.dir);
    for o in &req.options {
        cmd.arg("-o").arg(o);
    }
    if req.fake {
        cmd.arg("--check");
    }
    if req.verbose && std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "snapfs=debug");
    }
    match cmd.status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) if s.code() == Some(2) => ExitCode::from(EX_USAGE),
        Ok(_) => ExitCode::from(EX_FAIL),
        Err(e) => {
            eprintln!("mount.snapfs: cannot run {}: {e}", snapfs.display());
            ExitCode::from(EX_SYSERR)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn mount_contract() {
        let r = parse(&args("/img /mnt -o rw,snapshot=a:/c -n -v -t snapfs")).unwrap();
        assert_eq!(r.spec, "/img");
        assert_eq!(r.dir, "/mnt");
        assert_eq!(r.options, vec!["rw,snapshot=a:/c"]);
        assert!(r.verbose && !r.fake);
        let r = parse(&args("/img /mnt -sfn -oro")).unwrap();
        assert!(r.fake);
        assert_eq!(r.options, vec!["ro"]);
        assert!(parse(&args("/img")).is_err());
        assert!(parse(&args("/img /mnt -o")).is_err());
        assert!(parse(&args("/img /mnt -x")).is_err());
        assert_eq!(parse_action(&args("--help")), Ok(Action::Help));
        assert_eq!(parse_action(&args("/img /mnt -h")), Ok(Action::Help));
        assert_eq!(parse_action(&args("--version")), Ok(Action::Version));
        let e = parse(&args("/img /mnt --bogus")).unwrap_err();
        assert!(e.contains("--bogus"), "{e}");
    }
}
