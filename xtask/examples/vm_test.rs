//! Runs `cargo xtask vm-test` without going through xtask's main (useful while main.rs is being
//! written, and to try the VM module alone):
//! `cargo run -p xtask --example vm_test -- [vm-test options] -- COMMAND...`

#[path = "../src/vm/mod.rs"]
#[allow(
    dead_code,
    reason = "this example runs `vm::run` only; xtask's test task reads the captured console"
)]
mod vm;

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    opts: vm::Options,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = vm::run(cli.opts) {
        eprintln!("error: {e:#}");
        let code = e.downcast_ref::<vm::GuestFailed>().map(|g| g.status).unwrap_or(1);
        std::process::exit(if code == 0 { 1 } else { code });
    }
}
