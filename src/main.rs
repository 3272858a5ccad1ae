//! `snapfs`: the command line (see docs/cli.md). Each subcommand lives in its own module under
//! `src/cli/`; everything below the command line is the `snapfs` library.

mod cli;

/// Places fuser's request buffers so that written data arrives aligned for direct I/O.
#[global_allocator]
static ALLOCATOR: snapfs::fuse::request_buffers::RequestBufferAlloc =
    snapfs::fuse::request_buffers::RequestBufferAlloc;

fn main() {
    std::process::exit(cli::main());
}
