use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = deregd::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
