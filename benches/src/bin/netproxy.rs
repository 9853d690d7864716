//! `ledger-netproxy`: delaying TCP proxies in front of peer ports, for the cluster
//! benchmark's LAN and WAN runs (this kernel has no netem).
//!
//! Each `LISTEN=TARGET` pair forwards every connection made to `LISTEN` on to
//! `TARGET`, holding each chunk `--delay-ms` (plus up to `--jitter-ms`) in both
//! directions, without reordering. Put one in front of each member's peer port and
//! advertise the proxy's address to the other members: every byte between two
//! members then travels one proxy, so the one-way delay is the delay set here,
//! whichever side dialed. Runs until killed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ledger_benches::proxy::{Link, Shape};

#[derive(Parser)]
#[command(about = "Delaying TCP proxies: LISTEN=TARGET pairs, both directions delayed")]
struct Args {
    /// One-way delay added to every chunk, milliseconds.
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Extra delay drawn uniformly from 0 to this, milliseconds.
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Seeds the jitter.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// LISTEN=TARGET, each a HOST:PORT.
    #[arg(required = true)]
    links: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let shape = Arc::new(Shape::default());
    shape.set_delay(
        Duration::from_secs_f64(args.delay_ms / 1e3),
        Duration::from_secs_f64(args.jitter_ms / 1e3),
    );
    let mut links = Vec::new();
    for (index, pair) in args.links.iter().enumerate() {
        let (listen, target) = pair
            .split_once('=')
            .with_context(|| format!("{pair}: expected LISTEN=TARGET"))?;
        let listen: SocketAddr = listen
            .parse()
            .with_context(|| format!("{listen}: not HOST:PORT"))?;
        let target: SocketAddr = target
            .parse()
            .with_context(|| format!("{target}: not HOST:PORT"))?;
        let seed = args.seed ^ index as u64;
        let link = Link::start(listen, target, shape.clone(), shape.clone(), seed)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        links.push(link);
    }
    eprintln!(
        "ledger-netproxy: {} links, {} ms one-way (+ up to {} ms)",
        links.len(),
        args.delay_ms,
        args.jitter_ms
    );
    std::future::pending::<()>().await;
    Ok(())
}
