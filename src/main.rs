use std::process::ExitCode;

use clap::Parser;
use deregd::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The CLI's commands run on one thread; the daemon on a worker per core, so the dispatch
    // loop takes its permits on time while answers are handled beside it (on one thread the
    // pacing lost ~3 % of its rate and saved no CPU), and the emulator serves thousands of
    // requests a second.
    let mut builder = match cli.command {
        Command::Run(_) | Command::Emulator(_) | Command::Demo(_) => {
            tokio::runtime::Builder::new_multi_thread()
        }
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
