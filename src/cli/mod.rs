//! The `snapfs` command line: clap definitions and dispatch; one module per subcommand.
//!
//! Exit codes of every subcommand: 0 done, 1 refused or failed (the reason is one line on
//! stderr, starting `snapfs:`), 2 usage error.

mod backup;
mod backup_image;
mod backup_storage;
mod changes;
mod client;
mod demo;
mod demo_steps;
mod drop;
mod generate;
mod inspect;
mod merge;
mod mount;
mod sizes;
mod snapshot;
mod status;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "snapfs",
    version,
    about = "Device-mapper snapshots (snapshot-origin, snapshot, snapshot-merge) as a FUSE filesystem",
    after_help = "New here? Run `snapfs demo` (as root). Every command: docs/cli.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount an origin and its snapshots
    #[command(long_about = mount::ABOUT, after_help = mount::EXAMPLES)]
    Mount(mount::Args),
    /// Show the origin and its snapshots, like lvs
    #[command(long_about = status::ABOUT, after_help = status::EXAMPLES)]
    Status(status::Args),
    /// Take a snapshot of the live origin, without remounting (lvcreate -s)
    #[command(long_about = snapshot::ABOUT, after_help = snapshot::EXAMPLES)]
    Snapshot(snapshot::Args),
    /// Detach a snapshot; its COW stays on disk
    #[command(long_about = drop::ABOUT, after_help = drop::EXAMPLES)]
    Drop(drop::Args),
    /// Merge a snapshot back into the origin (roll the origin back)
    #[command(long_about = merge::ABOUT, after_help = merge::EXAMPLES)]
    Merge(merge::Args),
    /// List the origin byte ranges that may differ from a snapshot (its changed chunks)
    #[command(long_about = changes::ABOUT, after_help = changes::EXAMPLES)]
    Changes(changes::Args),
    /// Incremental backup into an image: snapshot, copy what changed, rotate the base
    #[command(long_about = backup::ABOUT, after_help = backup::EXAMPLES)]
    Backup(backup::Args),
    /// Describe a COW device offline, read-only (kernel, LVM or snapfs made)
    #[command(long_about = inspect::ABOUT, after_help = inspect::EXAMPLES)]
    Inspect(inspect::Args),
    /// Show snapfs at work: ext4 on a volume, a live snapshot, a roll-back (needs root)
    #[command(long_about = demo::ABOUT, after_help = demo::EXAMPLES)]
    Demo(demo::Args),
}

/// Runs the command line; returns the exit code.
pub fn main() -> i32 {
    // `snapfs generate` (for scripts/install.sh) is not part of the documented command line.
    if std::env::args_os().nth(1).is_some_and(|a| a == "generate") {
        return generate::main(std::env::args_os());
    }
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Mount(args) => mount::run(args),
        Command::Status(args) => finish(status::run(args)),
        Command::Snapshot(args) => finish(snapshot::run(args)),
        Command::Drop(args) => finish(drop::run(args)),
        Command::Merge(args) => finish(merge::run(args)),
        Command::Inspect(args) => finish(inspect::run(args)),
        Command::Changes(args) => finish(changes::run(args)),
        Command::Backup(args) => finish(backup::run(args)),
        Command::Demo(args) => demo::run(args),
    }
}

/// Prints a failure as one line and turns the outcome into an exit code.
fn finish(outcome: Result<(), String>) -> i32 {
    match outcome {
        Ok(()) => 0,
        Err(why) => {
            // Not eprintln!: a closed stderr must not turn exit 1 into a panic.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "snapfs: {}", why.replace('\n', " "));
            1
        }
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default (snapfs at info, others at warn, fuser's
/// per-request chatter at error).
fn init_logging() {
    let env = env_logger::Env::default().default_filter_or("warn,fuser=error,snapfs=info");
    env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_subcommand_has_help_and_examples() {
        Cli::command().debug_assert();
        let mut cli = Cli::command();
        for sub in cli.get_subcommands_mut() {
            let name = sub.get_name().to_string();
            let help = sub.render_long_help().to_string();
            assert!(help.contains("Examples:"), "{name}: {help}");
            assert!(help.contains(&format!("snapfs {name}")), "{name}");
        }
    }
}
