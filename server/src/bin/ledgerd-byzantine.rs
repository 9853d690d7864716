//! `ledgerd-byzantine`: `ledgerd` whose replica misbehaves as `LEDGER_BYZANTINE`
//! names (test-only, feature `byzantine`; the fault-injection harness runs it).

#[path = "ledgerd.rs"]
mod ledgerd;

fn main() -> std::process::ExitCode {
    ledgerd::main()
}
