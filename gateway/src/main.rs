//! The `fedgate` binary: parses the command line and runs a verb (see `cli`).

fn main() {
    std::process::exit(fedgate::cli::main());
}
