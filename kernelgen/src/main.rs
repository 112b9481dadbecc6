//! The `kernelgen` command line. Subcommands live in `cli/`, one file each.

mod cli;

fn main() {
    // Exit quietly when stdout is closed early (`kernelgen check ... | head`), like other Unix
    // tools, instead of panicking on the broken pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(cli::run());
}
