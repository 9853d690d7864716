//! What the multi-process tests share: running `ledgerd` and `ledgerctl` as an
//! operator does, on free loopback ports, every wait bounded, every process stopped.
// Each test binary uses its own part of this.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const LEDGERD: &str = env!("CARGO_BIN_EXE_ledgerd");
pub const LEDGERCTL: &str = env!("CARGO_BIN_EXE_ledgerctl");

/// Where test nodes listen: below the kernel's ephemeral range (32768 and up on
/// Linux), so that no outgoing connection, of this test or another, takes a node's
/// port while the node is down for a restart.
const PORTS: std::ops::Range<u16> = 10_000..32_000;

/// The next candidate port; each test binary starts at its own offset.
static NEXT_PORT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A free port whose next one is free too: a one-node layout's API and peer ports.
pub fn free_port() -> u16 {
    free_ports(2)
}

pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap()
}

/// `ledgerd run --config CONFIG`, which must refuse: its output once it exits, or a
/// panic if it still runs after 60 s (then it is killed).
pub fn refused_run(config: &Path) -> Output {
    // Into files, not pipes: a node that runs on logs more than a pipe holds.
    let (stdout, stderr) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
    let mut child = Command::new(LEDGERD)
        .args(["run", "--config"])
        .arg(config)
        .stdout(stdout.try_clone().unwrap())
        .stderr(stderr.try_clone().unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = Output {
        status,
        stdout: read_all(&stdout),
        stderr: read_all(&stderr),
    };
    assert!(
        Instant::now() < deadline && !status.success(),
        "ledgerd ran on instead of refusing: {}",
        text(&output)
    );
    output
}

/// All that was written to `file` (a process's output) so far. Read at offsets,
/// not through the file position, which the process writing shares.
fn read_all(file: &std::fs::File) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 1 << 16];
    loop {
        match file.read_at(&mut chunk, bytes.len() as u64).unwrap() {
            0 => return bytes,
            read => bytes.extend_from_slice(&chunk[..read]),
        }
    }
}

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `ledgerctl verify FILE --genesis GENESIS`.
pub fn verify(file: &Path, genesis: &Path) -> Output {
    Command::new(LEDGERCTL)
        .arg("verify")
        .arg(file)
        .arg("--genesis")
        .arg(genesis)
        .output()
        .unwrap()
}

/// A running `ledgerd`, killed if the test fails before stopping it.
pub struct Daemon {
    pub child: Child,
    pub url: String,
    /// What `ctl` passes before its own arguments, after `--node URL`: how to reach
    /// an API with TLS or tokens.
    pub ctl_args: Vec<String>,
    /// Its log (standard error). A file, not a pipe: a pipe nobody reads fills, and
    /// the node's next log line then blocks whichever thread writes it, the
    /// consensus driver included (members stalled under load that way).
    log: std::fs::File,
}

