//! The `kernelgen` command line. Subcommands live in `cli/`, one file each.

mod cli;

fn main() {
    // Exit quietly when stdout is closed early (`kernelgen check ... | head`), like other Unix
    // tools, instead of panicking on the broken pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // The PJRT plugins log through TensorFlow's logging, INFO included (the CPU plugin notes
    // each client's create options); users see warnings and errors, not that. A level the user
    // set stays.
    if std::env::var_os("TF_CPP_MIN_LOG_LEVEL").is_none() {
        // Edition 2021: `set_var` is safe to call, and no thread has started yet.
        std::env::set_var("TF_CPP_MIN_LOG_LEVEL", "1");
    }
    std::process::exit(cli::run());
}
