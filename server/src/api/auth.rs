//! Who may call what: bearer tokens, each with a role, checked against the role the
//! OpenAPI document names for the route; and a rate limit per caller (per token, or per
//! address when the API is open). Tokens are kept as SHA-256 hashes: a secret is long
//! and random, so its hash can be looked up directly and says nothing of the secret.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ApiError;

/// What a token may do; each role may also do everything of the ones below it.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every `GET`: entries, proofs, blocks, status, snapshots.
    Read,
    /// Also submit entries.
    Submit,
    /// Also cut blocks (`POST /mine`), and every administrative route to come
    /// (membership changes).
    Admin,
}

impl Role {
    /// The role's name in the config and in the OpenAPI document.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Submit => "submit",
            Role::Admin => "admin",
        }
    }

    fn parse(name: &str) -> Option<Role> {
        [Role::Read, Role::Submit, Role::Admin]
            .into_iter()
            .find(|role| role.name() == name)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One `[[api.tokens]]`: a caller's name, its role, and the SHA-256 of its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it, for the access log and the rate limit.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the secret, 64 hex characters.
    pub sha256: String,
}

impl TokenConfig {
    /// A new token for `name` with `role`, and its secret (kept nowhere else).
    pub fn generate(name: &str, role: Role) -> Result<(String, TokenConfig), getrandom::Error> {
        let secret = new_secret()?;
        let token = TokenConfig {
            name: name.to_owned(),
            role,
            sha256: secret_hash(&secret),
        };
        Ok((secret, token))
    }

    /// The token as a `[[api.tokens]]` table of ledgerd.toml.
    pub fn to_toml(&self) -> String {
        format!(
            "[[api.tokens]]\nname = {:?}\nrole = {:?}\nsha256 = {:?}\n",
            self.name,
            self.role.name(),
            self.sha256
        )
    }
}

/// The prefix of every secret `ledgerd token new` makes, so that one pasted into a
/// log or a repository can be recognised.
const SECRET_PREFIX: &str = "ledger_";

/// A new secret: the prefix and 32 random bytes in hex.
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{SECRET_PREFIX}{}", hex::encode(bytes)))
}

/// The hash a config keeps for `secret`, in hex.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A caller the tokens name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub name: Arc<str>,
    /// Its role.
    pub role: Role,
}

/// The configured tokens, by the hash of their secret.
#[derive(Clone, Debug, Default)]
pub struct Tokens(HashMap<[u8; 32], Caller>);

impl Tokens {
    /// The tokens of a config; refuses a malformed hash and a name or hash given twice.
    pub fn new(tokens: &[TokenConfig]) -> Result<Tokens, String> {
        let mut map = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for token in tokens {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&token.sha256, &mut hash).map_err(|_| {
                format!(
                    "api.tokens {:?}: sha256 must be 64 hex characters (the hash \
                     `ledgerd token new` prints, never the secret)",
                    token.name
                )
            })?;
            if token.name.is_empty() || !names.insert(token.name.as_str()) {
                return Err(format!(
                    "api.tokens: the name {:?} is empty or given twice",
                    token.name
                ));
            }
            let caller = Caller {
                name: token.name.as_str().into(),
                role: token.role,
            };
            if map.insert(hash, caller).is_some() {
                return Err(format!(
                    "api.tokens {:?}: the same secret is given twice",
                    token.name
                ));
            }
        }
        Ok(Tokens(map))
    }

    /// Whether no token is configured: the API is open.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn caller(&self, secret: &str) -> Option<&Caller> {
        let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        self.0.get(&hash)
    }
}

/// A rate limit: requests per second, with bursts up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Requests per second, sustained.
    pub per_second: NonZeroU32,
    /// Requests that may come at once after a quiet spell.
    pub burst: NonZeroU32,
}

/// Whom a request is counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Token(Arc<str>),
    Address(IpAddr),
}

type Limiter = governor::DefaultKeyedRateLimiter<Key>;

/// How often forgotten callers are dropped from the rate limiter: addresses of an
/// open API are unbounded, so their state must not be kept forever.
const FORGET_EVERY: u64 = 4096;

