//! The members as real processes on a network of their own: one network namespace
//! per `ledgerd`, joined to a bridge by a veth pair, each member's data directory on
//! a tmpfs of its own (so it can be filled), and every member-to-member connection
//! sent through a [`Link`] of the proxy in the harness's namespace (so it can be
//! delayed and cut). The harness holds the bridge's address and the proxies; the
//! clients reach the members' APIs over the bridge.
//!
//! Member `i` lives in namespace `lchaos{i}` at 10.77.0.{i+1}; a connection it dials
//! to member `j`'s peer port is redirected (iptables DNAT in its namespace) to the
//! proxy port of the link i -> j on 10.77.0.254, which forwards it to member `j`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ledger_benches::proxy::{Link, Shape, SplitMix64};

/// The harness's end of the bridge.
pub const HOST: &str = "10.77.0.254";
const BRIDGE: &str = "lchaos-br";
const API_PORT: u16 = 7100;
const PEER_PORT: u16 = 7101;
/// Below the ephemeral range, so a partition's rule never matches another
/// connection's port.
const PROXY_BASE: u16 = 20_000;
/// The most members a run has (addresses, proxy ports and names are laid out for
/// them).
pub const MAX_MEMBERS: usize = 16;
/// The source name of the members' tmpfs mounts, so only they are ever unmounted.
const TMPFS_SOURCE: &str = "lchaos";
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// Member `i`'s address.
pub fn address(i: usize) -> String {
    format!("10.77.0.{}", i + 1)
}

/// Member `i`'s API, as clients reach it.
pub fn api(i: usize) -> String {
    format!("http://{}:{API_PORT}", address(i))
}

fn namespace(i: usize) -> String {
    format!("lchaos{i}")
}

fn proxy_port(from: usize, to: usize) -> u16 {
    PROXY_BASE + (from * MAX_MEMBERS + to) as u16
}

/// A client of member `m`'s API that tries once, each request bounded by `timeout`.
pub fn client(m: usize, timeout: std::time::Duration) -> anyhow::Result<ledger_client::Client> {
    let client = ledger_client::Client::with_timeout(
        &api(m),
        &ledger_client::Credentials::default(),
        timeout,
    )?;
    Ok(client.with_retry(ledger_client::Retry::never()))
}

/// Runs a command of the harness's set-up; its failure is an error with its output.
fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Like [`run`] inside member `i`'s namespace.
fn run_in(i: usize, program: &str, args: &[&str]) -> anyhow::Result<()> {
    let ns = namespace(i);
    let mut all = vec!["netns", "exec", ns.as_str(), program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// One member: its files, its process, its clock.
pub struct Member {
    pub config: PathBuf,
    pub data: PathBuf,
    skew: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// How it misbehaves, when it runs `ledgerd-byzantine`.
    pub byzantine: Option<&'static str>,
}

/// The whole cluster: network, proxies, members.
pub struct Cluster {
    pub members: Vec<Member>,
    pub genesis: PathBuf,
    bin: PathBuf,
    /// Link i -> j at `i * n + j` (unused on the diagonal).
    seed: u64,
    shapes: Vec<Arc<Shape>>,
    faketime: bool,
    /// A protocol break every member runs with (`ledgerd-byzantine`'s `LEDGER_FLAW`).
    flaw: Option<String>,
    _links: Vec<Link>,
}

/// Removes what a run (or an interrupted one) left: processes in the members'
/// namespaces, the namespaces, the veth pairs, the bridge, and the members' tmpfs
/// mounts under `work/cluster/`.
pub fn clean_up(work: &Path) {
    for i in 0..MAX_MEMBERS {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &namespace(i)])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = run("kill", &["-KILL", pid]);
            }
        }
        let _ = run("ip", &["netns", "del", &namespace(i)]);
        let _ = run("ip", &["link", "del", &format!("lchaos-v{i}")]);
    }
    let _ = run("ip", &["link", "del", BRIDGE]);
    let ours = format!("{}/", work.join("cluster").to_string_lossy());
    if let Ok(mounts) = fs::read_to_string("/proc/mounts") {
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if let [TMPFS_SOURCE, point, "tmpfs", ..] = fields[..] {
                if point.starts_with(&ours) {
                    let _ = run("umount", &["-l", point]);
                }
            }
        }
    }
}

