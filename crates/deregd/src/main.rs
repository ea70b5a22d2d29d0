use std::process::ExitCode;

use clap::Parser;
use deregd::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The CLI's commands and the daemon run on one thread (SQLite work has its own threads):
    // for the daemon that costs ~10-20 % less CPU per call than a worker per core, at the same
    // rate, since an answer, its handling and the next permit never cross threads; a late
    // wake-up is made up by the pacing burst. The emulator (and the demo, which embeds it)
    // serves thousands of requests a second on a worker per core.
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
