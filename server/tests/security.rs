//! The client API's security as an operator sets it up: TLS from certificate files
//! (reloaded on SIGHUP), client certificates, tokens with roles made by `ledgerd token
//! new`, rate limits, and a follower that shows its own credentials to the members.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::*;

/// A certificate authority and what it issued, as PEM files in a directory.
struct Authority {
    dir: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Authority {
    /// A new CA whose certificate is `dir/NAME.pem`.
    fn new(dir: &Path, name: &str) -> Authority {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), certificate.pem()).unwrap();
        Authority {
            dir: dir.to_owned(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A certificate for `names` at `dir/NAME.crt` with its key at `dir/NAME.key`.
    fn issue(&self, name: &str, names: &[&str]) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(self.path(&format!("{name}.crt")), certificate.pem()).unwrap();
        let key_path = self.path(&format!("{name}.key"));
        let _ = std::fs::remove_file(&key_path);
        ledger::config::write_secret(&key_path, key.serialize_pem().trim_end()).unwrap();
    }
}

fn refused_with(output: &std::process::Output, words: &str) -> bool {
    !output.status.success() && text(output).contains(words)
}

#[test]
fn tls_and_tokens_guard_the_api_and_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, port) = layout(&dir.path().join("dev"), 1);
    let config = &configs[0];
    let home = config.parent().unwrap();
    let ca = Authority::new(home, "ca");
    ca.issue("api", &["localhost", "127.0.0.1"]);
    let mut lines = String::from("\n[api]\ntls_cert = \"api.crt\"\ntls_key = \"api.key\"\n");
    for (role, name) in [
        ("read", "reader"),
        ("submit", "writer"),
        ("admin", "operator"),
    ] {
        lines.push('\n');
        lines.push_str(&new_token(home, role, name));
    }
    append(config, &lines);
    let tokens = |name: &str| home.join(format!("{name}.token")).display().to_string();
    let cacert = ca.path("ca.pem").display().to_string();
    let writer = ["--cacert", &cacert, "--token-file", &tokens("writer")];
    let daemon = Daemon::start_as(config, port, "https", &writer);

    // Plain HTTP gets nowhere; https without the CA fails the handshake.
    let plain = run(
        LEDGERCTL,
        &["--node", &format!("127.0.0.1:{port}"), "status"],
    );
    assert!(!plain.status.success(), "{}", text(&plain));
    let unknown_ca = run(LEDGERCTL, &["--node", &daemon.url, "status"]);
    assert!(!unknown_ca.status.success(), "{}", text(&unknown_ca));

    // Who may do what.
    let as_ = |token: Option<&str>, args: &[&str]| {
        let mut all = vec!["--node", &daemon.url, "--cacert", &cacert];
        let file;
        if let Some(name) = token {
            file = tokens(name);
            all.extend(["--token-file", &file]);
        }
        all.extend_from_slice(args);
        run(LEDGERCTL, &all)
    };
    assert!(refused_with(&as_(None, &["status"]), "unauthorized:"));
    let wrong = run(
        LEDGERCTL,
        &[
            "--node",
            &daemon.url,
            "--cacert",
            &cacert,
            "--token",
            "ledger_00",
            "status",
        ],
    );
    assert!(refused_with(&wrong, "not known"), "{}", text(&wrong));
    assert!(as_(Some("reader"), &["status"]).status.success());
    assert!(refused_with(
        &as_(Some("reader"), &["submit", "read only"]),
        "forbidden:"
    ));
    let submitted = as_(Some("writer"), &["submit", "--wait", "over tls"]);
    assert!(submitted.status.success(), "{}", text(&submitted));
    let receipt = home.join("receipt.json");
    std::fs::write(&receipt, &submitted.stdout).unwrap();
    let verified = verify(&receipt, &dir.path().join("dev/genesis.toml"));
    assert!(verified.status.success(), "{}", text(&verified));
    // Probes stay open: a kubelet has no token.
    assert!(as_(None, &["health", "--ready"]).status.success());

    let agent = |token: Option<&str>| {
        ledger::http::Credentials {
            cacert: Some(ca.path("ca.pem")),
            client_cert: None,
            token: token.map(|name| ledger::config::read_secret(Path::new(&tokens(name))).unwrap()),
        }
        .agent(Duration::from_secs(30))
        .unwrap()
    };
    let mine = |token| {
        let response = agent(token).post(format!("{}/mine", daemon.url)).send("");
        response.unwrap().status().as_u16()
    };
    assert_eq!(mine(Some("writer")), 403);
    assert_eq!(mine(Some("operator")), 200);
    let unauthorized = agent(None)
        .get(format!("{}/v1/status", daemon.url))
        .call()
        .unwrap();
    assert_eq!(unauthorized.status().as_u16(), 401);
    assert!(unauthorized.headers().contains_key("www-authenticate"));

    // SIGHUP: a new certificate from another CA, and the reader's token withdrawn.
    let other = Authority::new(home, "other");
    other.issue("api", &["localhost", "127.0.0.1"]);
    let settings = std::fs::read_to_string(config).unwrap();
    let without_reader = settings.replace(
        "name = \"reader\"\nrole = \"read\"",
        "name = \"gone\"\nrole = \"read\"\nsha256_was = 1",
    );
    assert_ne!(settings, without_reader);
    // First a config that cannot be read: nothing changes.
    std::fs::write(config, &without_reader).unwrap();
    daemon.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(as_(Some("reader"), &["status"]).status.success());
    // Then the real one.
    let reader_block = format!(
        "[[api.tokens]]\nname = \"reader\"\nrole = \"read\"\nsha256 = \"{}\"\n",
        ledger::api::auth::secret_hash(
            &ledger::config::read_secret(Path::new(&tokens("reader"))).unwrap()
        )
    );
    assert!(settings.contains(&reader_block), "{settings}");
    std::fs::write(config, settings.replace(&reader_block, "")).unwrap();
    daemon.signal("HUP");
    let other_ca = other.path("other.pem").display().to_string();
    let with_other = |token: &str| {
        let file = tokens(token);
        run(
            LEDGERCTL,
            &[
                "--node",
                &daemon.url,
                "--cacert",
                &other_ca,
                "--token-file",
                &file,
                "status",
            ],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !with_other("writer").status.success() {
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!as_(Some("writer"), &["status"]).status.success());
    assert!(refused_with(&with_other("reader"), "unauthorized:"));

    // A broken certificate file on SIGHUP: the one in force stays.
    std::fs::write(ca.path("api.crt"), "not a certificate").unwrap();
    daemon.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(with_other("writer").status.success());

    // Every token withdrawn at once would open the API: refused, the tokens stay.
    let settings = std::fs::read_to_string(config).unwrap();
    let first = settings.find("[[api.tokens]]").unwrap();
    std::fs::write(config, &settings[..first]).unwrap();
    other.issue("api", &["localhost", "127.0.0.1"]);
    daemon.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    let anonymous = run(
        LEDGERCTL,
        &[
            "--node",
            &daemon.url,
            "--cacert",
            &other_ca,
            "submit",
            "anyone",
        ],
    );
    assert!(
        refused_with(&anonymous, "unauthorized:"),
        "{}",
        text(&anonymous)
    );
    assert!(with_other("writer").status.success());
    let log = daemon.stop();
    assert!(log.contains("nothing reloaded"), "{log}");
    assert!(log.contains("the certificate in force stays"), "{log}");
    assert!(log.contains("API tokens reloaded"), "{log}");
    assert!(log.contains("would open the API"), "{log}");
    assert!(!log.contains("the client API is open"), "{log}");
}

#[test]
fn client_certificates_are_required_when_a_ca_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, port) = layout(&dir.path().join("dev"), 1);
    let config = &configs[0];
    let home = config.parent().unwrap();
    let servers = Authority::new(home, "servers");
    servers.issue("api", &["127.0.0.1"]);
    let clients = Authority::new(home, "clients");
    clients.issue("alice", &["alice"]);
    let stranger = Authority::new(home, "strangers");
    stranger.issue("mallory", &["mallory"]);
    append(
        config,
        "\n[api]\ntls_cert = \"api.crt\"\ntls_key = \"api.key\"\ntls_client_ca = \"clients.pem\"\n",
    );
    let cacert = servers.path("servers.pem").display().to_string();
    let (alice_cert, alice_key) = (
        clients.path("alice.crt").display().to_string(),
        clients.path("alice.key").display().to_string(),
    );
    let alice = [
        "--cacert",
        &cacert,
        "--client-cert",
        &alice_cert,
        "--client-key",
        &alice_key,
    ];
    let daemon = Daemon::start_as(config, port, "https", &alice);
    assert!(daemon
        .ctl(&["submit", "--wait", "from alice"])
        .status
        .success());

    let without = run(
        LEDGERCTL,
        &["--node", &daemon.url, "--cacert", &cacert, "status"],
    );
    assert!(!without.status.success(), "{}", text(&without));
    let (mallory_cert, mallory_key) = (
        stranger.path("mallory.crt").display().to_string(),
        stranger.path("mallory.key").display().to_string(),
    );
    let mallory = run(
        LEDGERCTL,
        &[
            "--node",
            &daemon.url,
            "--cacert",
            &cacert,
            "--client-cert",
            &mallory_cert,
            "--client-key",
            &mallory_key,
            "status",
        ],
    );
    assert!(!mallory.status.success(), "{}", text(&mallory));
    // Alice may do everything: no tokens narrow her certificate, as the log says.
    assert!(daemon.ctl(&["status"]).status.success());
    let log = daemon.stop();
    assert!(
        log.contains("any client showing a certificate the tls_client_ca issued may do everything"),
        "{log}"
    );
}