/// Copies every member's data directory to `work/kept/` (a failed run's evidence,
/// before [`clean_up`] unmounts it).
pub fn keep_data(work: &Path, members: usize) {
    for i in 0..members {
        let from = work.join(format!("cluster/node{i}/data"));
        let to = work.join(format!("kept/node{i}"));
        let _ = fs::create_dir_all(&to);
        if let Ok(entries) = fs::read_dir(&from) {
            for entry in entries.flatten() {
                if entry.file_name() != "filler" {
                    let _ = fs::copy(entry.path(), to.join(entry.file_name()));
                }
            }
        }
    }
}

impl Cluster {
    /// Writes an `n`-member chain under `work` with `ledgerd dev init`, moves its
    /// addresses onto the bridge, builds the network, starts the proxies on
    /// `runtime` and every member, those in `byzantine` as `ledgerd-byzantine`, each
    /// on a tmpfs of `disk` (like `128m`).
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        work: &Path,
        bin: &Path,
        n: usize,
        seed: u64,
        byzantine: &[(usize, &'static str)],
        flaw: Option<String>,
        disk: &str,
        runtime: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Cluster> {
        let ledgerd = bin.join("ledgerd");
        if (!byzantine.is_empty() || flaw.is_some()) && !bin.join("ledgerd-byzantine").exists() {
            bail!(
                "{} is missing: cargo build -p ledger --features byzantine --bin ledgerd-byzantine",
                bin.join("ledgerd-byzantine").display()
            );
        }
        let dir = work.join("cluster");
        let base = API_PORT;
        let out = Command::new(&ledgerd)
            .args(["dev", "init", "--difficulty", "8", "--base-port"])
            .arg(base.to_string())
            .arg("--nodes")
            .arg(n.to_string())
            .arg("--dir")
            .arg(&dir)
            .output()
            .with_context(|| format!("cannot run {}", ledgerd.display()))?;
        if !out.status.success() {
            bail!("ledgerd dev init: {}", String::from_utf8_lossy(&out.stderr));
        }
        let genesis = dir.join("genesis.toml");
        let mut files = vec![genesis.clone()];
        files.extend((0..n).map(|i| dir.join(format!("node{i}/ledgerd.toml"))));
        for file in &files {
            let mut text = fs::read_to_string(file)?;
            for i in 0..n {
                let port = base + 2 * i as u16;
                for (old, new) in [(port, API_PORT), (port + 1, PEER_PORT)] {
                    text = text.replace(
                        &format!("\"127.0.0.1:{old}\""),
                        &format!("\"{}:{new}\"", address(i)),
                    );
                }
            }
            if file != &genesis {
                // The namespaces' network is the harness's own.
                text.push_str("\napi_insecure = true\n");
            }
            anyhow::ensure!(
                !text.contains("127.0.0.1"),
                "{}: an address stayed on loopback",
                file.display()
            );
            fs::write(file, text)?;
        }

        network(n)?;
        // Link i -> j's shaping at i * n + j, its answers shaped by j -> i's.
        let shapes: Vec<Arc<Shape>> = (0..n * n).map(|_| Arc::default()).collect();
        let mut links = Vec::new();
        let mut random = SplitMix64(seed ^ 0x5eed);
        for from in 0..n {
            for to in 0..n {
                if from == to {
                    continue;
                }
                run_in(
                    from,
                    "iptables",
                    &[
                        "-w",
                        "-t",
                        "nat",
                        "-A",
                        "OUTPUT",
                        "-p",
                        "tcp",
                        "-d",
                        &address(to),
                        "--dport",
                        &PEER_PORT.to_string(),
                        "-j",
                        "DNAT",
                        "--to-destination",
                        &format!("{HOST}:{}", proxy_port(from, to)),
                    ],
                )?;
                let listen = format!("{HOST}:{}", proxy_port(from, to)).parse()?;
                let target = format!("{}:{PEER_PORT}", address(to)).parse()?;
                let link = runtime.block_on(Link::start(
                    listen,
                    target,
                    shapes[from * n + to].clone(),
                    shapes[to * n + from].clone(),
                    random.next_u64(),
                ))?;
                links.push(link);
            }
        }

        let mut members = Vec::new();
        for i in 0..n {
            let config = dir.join(format!("node{i}/ledgerd.toml"));
            let data = dir.join(format!("node{i}/data"));
            fs::create_dir_all(&data)?;
            run(
                "mount",
                &[
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={disk}"),
                    TMPFS_SOURCE,
                    &data.to_string_lossy(),
                ],
            )?;
            let skew = dir.join(format!("node{i}/clock"));
            fs::write(&skew, "+0\n")?;
            members.push(Member {
                config,
                data,
                skew,
                log: work.join(format!("node{i}.log")),
                child: None,
                paused: false,
                byzantine: byzantine.iter().find(|(m, _)| *m == i).map(|(_, b)| *b),
            });
        }
        let faketime = Path::new(LIBFAKETIME).exists();
        if !faketime {
            eprintln!("libfaketime is missing (Debian package faketime): clocks are not skewed");
        }
        let mut cluster = Cluster {
            members,
            genesis,
            bin: bin.to_owned(),
            seed,
            shapes,
            faketime,
            flaw,
            _links: links,
        };
        for i in 0..n {
            cluster.start(i)?;
        }
        Ok(cluster)
    }

    /// Starts member `i` (if it is not running) in its namespace, its clock read
    /// through libfaketime from its skew file.
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let member = &mut self.members[i];
        if member.child.is_some() {
            return Ok(());
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)?;
        let mut command = Command::new("ip");
        let mut program = "ledgerd";
        if let Some(behaviour) = member.byzantine {
            command
                .env("LEDGER_BYZANTINE", behaviour)
                .env("LEDGER_BYZANTINE_SEED", (self.seed ^ i as u64).to_string());
            program = "ledgerd-byzantine";
        }
        if let Some(flaw) = &self.flaw {
            command.env("LEDGER_FLAW", flaw);
            program = "ledgerd-byzantine";
        }
        command
            .args(["netns", "exec", &namespace(i)])
            .arg(self.bin.join(program))
            .arg("run")
            .arg("--config")
            .arg(&member.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if self.faketime {
            // Only the wall clock moves: timers run on the monotonic clock.
            command
                .env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", &member.skew)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("DONT_FAKE_MONOTONIC", "1");
        }
        member.child = Some(command.spawn().context("cannot start ledgerd")?);
        member.paused = false;
        Ok(())
    }

    /// SIGKILL of member `i`, waited for.
    pub fn kill(&mut self, i: usize) {
        let member = &mut self.members[i];
        if let Some(mut child) = member.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        member.paused = false;
    }

    /// SIGSTOP (`true`) or SIGCONT of member `i`.
    pub fn pause(&mut self, i: usize, stop: bool) -> anyhow::Result<()> {
        let member = &mut self.members[i];
        if let Some(child) = &member.child {
            let signal = if stop { "-STOP" } else { "-CONT" };
            run("kill", &[signal, &child.id().to_string()])?;
            member.paused = stop;
        }
        Ok(())
    }

    /// Whether member `i`'s process ended on its own, and how.
    pub fn exited(&mut self, i: usize) -> Option<String> {
        let child = self.members[i].child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// Member `i`'s wall clock `seconds` off from now on.
    pub fn skew(&self, i: usize, seconds: i64) -> anyhow::Result<()> {
        fs::write(&self.members[i].skew, format!("{seconds:+}\n"))?;
        Ok(())
    }

    /// Fills member `i`'s tmpfs to the last byte, or frees it.
    pub fn fill_disk(&self, i: usize, fill: bool) -> anyhow::Result<()> {
        let filler = self.members[i].data.join("filler");
        if !fill {
            let _ = fs::remove_file(filler);
            return Ok(());
        }
        let mut file = fs::File::create(&filler)?;
        let chunk = vec![0u8; 1 << 20];
        // Whole chunks, then single bytes: nothing left for the next write.
        for size in [chunk.len(), 4096, 1] {
            while file.write_all(&chunk[..size]).is_ok() {}
        }
        Ok(())
    }

    /// Flips 200 bits of member `i`'s stopped database at places drawn from
    /// `random`, past its first 4 KiB (a header damaged beyond use is the simple
    /// case; the interesting damage is what goes unnoticed at start). False when
    /// there is no database worth damaging (a member that has not created one yet).
    pub fn damage(&self, i: usize, random: &mut SplitMix64) -> anyhow::Result<bool> {
        let path = self.members[i].data.join("ledger.redb");
        let Ok(mut bytes) = fs::read(&path) else {
            return Ok(false);
        };
        if bytes.len() <= 8192 {
            return Ok(false);
        }
        for _ in 0..200 {
            let at = 4096 + (random.next_u64() % (bytes.len() as u64 - 4096)) as usize;
            bytes[at] ^= 1 << (random.next_u64() % 8);
        }
        fs::write(&path, bytes)?;
        Ok(true)
    }

    /// Empties member `i`'s data directory, as an operator replacing a damaged
    /// disk does; the member rejoins from the others.
    pub fn wipe(&self, i: usize) -> anyhow::Result<()> {
        for entry in fs::read_dir(&self.members[i].data)? {
            let path = entry?.path();
            if path.is_dir() {
                fs::remove_dir_all(path)?;
            } else {
                fs::remove_file(path)?;
            }
        }
        Ok(())
    }

    /// Loses what `from` sends to `to`, connections to its API included.
    pub fn block(&self, from: usize, to: usize) -> anyhow::Result<()> {
        let port = proxy_port(from, to).to_string();
        run_in(
            from,
            "iptables",
            &["-w", "-A", "OUTPUT", "-d", &address(to), "-j", "DROP"],
        )?;
        run_in(
            from,
            "iptables",
            &[
                "-w", "-A", "OUTPUT", "-p", "tcp", "-d", HOST, "--dport", &port, "-j", "DROP",
            ],
        )
    }

    /// Ends every partition.
    pub fn unblock_all(&self) -> anyhow::Result<()> {
        (0..self.members.len()).try_for_each(|i| run_in(i, "iptables", &["-w", "-F", "OUTPUT"]))
    }

    /// Member `i`'s link up or down.
    pub fn link(&self, i: usize, up: bool) -> anyhow::Result<()> {
        let state = if up { "up" } else { "down" };
        run("ip", &["link", "set", &format!("lchaos-v{i}"), state])
    }

    /// Every link between members shaped by `apply`.
    pub fn shape_all(&self, apply: impl Fn(&Shape)) {
        for shape in &self.shapes {
            apply(shape);
        }
    }

    /// Ends every fault: partitions, links, shaping, pauses, full disks, skews;
    /// starts every member that is not running.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        self.unblock_all()?;
        for i in 0..self.members.len() {
            self.link(i, true)?;
            self.fill_disk(i, false)?;
            self.skew(i, 0)?;
            if self.members[i].paused {
                self.pause(i, false)?;
            }
            if self.exited(i).is_some() {
                self.members[i].child = None;
            }
            self.start(i)?;
        }
        self.shape_all(Shape::clear);
        Ok(())
    }

    /// Stops every member (SIGTERM, then SIGKILL after 10 s).
    fn stop(&mut self) {
        for member in &mut self.members {
            if let Some(child) = &member.child {
                let pid = child.id().to_string();
                if member.paused {
                    let _ = run("kill", &["-CONT", &pid]);
                }
                let _ = run("kill", &["-TERM", &pid]);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Member `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Member `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }
}

/// The bridge, and one namespace per member joined to it.
fn network(n: usize) -> anyhow::Result<()> {
    run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    run("ip", &["addr", "add", &format!("{HOST}/24"), "dev", BRIDGE])?;
    run("ip", &["link", "set", BRIDGE, "up"])?;
    for i in 0..n {
        let ns = namespace(i);
        let (host, inner) = (format!("lchaos-v{i}"), format!("lchaos-p{i}"));
        run("ip", &["netns", "add", &ns])?;
        run(
            "ip",
            &["link", "add", &host, "type", "veth", "peer", "name", &inner],
        )?;
        run("ip", &["link", "set", &inner, "netns", &ns])?;
        run("ip", &["-n", &ns, "link", "set", &inner, "name", "eth0"])?;
        run(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", address(i)),
                "dev",
                "eth0",
            ],
        )?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        run("ip", &["link", "set", &host, "master", BRIDGE, "up"])?;
    }
    Ok(())
}

impl Drop for Cluster {
    /// Stops the members on every way out, errors included.
    fn drop(&mut self) {
        self.stop();
    }
}
