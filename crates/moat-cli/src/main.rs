//! The `moat` command. All logic lives in the library; this is the process edge.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    moat_cli::install_panic_hook();
    let cli = moat_cli::Cli::parse();
    moat_cli::init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(moat_cli::run(cli));
    ExitCode::from(code)
}