#[test]
fn a_caller_over_its_rate_gets_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, port) = layout(&dir.path().join("dev"), 1);
    let config = &configs[0];
    let home = config.parent().unwrap();
    let mut lines = String::from("\n[api]\nrate_limit = 1\nrate_burst = 3\n\n");
    lines.push_str(&new_token(home, "read", "poller"));
    append(config, &lines);
    let token = home.join("poller.token").display().to_string();
    let daemon = Daemon::start_as(config, port, "http", &["--token-file", &token]);
    let agent = ledger::http::Credentials {
        token: Some(ledger::config::read_secret(Path::new(&token)).unwrap()),
        ..Default::default()
    }
    .agent(Duration::from_secs(10))
    .unwrap();
    let mut limited = None;
    for _ in 0..20 {
        let response = agent
            .get(format!("{}/v1/blocks/latest", daemon.url))
            .call()
            .unwrap();
        if response.status().as_u16() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("20 requests at once, and none over a rate of 1/s");
    let wait: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "Retry-After: {wait}");
    assert!(metric(&daemon, "ledger_api_refused_total{reason=\"rate_limited\"}") >= 1);
    // Another caller (here, no token on an open route) is counted apart.
    let (code, _) = http("GET", &format!("{}/healthz", daemon.url), None);
    assert_eq!(code, 200);
    std::thread::sleep(Duration::from_secs(wait));
    let again = agent
        .get(format!("{}/v1/blocks/latest", daemon.url))
        .call()
        .unwrap();
    assert_eq!(again.status().as_u16(), 200);
    daemon.stop();
}

