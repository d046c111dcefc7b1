//! `moat-test-cluster stop`: stops the embedded cluster the test suite started (`scripts/test`
//! runs it after the tests); `moat-test-cluster path` prints where that cluster lives.
#![allow(clippy::unwrap_used)]

fn main() -> std::process::ExitCode {
    let dir = moat_testkit::test_cluster_dir();
    match std::env::args().nth(1).as_deref() {
        Some("path") => {
            println!("{}", dir.display());
            std::process::ExitCode::SUCCESS
        }
        Some("stop") => match moat_admin::embedded::stop(&dir) {
            Ok(true) => {
                eprintln!("moat-test-cluster: stopped the test cluster in `{}`", dir.display());
                std::process::ExitCode::SUCCESS
            }
            Ok(false) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("moat-test-cluster: {e}");
                std::process::ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("usage: moat-test-cluster stop|path");
            std::process::ExitCode::from(2)
        }
    }
}
