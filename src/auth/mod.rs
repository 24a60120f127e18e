//! Authentication and authorization at the HTTP edge.
//!
//! Off unless an htpasswd file is given (`--htpasswd`): then every request is identified from
//! its `Authorization: Basic` header (or is anonymous), and every route needs an action on a
//! repository (pull, push, delete), admin rights (operator endpoints), or only a known user
//! (`/v2/`, the base that `docker login` checks). What each identity may do comes from the
//! [`policy`]. A request without credentials that the policy does not allow is answered 401
//! `UNAUTHORIZED` with the challenge (so clients send their credentials); one with credentials
//! that are not allowed, 403 `DENIED`. Wrong credentials are 401 and count against the user
//! name from that address, and against the address: past [`MAX_FAILURES`] for one user (a
//! password guessed) or [`MAX_FAILURES_PER_ADDRESS`] for any (names sprayed) in
//! [`FAILURE_WINDOW`], logins are refused with 429 until the window passes, unchecked. Every decision is counted by result and reason, and refusals are
//! logged with user and repository.

pub mod htpasswd;
pub mod policy;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::HttpRequest;
use base64::Engine as _;

pub use policy::{AccessConfig, Action, Identity, Policy};

use crate::error::{RegistryError, Result};

/// Failed logins for one user from one address allowed within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 10;
/// Failed logins for any users from one address allowed within [`FAILURE_WINDOW`].
pub const MAX_FAILURES_PER_ADDRESS: u32 = 100;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked for failed logins at most (the oldest windows go first).
const TRACKED: usize = 10_000;

/// What a route needs.
#[derive(Clone, Copy, Debug)]
pub enum Need<'a> {
    /// An action on a repository.
    Repo(&'a str, Action),
    /// Operator endpoints: `/_stats`, `/_gc`, `/metrics`.
    Admin,
    /// Any identity the policy knows: a user, or anonymous when something is anonymous.
    Login,
    /// Anyone (answers filtered by what the identity may pull: `/v2/_catalog`).
    Anyone,
}

/// The edge's gate: allows everything when authentication is off.
pub struct Gate {
    auth: Option<Auth>,
}

