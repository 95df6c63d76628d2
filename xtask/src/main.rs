//! `cargo xtask`: the project's own tasks. One clap enum; each task is a module with its own
//! `Options` and one entry function.

mod bench;
mod fuzz;
mod setup;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "d8-trace's build, test and lab tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing need on a fresh Debian machine (idempotent).
    Setup(setup::Options),
    /// Set up, then run the whole test suite: unit, end-to-end on this kernel, and in a VM.
    Test(test::Options),
    /// Set up, build, and run `d8-trace demo` (a simulated node with an incident, traced live).
    Demo(test::DemoOptions),
    /// Run the parsers' fuzz targets with cargo-fuzz (minutes; not part of CI).
    Fuzz(fuzz::Options),
    /// Boot a Debian kernel under qemu and run a command in it.
    VmTest(Box<vm::Options>),
    /// Measure what tracing costs (lab namespaces on this machine) and write BENCHMARKS.md.
    Bench(bench::Options),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().task {
        Task::Setup(opts) => setup::run(&opts),
        Task::Test(opts) => test::run(&opts),
        Task::Demo(opts) => test::demo(&opts),
        Task::VmTest(opts) => vm::run(*opts),
        Task::Fuzz(opts) => fuzz::run(&opts),
        Task::Bench(opts) => bench::run(&opts),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            // A command that failed inside the VM passes its own status through.
            match e.downcast_ref::<vm::GuestFailed>() {
                Some(failed) => std::process::ExitCode::from(u8::try_from(failed.status).unwrap_or(1).max(1)),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}
