#![doc = include_str!("../README.md")]

mod credentials;
pub mod types;
mod verify;

use std::time::{Duration, Instant};

#[doc(inline)]
pub use ledger_chain as chain;
use ledger_chain::{Entry, Hash, Reconfiguration};
use serde::de::DeserializeOwned;

pub use credentials::{Credentials, CredentialsError};
use types::{
    Accepted, BlockView, ChangeAccepted, ChangeRequest, CommittedView, ConsistencyView, EntryView,
    ErrorBody, MembersView, StatusView, SubmitRequest,
};
pub use verify::{Verified, Verifier, VerifyError};

/// The longest a node waits for a commit before answering (`timeout_ms`).
pub const MAX_COMMIT_WAIT: Duration = Duration::from_secs(300);

/// How long a probe (`/healthz`, `/readyz`) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The credentials cannot be used.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The node could not be reached, or the connection failed.
    #[error("{what}: cannot reach {base}")]
    Unreachable {
        /// The request.
        what: String,
        /// The node's API.
        base: String,
        /// Why.
        source: Box<ureq::Error>,
    },
    /// The node answered with an error.
    #[error("{what}: {status} {}: {}", body.error, body.message)]
    Refused {
        /// The request.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The node's reason: a stable code and a message.
        body: ErrorBody,
        /// How long the node asked to wait before trying again, if it did.
        retry_after: Option<Duration>,
    },
    /// The node answered something else than the API documents.
    #[error("{what}: {status}: {text}")]
    Unexpected {
        /// The request.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The answer, or what is wrong with it.
        text: String,
    },
    /// The entry was not committed within the wait.
    #[error("entry {id} is accepted and not committed yet; ask again with get")]
    NotCommitted {
        /// The entry id.
        id: Hash,
    },
    /// The answer does not prove what it claims.
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

impl Error {
    /// The HTTP status of a node's refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Refused { status, .. } | Error::Unexpected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The node's stable error code (`duplicate`, `pool_full`, `rate_limited`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Refused { body, .. } => Some(&body.error),
            _ => None,
        }
    }
}

/// How often and how long a call tries again when the node is busy (429, 503) or
/// cannot be reached. A node's `Retry-After` wins over the back-off, within
/// `max_delay`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Tries in all, the first included; 1 never tries again.
    pub attempts: u32,
    /// The first back-off; each next one doubles, up to `max_delay`.
    pub first_delay: Duration,
    /// The longest wait between two tries.
    pub max_delay: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 6,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl Retry {
    /// One try, no waiting.
    pub fn never() -> Retry {
        Retry {
            attempts: 1,
            ..Retry::default()
        }
    }

    /// The wait before try `attempt + 1` (from 1): the node's `Retry-After` if it
    /// gave one, else the doubled back-off with up to a quarter of jitter, so
    /// clients turned away together do not return together.
    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self
            .first_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay);
        let wait = retry_after.unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|now| now.subsec_nanos())
                .unwrap_or_default();
            let quarter = backoff / 4;
            backoff - quarter + quarter.mul_f64(f64::from(nanos % 1000) / 1000.0)
        });
        wait.min(self.max_delay)
    }
}

/// What a submit that waited for its commit got.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Submitted {
    /// Committed, with its receipt.
    Committed(Box<CommittedView>),
    /// Accepted, and still waiting for its block when the wait ran out.
    Pending(Accepted),
}

/// A client of one node's API.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
    retry: Retry,
}

/// One request, as [`Client::call`] sends it.
enum Request<'a> {
    Get,
    Post(&'a [u8]),
}

impl Client {
    /// A client of the node at `node` (a URL, or `host:port`: https when the
    /// credentials name a CA), trying again by [`Retry::default`].
    pub fn new(node: &str, credentials: &Credentials) -> Result<Client, Error> {
        // Longer than the longest wait for a commit.
        Client::with_timeout(node, credentials, MAX_COMMIT_WAIT + Duration::from_secs(30))
    }

    /// [`Client::new`] with each request bounded by `timeout` (a commit wait longer
    /// than it fails).
    pub fn with_timeout(
        node: &str,
        credentials: &Credentials,
        timeout: Duration,
    ) -> Result<Client, Error> {
        Ok(Client {
            base: credentials.base_url(node)?,
            agent: credentials.agent(timeout)?,
            retry: Retry::default(),
        })
    }

    /// The same client with another retry policy.
    pub fn with_retry(mut self, retry: Retry) -> Client {
        self.retry = retry;
        self
    }

    /// The node's API, as requests are sent to it.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Submits `entry` to the pool; answers its id once the node accepted it.
    pub fn submit(&self, entry: &Entry) -> Result<Hash, Error> {
        let what = "POST /v1/entries";
        let accepted: Accepted = self.post("/v1/entries", &SubmitRequest::from_entry(entry))?;
        parse_id(what, &accepted.id)
    }