/// A reachable API is never left open by accident: `ledgerd run` refuses it without
/// tokens or TLS, and `ledgerd init` gives it an admin token.
#[test]
fn a_reachable_api_needs_tokens_tls_or_an_explicit_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, _) = layout(&dir.path().join("dev"), 1);
    let config = &configs[0];
    set(configs.as_slice(), "api_listen", "\"0.0.0.0:7100\"");
    let refused = run(LEDGERD, &["run", "--config", config.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("api_insecure = true"),
        "{}",
        text(&refused)
    );

    let home = dir.path().join("reachable");
    let initialised = run(
        LEDGERD,
        &[
            "init",
            "--dir",
            home.to_str().unwrap(),
            "--api-listen",
            "0.0.0.0:7100",
        ],
    );
    assert!(initialised.status.success(), "{}", text(&initialised));
    assert!(
        text(&initialised).contains("api.token"),
        "{}",
        text(&initialised)
    );
    let loaded = ledger::config::NodeConfig::load(&home.join("ledgerd.toml")).unwrap();
    assert_eq!(loaded.api.tokens.len(), 1);
    assert_eq!(loaded.api.tokens[0].role, ledger::api::auth::Role::Admin);
    let secret = ledger::config::read_secret(&home.join("api.token")).unwrap();
    assert_eq!(
        ledger::api::auth::secret_hash(&secret),
        loaded.api.tokens[0].sha256
    );
}

/// A follower of members whose API needs TLS and a token follows them with the
/// credentials of its `[upstream]`.
#[test]
fn a_follower_shows_its_upstream_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, port) = layout(&dir.path().join("dev"), 1);
    let config = &configs[0];
    let home = config.parent().unwrap();
    let ca = Authority::new(home, "ca");
    ca.issue("api", &["127.0.0.1"]);
    let mut lines = String::from("\n[api]\ntls_cert = \"api.crt\"\ntls_key = \"api.key\"\n\n");
    lines.push_str(&new_token(home, "submit", "follower"));
    lines.push('\n');
    lines.push_str(&new_token(home, "submit", "tests"));
    append(config, &lines);
    let cacert = ca.path("ca.pem").display().to_string();
    let token = home.join("tests.token").display().to_string();
    let member = Daemon::start_as(
        config,
        port,
        "https",
        &["--cacert", &cacert, "--token-file", &token],
    );
    assert!(member
        .ctl(&["submit", "--wait", "before the follower"])
        .status
        .success());

    let genesis = dir.path().join("dev/genesis.toml");
    let (follower_config, follower_port) = init_outsider(&dir.path().join("follower"), &genesis);
    let upstream_token = home.join("follower.token");
    set(std::slice::from_ref(&follower_config), "follower", "true");
    append(
        &follower_config,
        &format!(
            "\n[upstream]\ncacert = {:?}\ntoken_file = {:?}\n",
            cacert,
            upstream_token.to_str().unwrap()
        ),
    );
    let follower = Daemon::start(&follower_config, follower_port);
    // It follows, and forwards a submit with its own token.
    let (code, answer) = http(
        "POST",
        &format!("{}/v1/entries?wait=commit", follower.url),
        Some(r#"{"data":"through the follower"}"#),
    );
    assert_eq!(code, 200, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    let shown = member.ctl(&["get", &id]);
    assert!(text(&shown).contains("committed"), "{}", text(&shown));
    follower.stop();
    member.stop();
}
