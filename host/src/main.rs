//! The `switchboard` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    switchboard::tools::cli::main(switchboard::tools::cli::Cli::parse())
}