    /// Submits `entry` and waits up to `timeout` (at most [`MAX_COMMIT_WAIT`]) for
    /// its commit.
    pub fn submit_wait(&self, entry: &Entry, timeout: Duration) -> Result<Submitted, Error> {
        let path = format!(
            "/v1/entries?wait=commit&timeout_ms={}",
            timeout.min(MAX_COMMIT_WAIT).as_millis()
        );
        let body = json_body(&SubmitRequest::from_entry(entry));
        let (status, text) = self.call(&path, Request::Post(&body))?;
        let what = format!("POST {path}");
        match status {
            200 => parse(&what, status, &text).map(|view| Submitted::Committed(Box::new(view))),
            _ => parse(&what, status, &text).map(Submitted::Pending),
        }
    }

    /// Submits `entry`, waits up to `timeout` for its commit, and checks the receipt
    /// proves this entry under a header the chain's members certified. An entry
    /// submitted before (a retry after a lost answer) is read back and checked the
    /// same way.
    pub fn submit_verified(
        &self,
        entry: &Entry,
        timeout: Duration,
        verifier: &Verifier,
    ) -> Result<Verified, Error> {
        match self.submit_wait(entry, timeout) {
            Ok(Submitted::Committed(view)) => Ok(verifier.committed(&view, entry)?),
            Ok(Submitted::Pending(_)) => Err(Error::NotCommitted { id: entry.id() }),
            Err(error) if error.code() == Some("duplicate") => {
                let verified = self.get_verified(&entry.id(), verifier)?;
                match verified.entry.as_ref() == Some(entry) {
                    true => Ok(verified),
                    false => Err(VerifyError::MalformedEntry(
                        "the node returned other data under the entry's id".into(),
                    )
                    .into()),
                }
            }
            Err(error) => Err(error),
        }
    }

    /// The entry `id`: pending, or committed with its data and receipt.
    pub fn get(&self, id: &Hash) -> Result<EntryView, Error> {
        self.get_json(&format!("/v1/entries/{id}"))
    }

    /// The committed entry `id`, its receipt checked against the genesis and its
    /// data against the receipt.
    pub fn get_verified(&self, id: &Hash, verifier: &Verifier) -> Result<Verified, Error> {
        let view = self.get(id)?;
        if view.receipt.is_none() {
            return Err(Error::NotCommitted { id: *id });
        }
        let verified = verifier.entry(&view)?;
        if verified.receipt.entry_id != *id {
            return Err(VerifyError::Disagrees {
                field: "id",
                claimed: id.to_hex(),
                proven: verified.receipt.entry_id.to_hex(),
            }
            .into());
        }
        Ok(verified)
    }

    /// Up to `limit` blocks (at most 100) from height `from`.
    pub fn blocks(&self, from: u64, limit: u64) -> Result<Vec<BlockView>, Error> {
        self.get_json(&format!("/v1/blocks?from={from}&limit={limit}"))
    }

    /// The node's status: its chain, role, height, members, readiness.
    pub fn status(&self) -> Result<StatusView, Error> {
        self.get_json("/v1/status")
    }

    /// The membership in force, learners, a change on its way, the admins.
    pub fn members(&self) -> Result<MembersView, Error> {
        self.get_json("/v1/members")
    }

    /// The RFC 9162 consistency proof from log size `from` to `to`, checked: it
    /// proves the log of `to` entries extends the one of `from`. The roots are the
    /// node's; compare them with roots you trust (a verified receipt's header).
    pub fn consistency(&self, from: u64, to: u64) -> Result<ConsistencyView, Error> {
        let path = format!("/v1/proofs/consistency?from={from}&to={to}");
        let view: ConsistencyView = self.get_json(&path)?;
        let hashes = |texts: &[String]| -> Result<Vec<Hash>, Error> {
            texts.iter().map(|text| parse_id(&path, text)).collect()
        };
        let roots = hashes(&[view.from_root.clone(), view.to_root.clone()])?;
        ledger_chain::merkle::verify_consistency(
            view.from,
            view.to,
            &roots[0],
            &roots[1],
            &hashes(&view.proof)?,
        )
        .map_err(VerifyError::Consistency)?;
        if (view.from, view.to) != (from, to) {
            return Err(Error::Unexpected {
                what: format!("GET {path}"),
                status: 200,
                text: format!("a proof from {} to {}", view.from, view.to),
            });
        }
        Ok(view)
    }

    /// Hands a signed membership change to the node (admin role), which checks it
    /// against the membership in force and has the members order it.
    pub fn propose_change(&self, change: &Reconfiguration) -> Result<ChangeAccepted, Error> {
        let request = ChangeRequest {
            reconfiguration: hex::encode(change.encode()),
            description: Some(change.change.to_string()),
            epoch: Some(change.epoch),
        };
        self.post("/v1/admin/reconfigurations", &request)
    }

