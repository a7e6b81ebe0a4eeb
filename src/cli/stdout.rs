//! Standard output for what the commands print as text: listings (`ls`,
//! `job list`, the shell's `ls`), job and key reports, the doctor's report.
//! A reader that goes away (`ferry ls dir/ | head -1`) ends the command
//! quietly with status 0, as ripgrep does: the listing was wanted only up to
//! there. Another write error (a full disk under `> file`) ends it with one
//! line and status 11, a local file operation that failed. Not for the
//! transfer printers (`output.rs`, `json.rs`): a transfer whose reader went
//! away still finishes, as it does with rsync's `-v | head`; and ferry never
//! dies of SIGPIPE (its ssh pipes report EPIPE as an error instead).

use std::io::Write;

/// Writes to stdout; a closed stdout ends the process (see the module).
pub fn write(args: std::fmt::Arguments) {
    let out = std::io::stdout();
    let mut out = out.lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        closed(&e)
    }
}

/// Ends the process after stdout failed with `e`.
fn closed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(super::exit::OK);
    }
    eprintln!(
        "ferry: cannot write to standard output: {}",
        crate::error::io_text(e)
    );
    std::process::exit(11)
}

/// `println!` that ends quietly when the reader went away.
macro_rules! outln {
    () => { $crate::cli::stdout::write(format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::cli::stdout::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that ends quietly when the reader went away.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::stdout::write(format_args!($($arg)*)) };
}

pub(crate) use {out, outln};
