//! The `ferry` binary: arguments in, exit code out. All logic lives in the
//! library.

fn main() {
    std::process::exit(ferry::cli::main(std::env::args_os().collect()));
}
