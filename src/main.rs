//! The `consentvault` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    consentvault::cli::run()
}
