//! The `kernelgen` command line. Subcommands live in `cli/`, one file each.

mod cli;

fn main() {
    std::process::exit(cli::run());
}
