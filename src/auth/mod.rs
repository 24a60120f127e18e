//! Authentication and authorization at the HTTP edge.
//!
//! Off unless an htpasswd file (`--htpasswd`) or a `[token]` section is given: then every
//! request is identified from its `Authorization` header — `Basic` (htpasswd users),
//! `Bearer` (a [`token`]) — or is anonymous, and every route needs an action on a repository
//! (pull, push, delete), admin rights (operator endpoints), or only a known caller (`/v2/`,
//! the base that `docker login` checks). What a user may do comes from the [`policy`], for
//! tokens this server issued too (they prove who holds them); what an external server's token
//! may do, from its `access` claim. A request without credentials that is not allowed
//! is answered 401 `UNAUTHORIZED` with the challenge (Basic, or Bearer with the scope needed),
//! so clients send credentials or fetch a token; a user not allowed (by password or by one of
//! our tokens), 403 `DENIED` (with the challenge and `error="insufficient_scope"`, RFC 6750);
//! an anonymous or external token lacking the scope, 401 with `error="insufficient_scope"`
//! (a token for that scope may help: clients fetch one); an invalid token, 401 with
//! `error="invalid_token"`. Wrong credentials are 401 and count against the user
//! name from that address, and against the address: past [`MAX_FAILURES`] for one user (a
//! password guessed) or [`MAX_FAILURES_PER_ADDRESS`] for any (names sprayed) in
//! [`FAILURE_WINDOW`], logins are refused with 429 until the window passes, unchecked. Every decision is counted by result and reason, and refusals are
//! logged with user and repository.

pub mod htpasswd;
pub mod policy;
pub mod tls;
pub mod token;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::HttpRequest;
use base64::Engine as _;

pub use policy::{AccessConfig, Action, Identity, Policy};
pub use token::TokenConfig;

use crate::error::{RegistryError, Result};

/// Failed logins for one user from one address allowed within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 10;
/// Failed logins for any users from one address allowed within [`FAILURE_WINDOW`].
pub const MAX_FAILURES_PER_ADDRESS: u32 = 100;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked for failed logins at most (the oldest windows go first).
const TRACKED: usize = 10_000;

/// Every (result, reason) a decision is counted under.
pub const DECISIONS: [(&str, &str); 12] = [
    ("allowed", "policy"),
    ("allowed", "admin"),
    ("allowed", "login"),
    ("allowed", "anyone"),
    ("allowed", "token_issued"),
    ("denied", "anonymous"),
    ("denied", "forbidden"),
    ("denied", "insufficient_scope"),
    ("denied", "bad_credentials"),
    ("denied", "bad_token"),
    ("denied", "malformed"),
    ("denied", "throttled"),
];

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
    /// The TLS certificate, reloaded with the users on SIGHUP.
    certificate: Option<std::sync::Arc<tls::Certificate>>,
}