/// The API's access rules: the roles routes need, the tokens, the rate limit.
pub struct Access {
    /// By method, then route: looked up per request without allocating.
    routes: HashMap<Method, HashMap<String, Option<Role>>>,
    tokens: RwLock<Arc<Tokens>>,
    limiter: Option<Limiter>,
    checked: std::sync::atomic::AtomicU64,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Access {
    /// Rules for the routes `document` describes: an operation whose `security` is
    /// `[{}]` is open, one with `bearer: [role]` needs that role, and one that says
    /// nothing needs `admin`, so that a route documented carelessly is closed.
    pub fn new(
        document: &utoipa::openapi::OpenApi,
        tokens: Tokens,
        rate: Option<RateLimit>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Access {
        let mut routes: HashMap<Method, HashMap<String, Option<Role>>> = HashMap::new();
        let document = serde_json::to_value(document).unwrap_or_default();
        let paths = document.get("paths").and_then(|paths| paths.as_object());
        for (path, item) in paths.into_iter().flatten() {
            for (method, operation) in item.as_object().into_iter().flatten() {
                let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
                    continue;
                };
                routes
                    .entry(method)
                    .or_default()
                    .insert(path.clone(), required_role(operation));
            }
        }
        let limiter = rate.map(|rate| {
            governor::RateLimiter::keyed(
                governor::Quota::per_second(rate.per_second).allow_burst(rate.burst),
            )
        });
        Access {
            routes,
            tokens: RwLock::new(Arc::new(tokens)),
            limiter,
            checked: std::sync::atomic::AtomicU64::new(0),
            metrics,
        }
    }

    /// Puts `tokens` in force for the requests that arrive from now on.
    pub fn replace_tokens(&self, tokens: Tokens) {
        *self.tokens.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tokens);
    }

    /// Whether the API is open (no tokens).
    pub fn is_open(&self) -> bool {
        self.tokens().is_empty()
    }

    fn tokens(&self) -> std::sync::RwLockReadGuard<'_, Arc<Tokens>> {
        self.tokens.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The role `method` on the route `path` needs (`None`: open); `admin` for a
    /// route the document does not know. A method the document gives the path no
    /// operation for is open: the 405 that follows runs nothing. HEAD is a GET
    /// without the body.
    pub fn role_for(&self, method: &Method, path: &str) -> Option<Role> {
        let method = match *method {
            Method::HEAD => &Method::GET,
            ref method => method,
        };
        if let Some(role) = self.routes.get(method).and_then(|paths| paths.get(path)) {
            return *role;
        }
        match self.routes.values().any(|paths| paths.contains_key(path)) {
            true => None,
            false => Some(Role::Admin),
        }
    }

    /// The role `request`'s route needs; `None` for an open route, and for no route
    /// (the 404 or 405 that follows says nothing worth guarding).
    fn needed(&self, request: &Request) -> Option<Role> {
        let path = request.extensions().get::<MatchedPath>()?;
        self.role_for(request.method(), path.as_str())
    }

    /// Who sent `request` and whether it may, given the role its route `needed`: the
    /// caller (none when the API is open or the route open and no token sent), or
    /// the error to answer with.
    fn admit(&self, request: &Request, needed: Option<Role>) -> Result<Option<Caller>, ApiError> {
        let tokens = self.tokens();
        if tokens.is_empty() {
            return Ok(None);
        }
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            // The scheme's name is case-insensitive (RFC 9110, 11.1).
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, secret)| secret.trim());
        let caller = presented.and_then(|secret| tokens.caller(secret)).cloned();
        let Some(needed) = needed else {
            return Ok(caller);
        };
        match (&caller, presented) {
            (None, None) => Err(ApiError::unauthorized(format!(
                "this route needs a token with role {needed} or above: send \
                 `Authorization: Bearer <secret>`"
            ))),
            (None, Some(_)) => Err(ApiError::unauthorized("the token is not known here")),
            (Some(caller), _) if caller.role < needed => Err(ApiError::forbidden(format!(
                "the token {:?} has role {}; this route needs {needed}",
                caller.name, caller.role
            ))),
            (Some(_), _) => Ok(caller),
        }
    }

    /// Counts a request against `key`; the seconds to wait when over the limit.
    fn count(&self, key: Key) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let checked = self
            .checked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if checked % FORGET_EVERY == FORGET_EVERY - 1 {
            limiter.retain_recent();
        }
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(limiter.clock()));
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

/// The role an OpenAPI operation's `security` names: `None` when it allows no
/// credentials (`{}`), else the first `bearer` scope, else `admin`.
fn required_role(operation: &serde_json::Value) -> Option<Role> {
    let Some(requirements) = operation.get("security").and_then(|s| s.as_array()) else {
        return Some(Role::Admin);
    };
    if requirements
        .iter()
        .any(|requirement| requirement.as_object().is_some_and(|r| r.is_empty()))
    {
        return None;
    }
    requirements
        .iter()
        .filter_map(|requirement| requirement.get("bearer")?.as_array())
        .flatten()
        .filter_map(|scope| Role::parse(scope.as_str()?))
        .min()
        .or(Some(Role::Admin))
}

