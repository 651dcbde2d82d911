//! The `oxio` command: thin argument parsing and wiring over the oxio libraries.

mod cmd;

use clap::Parser;

fn main() -> std::process::ExitCode {
    cmd::init_logging();
    let cli = cmd::Cli::parse();
    match cmd::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("oxio: {err}");
            let mut source = std::error::Error::source(err.as_ref());
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            std::process::ExitCode::FAILURE
        }
    }
}