struct Auth {
    users: Option<htpasswd::Htpasswd>,
    tokens: Option<token::Tokens>,
    policy: Policy,
    realm: String,
    /// Whether the listener speaks TLS (the scheme of the token realm we serve).
    tls: bool,
    /// (address, user or "" for all) -> (failures, window start)
    failures: Mutex<HashMap<(IpAddr, String), (u32, Instant)>>,
    decisions: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Gate {
    pub fn off() -> Gate {
        Gate {
            auth: None,
            certificate: None,
        }
    }

    /// Reload `c` with the rest on SIGHUP, and report its reloads.
    pub fn with_certificate(mut self, c: Option<std::sync::Arc<tls::Certificate>>) -> Gate {
        if let Some(a) = &mut self.auth {
            a.tls = c.is_some();
        }
        self.certificate = c;
        self
    }

    /// Authentication on: users from `htpasswd`, tokens per `token` (their secret kept under
    /// `auth_dir`), permissions from `access`.
    pub fn new(
        htpasswd: Option<&std::path::Path>,
        token: Option<&TokenConfig>,
        access: &AccessConfig,
        auth_dir: &std::path::Path,
    ) -> anyhow::Result<Gate> {
        let policy = Policy::new(access).map_err(|e| anyhow::anyhow!("access rules: {e}"))?;
        Ok(Gate {
            auth: Some(Auth {
                users: htpasswd.map(htpasswd::Htpasswd::open).transpose()?,
                tokens: token.map(|t| token::Tokens::new(t, auth_dir)).transpose()?,
                policy,
                realm: "stowage".into(),
                tls: false,
                failures: Mutex::new(HashMap::new()),
                decisions: Mutex::new(BTreeMap::new()),
            }),
            certificate: None,
        })
    }

    pub fn enabled(&self) -> bool {
        self.auth.is_some()
    }

    /// Read the htpasswd file and the TLS certificate again (SIGHUP).
    pub fn reload(&self) {
        if let Some(users) = self.auth.as_ref().and_then(|a| a.users.as_ref()) {
            if let Err(e) = users.reload() {
                tracing::error!(error = %e, "htpasswd not reloaded; the users loaded before stay");
            }
        }
        if let Some(c) = &self.certificate {
            c.reload();
        }
    }

    /// (what, result) -> reloads: `tls` and `htpasswd`, `ok` and `failed`.
    pub fn reloads(&self) -> Vec<((&'static str, &'static str), u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut out = Vec::new();
        if let Some(u) = self.auth.as_ref().and_then(|a| a.users.as_ref()) {
            out.push((("htpasswd", "ok"), u.reloaded.load(Relaxed)));
            out.push((("htpasswd", "failed"), u.reload_failures.load(Relaxed)));
        }
        if let Some(c) = &self.certificate {
            out.push((("tls", "ok"), c.reloaded.load(Relaxed)));
            out.push((("tls", "failed"), c.reload_failures.load(Relaxed)));
        }
        out
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
        let who = a.identify(req, need)?;
        let (ok, reason) = match need {
            Need::Repo(repo, action) => (a.allows(&who, repo, action), "policy"),
            Need::Admin => (a.is_admin(&who), "admin"),
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
                Err(a.challenge(req, need, None, format!("{what} needs credentials")))
            }
            // A user's token from this server: a new token would not change the answer.
            Identity::Token(t) if t.own && !t.sub.is_empty() => {
                a.count("denied", "forbidden");
                let msg = format!("{} may not {what}", t.sub);
                match a.challenge(req, need, Some("insufficient_scope"), msg) {
                    RegistryError::Unauthorized { message, challenge } => {
                        Err(RegistryError::InsufficientScope { message, challenge })
                    }
                    e => Err(e),
                }
            }
            // An anonymous token, or an external one lacking the scope: a token for it may help.
            Identity::Token(_) => {
                a.count("denied", "insufficient_scope");
                let msg = format!("the token does not grant {what}");
                Err(a.challenge(req, need, Some("insufficient_scope"), msg))
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
            Some(a) => a.allows(who, repo, Action::Pull),
        }
    }

    /// `GET /token`: a token for the caller (Basic credentials, or none: anonymous) granting
    /// what the `scope` parameters ask for and the access rules allow.
    pub fn issue_token(&self, req: &HttpRequest) -> Result<serde_json::Value> {
        let tokens = self
            .auth
            .as_ref()
            .and_then(|a| a.tokens.as_ref().filter(|t| t.issues()).map(|t| (a, t)));
        let Some((a, tokens)) = tokens else {
            return Err(RegistryError::NotFound(
                "this registry issues no tokens".into(),
            ));
        };
        let params = actix_web::web::Query::<Vec<(String, String)>>::from_query(req.query_string())
            .map(|q| q.into_inner())
            .unwrap_or_default();
        if let Some((_, svc)) = params.iter().find(|(k, _)| k == "service") {
            if svc != &tokens.cfg.service {
                return Err(RegistryError::Denied(format!(
                    "tokens here are for service {:?}",
                    tokens.cfg.service
                )));
            }
        }
        let who = match req.headers().get(header::AUTHORIZATION) {
            None => Identity::Anonymous,
            Some(_) => match a.identify(req, Need::Login)? {
                u @ Identity::User(_) => u,
                _ => {
                    return Err(a.challenge(
                        req,
                        Need::Login,
                        None,
                        "a token is asked for with Basic credentials".into(),
                    ))
                }
            },
        };
        let mut access = Vec::new();
        for (_, scope) in params.iter().filter(|(k, _)| k == "scope") {
            for sc in token::Scope::parse_all(scope) {
                let actions: Vec<String> = match (sc.kind.as_str(), sc.name.as_str()) {
                    ("repository", name) => {
                        let allowed = a.policy.allowed(&who, name);
                        let wanted =
                            |x: Action| sc.actions.iter().any(|s| s == x.as_str() || s == "*");
                        Action::ALL
                            .into_iter()
                            .filter(|x| allowed.contains(x) && wanted(*x))
                            .map(|x| x.as_str().to_string())
                            .collect()
                    }
                    ("registry", "catalog") if who != Identity::Anonymous => vec!["*".into()],
                    _ => Vec::new(),
                };
                access.push(token::Grant {
                    kind: sc.kind,
                    name: sc.name,
                    actions,
                });
            }
        }
        let sub = match &who {
            Identity::User(u) => u.clone(),
            _ => String::new(),
        };
        tracing::info!(user = who.name(), ?access, "token issued");
        a.count("allowed", "token_issued");
        let (token, expires_in) = tokens
            .issue(&sub, access)
            .map_err(|e| RegistryError::Internal(format!("issuing a token: {e}")))?;
        Ok(serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": expires_in,
            "issued_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }))
    }
}

impl Auth {
    fn count(&self, result: &'static str, reason: &'static str) {
        *(self.decisions.lock().expect("auth lock"))
            .entry((result, reason))
            .or_default() += 1;
    }

    /// A token this server issued proves who holds it; what it may do is decided by the
    /// access rules now (a changed rule or a removed user counts at once, not at expiry).
    /// A token of an external server is held to its `access` claim.
    fn allows(&self, who: &Identity, repo: &str, action: Action) -> bool {
        match who {
            Identity::Token(t) if t.own => match self.token_user(t) {
                Some(u) => self.policy.allowed(&u, repo).contains(&action),
                None => false,
            },
            Identity::Token(t) => t.allows(repo, action),
            _ => self.policy.allowed(who, repo).contains(&action),
        }
    }

    /// Whom a token this server issued stands for: its user while the user exists, or
    /// anonymous; `None` for a user since removed.
    fn token_user(&self, t: &token::Token) -> Option<Identity> {
        if t.sub.is_empty() {
            return Some(Identity::Anonymous);
        }
        let known = self.users.as_ref().is_some_and(|u| u.has_user(&t.sub));
        known.then(|| Identity::User(t.sub.clone()))
    }

    fn is_admin(&self, who: &Identity) -> bool {
        match who {
            Identity::Token(t) if t.own => {
                self.token_user(t).is_some_and(|u| self.policy.is_admin(&u))
            }
            Identity::Token(_) => false,
            _ => self.policy.is_admin(who),
        }
    }

    /// The 401 answer, with the challenge of the scheme in use.
    fn challenge(
        &self,
        req: &HttpRequest,
        need: Need<'_>,
        error: Option<&str>,
        message: String,
    ) -> RegistryError {
        let challenge = match &self.tokens {
            Some(t) => {
                let realm = t.cfg.realm.clone().unwrap_or_else(|| {
                    let c = req.connection_info();
                    // A proxy's Forwarded/X-Forwarded-Proto decides; otherwise our own TLS.
                    let forwarded = ["forwarded", "x-forwarded-proto"]
                        .iter()
                        .any(|h| req.headers().contains_key(*h));
                    let scheme = if self.tls && !forwarded {
                        "https"
                    } else {
                        c.scheme()
                    };
                    format!("{scheme}://{}/token", c.host())
                });
                let mut v = format!("Bearer realm=\"{realm}\",service=\"{}\"", t.cfg.service);
                match need {
                    Need::Repo(repo, action) => {
                        let actions = match action {
                            Action::Push => "pull,push",
                            a => a.as_str(),
                        };
                        v.push_str(&format!(",scope=\"repository:{repo}:{actions}\""));
                    }
                    Need::Anyone => v.push_str(",scope=\"registry:catalog:*\""),
                    _ => {}
                }
                if let Some(e) = error {
                    v.push_str(&format!(",error=\"{e}\""));
                }
                v
            }
            None => format!("Basic realm=\"{}\"", self.realm),
        };
        RegistryError::Unauthorized { message, challenge }
    }

    fn identify(&self, req: &HttpRequest, need: Need<'_>) -> Result<Identity> {
        let Some(value) = req.headers().get(header::AUTHORIZATION) else {
            return Ok(Identity::Anonymous);
        };
        let value = value.to_str().unwrap_or("").trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            let Some(tokens) = &self.tokens else {
                self.count("denied", "malformed");
                return Err(self.challenge(
                    req,
                    need,
                    None,
                    "bearer tokens are not used here".into(),
                ));
            };
            return match tokens.verify(rest.trim()) {
                Ok(t) => Ok(Identity::Token(Box::new(t))),
                Err(why) => {
                    self.count("denied", "bad_token");
                    tracing::info!(reason = %why, "token refused");
                    Err(self.challenge(
                        req,
                        need,
                        Some("invalid_token"),
                        format!("token refused: {why}"),
                    ))
                }
            };
        }
        let creds = scheme
            .eq_ignore_ascii_case("basic")
            .then_some(rest.trim())
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .and_then(|raw| String::from_utf8(raw).ok());
        let Some((user, password)) = creds.as_deref().and_then(|c| c.split_once(':')) else {
            self.count("denied", "malformed");
            return Err(self.challenge(req, need, None, "malformed Authorization header".into()));
        };
        if user.is_empty() && password.is_empty() {
            // containers/image answers a Basic challenge without credentials with ":".
            return Ok(Identity::Anonymous);
        }
        let Some(users) = &self.users else {
            self.count("denied", "bad_credentials");
            return Err(self.challenge(
                req,
                need,
                None,
                "no users are known here: use a token".into(),
            ));
        };
        let peer = req.peer_addr().map(|a| a.ip());
        if let Some(ip) = peer {
            if self.throttled(ip, user) {
                self.count("denied", "throttled");
                tracing::info!(user, %ip, "login refused: too many failures");
                return Err(RegistryError::TooManyRequests(format!(
                    "too many failed logins from {ip}"
                )));
            }
        }
        if users.verify(user, password) {
            return Ok(Identity::User(user.to_string()));
        }
        if let Some(ip) = peer {
            self.failed(ip, user);
        }
        self.count("denied", "bad_credentials");
        tracing::info!(user, "login failed");
        Err(self.challenge(req, need, None, "wrong user name or password".into()))
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
