use std::process::ExitCode;

use clap::Parser;
use deregd::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon and the CLI run on one thread: at 500 calls/s the work is hand-offs, and
    // every hop between worker threads costs more CPU than the call itself. The emulator
    // (and the demo, which hosts it) serve thousands of requests a second on every core.
    let mut builder = match cli.command {
        Command::Emulator(_) | Command::Demo(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("deregd: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(deregd::cli::dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("deregd: {error:#}");
            ExitCode::from(deregd::cli::exit_code(&error))
        }
    }
}
