//! `snapfs`: the command line (see docs/cli.md). Each subcommand lives in its own module under
//! `src/cli/`; everything below the command line is the `snapfs` library.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