    /// Probes the node as a health check does, once, within 5 seconds: its answer
    /// when alive (`ready`: ready to serve), the reason as an error when not.
    pub fn probe(&self, ready: bool) -> Result<String, Error> {
        let path = if ready { "/readyz" } else { "/healthz" };
        let what = format!("GET {path}");
        let response = self
            .agent
            .get(format!("{}{path}", self.base))
            .config()
            .timeout_global(Some(PROBE_TIMEOUT))
            .build()
            .call();
        let (status, _, text) = self.read(&what, response)?;
        match status {
            200..=299 => Ok(text.trim().to_owned()),
            _ => Err(refusal(what, status, &text, None)),
        }
    }

    fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let (status, text) = self.call(path, Request::Get)?;
        parse(&format!("GET {path}"), status, &text)
    }

    fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, Error> {
        let (status, text) = self.call(path, Request::Post(&json_body(body)))?;
        parse(&format!("POST {path}"), status, &text)
    }

    /// Sends a request until it gets a 2xx answer, a refusal that trying again
    /// cannot change, or the retry policy runs out. A POST is sent again only when
    /// the node cannot have taken it: refused as busy, or never connected to.
    fn call(&self, path: &str, request: Request<'_>) -> Result<(u16, String), Error> {
        let url = format!("{}{path}", self.base);
        let what = match request {
            Request::Get => format!("GET {path}"),
            Request::Post(_) => format!("POST {path}"),
        };
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let response = match request {
                Request::Get => self.agent.get(&url).call(),
                Request::Post(body) => self
                    .agent
                    .post(&url)
                    .content_type("application/json")
                    .send(body),
            };
            let (retry_after, error) = match self.read(&what, response) {
                Ok((status, _, text)) if (200..300).contains(&status) => return Ok((status, text)),
                Ok((status @ (429 | 503), retry_after, text)) => (
                    retry_after,
                    refusal(what.clone(), status, &text, retry_after),
                ),
                Ok((status, _, text)) => return Err(refusal(what, status, &text, None)),
                Err(Error::Unreachable { source, what, base })
                    if matches!(request, Request::Get) || never_sent(&source) =>
                {
                    (None, Error::Unreachable { source, what, base })
                }
                Err(error) => return Err(error),
            };
            if attempt >= self.retry.attempts {
                return Err(error);
            }
            let delay = self.retry.delay(attempt, retry_after);
            // A wait past the longest commit wait is no retry a caller expects.
            if started.elapsed() + delay > MAX_COMMIT_WAIT {
                return Err(error);
            }
            std::thread::sleep(delay);
            attempt += 1;
        }
    }

    /// The status, `Retry-After` and text of an answer.
    fn read(
        &self,
        what: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Option<Duration>, String), Error> {
        let unreachable = |source| Error::Unreachable {
            what: what.to_owned(),
            base: self.base.clone(),
            source: Box::new(source),
        };
        let mut response = response.map_err(unreachable)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(ureq::http::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.body_mut().read_to_string().map_err(unreachable)?;
        Ok((status, retry_after, text))
    }
}

/// Whether a failed request never reached the node, so sending it again cannot
/// make it twice.
fn never_sent(error: &ureq::Error) -> bool {
    match error {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
        ureq::Error::Io(error) => error.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

fn json_body(body: &impl serde::Serialize) -> Vec<u8> {
    // Serializing the API's own types (strings, numbers, vectors) cannot fail.
    serde_json::to_vec(body).unwrap_or_default()
}

/// The node's refusal: its error body when it sent one.
fn refusal(what: String, status: u16, text: &str, retry_after: Option<Duration>) -> Error {
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(body) => Error::Refused {
            what,
            status,
            body,
            retry_after,
        },
        Err(_) => Error::Unexpected {
            what,
            status,
            text: text.trim().to_owned(),
        },
    }
}

fn parse<T: DeserializeOwned>(what: &str, status: u16, text: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|error| Error::Unexpected {
        what: what.to_owned(),
        status,
        text: format!("not the documented answer: {error}"),
    })
}

fn parse_id(what: &str, text: &str) -> Result<Hash, Error> {
    text.parse().map_err(|_| Error::Unexpected {
        what: what.to_owned(),
        status: 200,
        text: format!("{text:?} is not a hash"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_wins_within_the_longest_delay() {
        let retry = Retry::default();
        assert_eq!(
            retry.delay(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry.delay(1, Some(Duration::from_secs(60))),
            retry.max_delay
        );
        for attempt in 1..10 {
            let backoff = retry.delay(attempt, None);
            let full = (retry.first_delay * (1 << (attempt - 1))).min(retry.max_delay);
            assert!(
                backoff <= full && backoff >= full - full / 4,
                "{attempt}: {backoff:?}"
            );
        }
    }
}
