//! `ledgerd-byzantine`: `ledgerd` whose replica misbehaves as `LEDGER_BYZANTINE`
//! names, or runs with the protocol break `LEDGER_FLAW` names (test-only, feature
//! `byzantine`; the fault-injection harness runs it). A `ledgerd` built with the
//! feature ignores both variables.

#[path = "ledgerd.rs"]
mod ledgerd;

fn main() -> std::process::ExitCode {
    ledger::sim::Rogue::allow();
    ledgerd::main()
}