/// The address a connection came from, put on each of its requests by the server.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// The middleware: admits or refuses each request, counts it against its caller's
/// rate, and hands the caller's name on to the access log.
pub async fn guard(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    let needed = access.needed(&request);
    let admitted = access.admit(&request, needed);
    // Probes, scrapes and the document (open routes, no token) are not counted: a
    // load balancer behind the same address as a busy client must still get in.
    // Refused requests count against their address, so guessing costs the guesser
    // its rate.
    let key = match (&admitted, request.extensions().get::<Peer>()) {
        (Ok(Some(caller)), _) => Some(Key::Token(Arc::clone(&caller.name))),
        (Ok(None), _) if needed.is_none() => None,
        (_, Some(peer)) => Some(Key::Address(peer.0.ip())),
        // In-process callers (tests) have no address and no token: nothing to count.
        (_, None) => None,
    };
    if let Some(key) = key {
        if let Err(seconds) = access.count(key) {
            access.metrics.api_refused.add("rate_limited", 1);
            return ApiError::too_many(seconds.max(1)).into_response();
        }
    }
    let caller = match admitted {
        Ok(caller) => caller,
        Err(error) => {
            let reason = match error.status() {
                axum::http::StatusCode::FORBIDDEN => "forbidden",
                _ => "unauthorized",
            };
            access.metrics.api_refused.add(reason, 1);
            return error.into_response();
        }
    };
    let mut response = next.run(request).await;
    if let Some(caller) = caller {
        response.extensions_mut().insert(caller);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_found_by_its_hash_and_nothing_else() {
        let secret = new_secret().unwrap();
        assert!(secret.starts_with(SECRET_PREFIX) && secret.len() == 7 + 64);
        let tokens = Tokens::new(&[TokenConfig {
            name: "ci".into(),
            role: Role::Submit,
            sha256: secret_hash(&secret),
        }])
        .unwrap();
        assert_eq!(tokens.caller(&secret).unwrap().role, Role::Submit);
        assert!(tokens.caller(&secret_hash(&secret)).is_none());
        assert!(tokens.caller("").is_none());
    }

    #[test]
    fn malformed_and_repeated_tokens_are_refused() {
        let token = |name: &str, sha256: &str| TokenConfig {
            name: name.into(),
            role: Role::Read,
            sha256: sha256.into(),
        };
        let hash = secret_hash("x");
        assert!(Tokens::new(&[token("a", "secret")])
            .unwrap_err()
            .contains("64 hex"));
        let twice = Tokens::new(&[token("a", &hash), token("a", &secret_hash("y"))]);
        assert!(twice.unwrap_err().contains("twice"));
        let same = Tokens::new(&[token("a", &hash), token("b", &hash)]);
        assert!(same.unwrap_err().contains("same secret"));
        assert!(Tokens::new(&[token("", &hash)]).is_err());
    }

    #[test]
    fn roles_are_ordered_and_named_as_in_the_config() {
        assert!(Role::Read < Role::Submit && Role::Submit < Role::Admin);
        for role in [Role::Read, Role::Submit, Role::Admin] {
            assert_eq!(Role::parse(role.name()), Some(role));
            let toml = format!("role = {:?}", role.name());
            #[derive(Deserialize)]
            struct R {
                role: Role,
            }
            assert_eq!(toml::from_str::<R>(&toml).unwrap().role, role);
        }
    }

    #[test]
    fn an_operation_without_security_needs_admin() {
        let open = serde_json::json!({"security": [{}]});
        let read = serde_json::json!({"security": [{"bearer": ["read"]}]});
        let silent = serde_json::json!({"responses": {}});
        let unknown = serde_json::json!({"security": [{"bearer": ["root"]}]});
        assert_eq!(required_role(&open), None);
        assert_eq!(required_role(&read), Some(Role::Read));
        assert_eq!(required_role(&silent), Some(Role::Admin));
        assert_eq!(required_role(&unknown), Some(Role::Admin));
    }

    #[test]
    fn a_caller_over_its_rate_waits_and_others_do_not() {
        let rate = RateLimit {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(2).unwrap(),
        };
        let access = Access::new(
            &super::super::openapi(),
            Tokens::default(),
            Some(rate),
            Arc::default(),
        );
        let a = || Key::Address([10, 0, 0, 1].into());
        assert!(access.count(a()).is_ok() && access.count(a()).is_ok());
        assert_eq!(access.count(a()), Err(1));
        assert!(access.count(Key::Address([10, 0, 0, 2].into())).is_ok());
        assert!(access.count(Key::Token("ci".into())).is_ok());
    }
}