struct Auth {
    users: htpasswd::Htpasswd,
    policy: Policy,
    realm: String,
    /// (address, user or "" for all) -> (failures, window start)
    failures: Mutex<HashMap<(IpAddr, String), (u32, Instant)>>,
    decisions: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Gate {
    pub fn off() -> Gate {
        Gate { auth: None }
    }

    pub fn new(htpasswd: &std::path::Path, access: &AccessConfig) -> anyhow::Result<Gate> {
        let policy = Policy::new(access).map_err(|e| anyhow::anyhow!("access rules: {e}"))?;
        Ok(Gate {
            auth: Some(Auth {
                users: htpasswd::Htpasswd::open(htpasswd)?,
                policy,
                realm: "stowage".into(),
                failures: Mutex::new(HashMap::new()),
                decisions: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    pub fn enabled(&self) -> bool {
        self.auth.is_some()
    }

    /// Read the htpasswd file again (SIGHUP).
    pub fn reload(&self) {
        if let Some(a) = &self.auth {
            if let Err(e) = a.users.reload() {
                tracing::error!(error = %e, "htpasswd not reloaded; the users loaded before stay");
            }
        }
    }

    /// Decisions so far: (result, reason) -> count.
    pub fn decisions(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        match &self.auth {
            Some(a) => a.decisions.lock().expect("auth lock").clone(),
            None => BTreeMap::new(),
        }
    }

    /// Identify the caller and check it may do what `need` says; the identity on success.
    pub fn check(&self, req: &HttpRequest, need: Need<'_>) -> Result<Identity> {
        let Some(a) = &self.auth else {
            return Ok(Identity::Anonymous);
        };
        let who = a.identify(req)?;
        let (ok, reason) = match need {
            Need::Repo(repo, action) => (a.policy.allowed(&who, repo).contains(&action), "policy"),
            Need::Admin => (a.policy.is_admin(&who), "admin"),
            // `docker login` and the clients' first request: a user, so that clients holding
            // credentials get the challenge that makes them send them.
            Need::Login => (who != Identity::Anonymous, "login"),
            Need::Anyone => (true, "anyone"),
        };
        if ok {
            a.count("allowed", reason);
            return Ok(who);
        }
        let what = match need {
            Need::Repo(repo, action) => format!("{} on {repo}", action.as_str()),
            Need::Admin => "the operator endpoints".into(),
            _ => "this registry".into(),
        };
        tracing::info!(user = who.name(), access = %what, "access refused");
        match who {
            Identity::Anonymous => {
                a.count("denied", "anonymous");
                Err(a.challenge(format!("{what} needs credentials"), need))
            }
            Identity::User(u) => {
                a.count("denied", "forbidden");
                Err(RegistryError::Denied(format!("{u} may not {what}")))
            }
        }
    }

    /// Whether `who` may pull `repo` (for filtering answers such as the catalog).
    pub fn may_pull(&self, who: &Identity, repo: &str) -> bool {
        match &self.auth {
            None => true,
            Some(a) => a.policy.allowed(who, repo).contains(&Action::Pull),
        }
    }
}

impl Auth {
    fn count(&self, result: &'static str, reason: &'static str) {
        *(self.decisions.lock().expect("auth lock"))
            .entry((result, reason))
            .or_default() += 1;
    }

    fn challenge(&self, message: String, _need: Need<'_>) -> RegistryError {
        RegistryError::Unauthorized {
            message,
            challenge: format!("Basic realm=\"{}\"", self.realm),
        }
    }

    fn identify(&self, req: &HttpRequest) -> Result<Identity> {
        let Some(value) = req.headers().get(header::AUTHORIZATION) else {
            return Ok(Identity::Anonymous);
        };
        let peer = req.peer_addr().map(|a| a.ip());
        let creds = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("basic").then_some(rest.trim())
            })
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .and_then(|raw| String::from_utf8(raw).ok());
        let Some((user, password)) = creds.as_deref().and_then(|c| c.split_once(':')) else {
            self.count("denied", "malformed");
            return Err(self.challenge("malformed Authorization header".into(), Need::Login));
        };
        if let Some(ip) = peer {
            if self.throttled(ip, user) {
                self.count("denied", "throttled");
                tracing::info!(user, %ip, "login refused: too many failures");
                return Err(RegistryError::TooManyRequests(format!(
                    "too many failed logins from {ip}"
                )));
            }
        }
        if self.users.verify(user, password) {
            return Ok(Identity::User(user.to_string()));
        }
        if let Some(ip) = peer {
            self.failed(ip, user);
        }
        self.count("denied", "bad_credentials");
        tracing::info!(user, "login failed");
        Err(self.challenge("wrong user name or password".into(), Need::Login))
    }

    fn throttled(&self, ip: IpAddr, user: &str) -> bool {
        let f = self.failures.lock().expect("auth lock");
        let over = |key: (IpAddr, String), max: u32| {
            f.get(&key)
                .is_some_and(|(n, since)| *n >= max && since.elapsed() < FAILURE_WINDOW)
        };
        over((ip, user.to_string()), MAX_FAILURES)
            || over((ip, String::new()), MAX_FAILURES_PER_ADDRESS)
    }

    fn failed(&self, ip: IpAddr, user: &str) {
        let mut f = self.failures.lock().expect("auth lock");
        if f.len() >= TRACKED {
            f.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        for key in [(ip, user.to_string()), (ip, String::new())] {
            if f.len() >= TRACKED && !f.contains_key(&key) {
                continue; // bounded: more than that failing at once go uncounted
            }
            let e = f.entry(key).or_insert((0, Instant::now()));
            if e.1.elapsed() >= FAILURE_WINDOW {
                *e = (0, Instant::now());
            }
            e.0 += 1;
        }
    }
}
