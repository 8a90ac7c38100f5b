//! The `consentvault` binary: everything lives in the library.

/// mimalloc instead of the system allocator: the request and commit paths
/// allocate many short-lived buffers across threads, where glibc's malloc
/// spent about a fifth of the server's CPU time under load
/// (`docs/PERFORMANCE.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    consentvault::cli::run()
}