impl Daemon {
    /// `ledgerd run --config CONFIG` with `env` added, not waited for.
    pub fn spawn(config: &Path, port: u16, env: &[(&str, &std::ffi::OsStr)]) -> Daemon {
        let log = tempfile::tempfile().unwrap();
        let child = Command::new(LEDGERD)
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log.try_clone().unwrap())
            .spawn()
            .unwrap();
        Daemon {
            child,
            url: format!("http://127.0.0.1:{port}"),
            ctl_args: Vec::new(),
            log,
        }
    }

    /// Spawns the node and waits (bounded) until its API answers; if it does not,
    /// the panic shows the node's log.
    pub fn start(config: &Path, port: u16) -> Daemon {
        Daemon::start_as(config, port, "http", &[])
    }

    /// [`Daemon::start`] for an API reached at `scheme://127.0.0.1:port` with
    /// `ctl_args` given to every `ledgerctl`.
    pub fn start_as(config: &Path, port: u16, scheme: &str, ctl_args: &[&str]) -> Daemon {
        let mut daemon = Daemon::spawn(config, port, &[]);
        daemon.url = format!("{scheme}://127.0.0.1:{port}");
        daemon.ctl_args = ctl_args.iter().map(|arg| arg.to_string()).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = daemon.ctl(&["status"]);
            if ready.status.success() {
                return daemon;
            }
            let exited = daemon.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() >= deadline {
                let _ = daemon.child.kill();
                let _ = daemon.child.wait();
                let log = daemon.log_text();
                panic!(
                    "ledgerd did not become ready ({exited:?}): {}\n{log}",
                    text(&ready)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["--node", &self.url];
        all.extend(self.ctl_args.iter().map(String::as_str));
        all.extend_from_slice(args);
        run(LEDGERCTL, &all)
    }

    /// Sends `signal` (`TERM`, `HUP`, ...) to the node.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success());
    }

    /// What the node has logged so far.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&read_all(&self.log)).into_owned()
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn stop(mut self) -> String {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = self.log_text();
                assert!(status.success(), "ledgerd exited with {status}: {log}");
                return log;
            }
            assert!(Instant::now() < deadline, "ledgerd ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A base port with `count` free ports from it (bounded tries).
pub fn free_ports(count: u16) -> u16 {
    use std::sync::atomic::Ordering;
    let span = u32::from(PORTS.end - PORTS.start);
    let _ = NEXT_PORT.compare_exchange(
        0,
        std::process::id().wrapping_mul(7919) % span + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..500 {
        let offset = NEXT_PORT.fetch_add(u32::from(count), Ordering::Relaxed) % span;
        let base = PORTS.start + offset as u16;
        if base + count > PORTS.end {
            continue;
        }
        let all_free =
            (base..base + count).all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no run of {count} free ports found");
}

pub fn node(daemons: &[Option<Daemon>], i: usize) -> &Daemon {
    daemons[i].as_ref().expect("running")
}

pub fn status(daemon: &Daemon) -> serde_json::Value {
    let output = daemon.ctl(&["status"]);
    assert!(output.status.success(), "{}", text(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `ledgerd dev init --nodes N` under `dir` at difficulty 8, on free ports: the
/// config paths and the base port (node i serves its API on base + 2i and its
/// peers on base + 2i + 1).
pub fn layout(dir: &Path, nodes: usize) -> (Vec<PathBuf>, u16) {
    let base = free_ports(2 * nodes as u16);
    let output = run(
        LEDGERD,
        &[
            "dev",
            "init",
            "--nodes",
            &nodes.to_string(),
            "--dir",
            dir.to_str().unwrap(),
            "--base-port",
            &base.to_string(),
            "--difficulty",
            "8",
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    let configs = (0..nodes)
        .map(|i| dir.join(format!("node{i}/ledgerd.toml")))
        .collect();
    (configs, base)
}

/// `ledgerd run` on every config of a layout, each waited for until it answers.
pub fn start_all(configs: &[PathBuf], base: u16) -> Vec<Option<Daemon>> {
    (0..configs.len())
        .map(|i| Some(Daemon::start(&configs[i], base + 2 * i as u16)))
        .collect()
}

/// Stops every running node with SIGTERM, in order; their logs.
pub fn stop_all(daemons: &mut [Option<Daemon>]) -> Vec<String> {
    daemons
        .iter_mut()
        .filter_map(Option::take)
        .map(Daemon::stop)
        .collect()
}

/// Four `ledgerd run` processes on a fresh `ledgerd dev init --nodes 4` layout under
/// `dir`: their config paths, the base port and the running daemons.
pub fn start_cluster(dir: &Path) -> (Vec<PathBuf>, u16, Vec<Option<Daemon>>) {
    let (configs, base) = layout(dir, 4);
    let daemons = start_all(&configs, base);
    (configs, base, daemons)
}

/// Waits (bounded) until every running node has the same tip at `height` or above.
pub fn converge(daemons: &[Option<Daemon>], height: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tips: Vec<serde_json::Value> = daemons
            .iter()
            .flatten()
            .map(|daemon| status(daemon)["tip_hash"].clone())
            .collect();
        let heights: Vec<u64> = daemons
            .iter()
            .flatten()
            .map(|daemon| status(daemon)["height"].as_u64().unwrap())
            .collect();
        if tips.iter().all(|tip| *tip == tips[0]) && heights.iter().all(|h| *h >= height) {
            return tips[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no common tip: {heights:?} {tips:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A client that reads error statuses as answers, each request bounded.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// One HTTP request: the status (0 when no answer came) and the body as JSON (null
/// when it is not JSON).
pub fn http(method: &str, url: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let agent = agent();
    let response = match method {
        "POST" => agent
            .post(url)
            .header("content-type", "application/json")
            .send(body.unwrap_or("")),
        _ => agent.get(url).call(),
    };
    match response {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let text = response.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or_default())
        }
        Err(_) => (0, serde_json::Value::Null),
    }
}

/// GETs `url` and returns the status and the body's bytes (status 0 when it failed).
pub fn get_bytes(url: &str) -> (u16, Vec<u8>) {
    match agent().get(url).call() {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let body = response
                .body_mut()
                .with_config()
                .limit(8 << 20)
                .read_to_vec()
                .unwrap_or_default();
            (status, body)
        }
        Err(_) => (0, Vec::new()),
    }
}

/// The value of the Prometheus metric `name` that `daemon` shows at `/metrics`.
pub fn metric(daemon: &Daemon, name: &str) -> u64 {
    let (code, text) = get_bytes(&format!("{}/metrics", daemon.url));
    assert_eq!(code, 200);
    String::from_utf8(text)
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name}"))
        .parse()
        .unwrap()
}

/// POSTs `body` and returns the status and the `Retry-After` header, if any.
pub fn post_retry_after(url: &str, body: &str) -> (u16, Option<String>) {
    let agent = agent();
    match agent
        .post(url)
        .header("content-type", "application/json")
        .send(body)
    {
        Ok(response) => (
            response.status().as_u16(),
            response
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
        ),
        Err(_) => (0, None),
    }
}

/// `ledgerd init` of a node that is no member under `home`, on free ports, reading
/// the chain of `genesis`: its config (not yet a follower) and API port.
pub fn init_outsider(home: &Path, genesis: &Path) -> (PathBuf, u16) {
    let port = free_ports(2);
    let initialised = run(
        LEDGERD,
        &[
            "init",
            "--dir",
            home.to_str().unwrap(),
            "--api-listen",
            &format!("127.0.0.1:{port}"),
            "--p2p-listen",
            &format!("127.0.0.1:{}", port + 1),
        ],
    );
    assert!(initialised.status.success(), "{}", text(&initialised));
    let config = home.join("ledgerd.toml");
    set(
        std::slice::from_ref(&config),
        "genesis",
        &format!("{:?}", genesis.to_str().unwrap()),
    );
    (config, port)
}

/// Sets `key = value` in each config (the generated files list every key).
pub fn set(configs: &[PathBuf], key: &str, value: &str) {
    for config in configs {
        let text = std::fs::read_to_string(config).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|line| !line.starts_with(&format!("{key} =")))
            .map(str::to_owned)
            .collect();
        lines.push(format!("{key} = {value}"));
        std::fs::write(config, lines.join("\n") + "\n").unwrap();
    }
}

/// Waits (bounded) until `id` is committed on `daemon`.
pub fn committed(daemon: &Daemon, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, entry) = http("GET", &format!("{}/v1/entries/{id}", daemon.url), None);
        if code == 200 && entry["status"] == "committed" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} not committed: {code} {entry}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Submits `count` entries tagged `tag` in one batch through `daemon` and waits
/// (bounded) until each is committed; their ids.
pub fn commit_batch(daemon: &Daemon, tag: &str, count: usize) -> Vec<String> {
    let batch: Vec<serde_json::Value> = (0..count)
        .map(|i| serde_json::json!({ "data": format!("{tag} {i}") }))
        .collect();
    let (code, answers) = http(
        "POST",
        &format!("{}/v1/entries/batch", daemon.url),
        Some(&serde_json::Value::Array(batch).to_string()),
    );
    assert_eq!(code, 202, "{answers}");
    let ids: Vec<String> = answers
        .as_array()
        .unwrap()
        .iter()
        .map(|answer| match answer["id"].as_str() {
            Some(id) => id.to_owned(),
            None => panic!("not accepted: {answer}"),
        })
        .collect();
    for id in &ids {
        committed(daemon, id);
    }
    ids
}

/// Sets the genesis file's checkpoint interval (and so how often snapshots are
/// taken) before any node has started; the chain it now describes.
pub fn checkpoint_every(genesis_path: &Path, interval: u64) -> ledger::chain::ChainSpec {
    let genesis = std::fs::read_to_string(genesis_path).unwrap();
    assert!(genesis.contains("checkpoint_interval = 100"), "{genesis}");
    let genesis = genesis.replace(
        "checkpoint_interval = 100",
        &format!("checkpoint_interval = {interval}"),
    );
    std::fs::write(genesis_path, &genesis).unwrap();
    ledger::chain::ChainSpec::from_toml(&genesis).unwrap()
}

/// xorshift64*: enough randomness for kill moments, and replayable from the seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `ledgerd token new --role ROLE --name NAME --out DIR/NAME.token`: the config lines
/// it prints.
pub fn new_token(dir: &Path, role: &str, name: &str) -> String {
    let out = dir.join(format!("{name}.token"));
    let made = run(
        LEDGERD,
        &[
            "token",
            "new",
            "--role",
            role,
            "--name",
            name,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(made.status.success(), "{}", text(&made));
    let lines = String::from_utf8(made.stdout).unwrap();
    let secret = std::fs::read_to_string(&out).unwrap();
    assert!(
        !lines.contains(secret.trim()),
        "the config lines hold the secret"
    );
    lines
}

/// Appends `text` to a config file.
pub fn append(config: &Path, text: &str) {
    let mut settings = std::fs::read_to_string(config).unwrap();
    settings.push_str(text);
    std::fs::write(config, settings).unwrap();
}
