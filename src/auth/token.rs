//! Bearer tokens: the Docker token protocol
//! (<https://distribution.github.io/distribution/spec/auth/token/>).
//!
//! With a `[token]` section, a request without a valid token is answered with
//! `WWW-Authenticate: Bearer realm="…",service="…",scope="repository:NAME:ACTIONS"`; the client
//! gets a token from the realm and retries with `Authorization: Bearer <JWT>`. A token is a JWT
//! whose `access` claim lists what it grants (`[{"type":"repository","name":…,"actions":[…]}]`);
//! its issuer, audience (the service), expiry and signature are checked here, without calling
//! the token server back.
//!
//! Two ways to get tokens:
//! - stowage is its own token server (the default): `GET /token?service=&scope=…` with the
//!   user's Basic credentials (or none: anonymous) issues a token granting what was asked for
//!   and the access rules allow, HS256-signed with a secret kept in `<root>/auth/token-secret`
//!   (made at the first start, mode 0600) and valid for `expiry`;
//! - an external token server (`public_keys`: its PEM public keys, RSA or EC): its tokens are
//!   checked against those keys, and `realm` must point at it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::policy::Action;

/// The `[token]` section of the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Where clients get tokens; default: this server's `/token` at the address the client used.
    pub realm: Option<String>,
    #[serde(default = "default_name")]
    pub service: String,
    #[serde(default = "default_name")]
    pub issuer: String,
    /// PEM public keys of an external token server (then stowage issues none).
    #[serde(default)]
    pub public_keys: Vec<PathBuf>,
    /// Lifetime of the tokens stowage issues.
    #[serde(default = "default_expiry", with = "humantime_serde")]
    pub expiry: Duration,
}

fn default_name() -> String {
    "stowage".into()
}

fn default_expiry() -> Duration {
    Duration::from_secs(300)
}

/// One entry of a token's `access` claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    #[serde(default)]
    access: Vec<Grant>,
}

/// A verified token: who it was issued to and what it grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub sub: String,
    /// Issued by this server (its subject is one of our users, or empty: anonymous).
    pub own: bool,
    pub access: Vec<Grant>,
}

impl Token {
    pub fn allows(&self, repo: &str, action: Action) -> bool {
        self.access.iter().any(|g| {
            g.kind == "repository"
                && g.name == repo
                && g.actions.iter().any(|a| a == action.as_str() || a == "*")
        })
    }
}

/// A requested scope: `repository:NAME:pull,push` (or `registry:catalog:*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Scope {
    /// Parse one scope; several may come space-separated in one parameter.
    pub fn parse_all(s: &str) -> Vec<Scope> {
        s.split_whitespace()
            .filter_map(|one| {
                let (kind, rest) = one.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                // `repository(plugin):name` names a resource class: the type is the part before.
                let kind = kind.split('(').next().unwrap_or(kind);
                Some(Scope {
                    kind: kind.to_string(),
                    name: name.to_string(),
                    actions: actions.split(',').map(str::to_string).collect(),
                })
            })
            .collect()
    }
}

pub struct Tokens {
    pub cfg: TokenConfig,
    /// Our own signing secret (when stowage issues tokens).
    own: Option<(EncodingKey, DecodingKey)>,
    /// External token servers' keys and the algorithms each verifies.
    external: Vec<(DecodingKey, Vec<Algorithm>)>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The signing secret under `dir`, made (32 random bytes, mode 0600, synced) if absent.
fn secret(dir: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("token-secret");
    if let Ok(s) = std::fs::read(&path) {
        anyhow::ensure!(s.len() >= 32, "{} is too short", path.display());
        return Ok(s);
    }
    std::fs::create_dir_all(dir)?;
    let mut s = vec![0u8; 32];
    getrandom::fill(&mut s).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let tmp = dir.join("token-secret.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&s)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(s)
}

impl Tokens {
    pub fn new(cfg: &TokenConfig, auth_dir: &Path) -> anyhow::Result<Tokens> {
        let mut external = Vec::new();
        for p in &cfg.public_keys {
            let pem = std::fs::read(p)
                .map_err(|e| anyhow::anyhow!("token public key {}: {e}", p.display()))?;
            let key = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                (
                    k,
                    vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
                )
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                (k, vec![Algorithm::ES256, Algorithm::ES384])
            } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
                (k, vec![Algorithm::EdDSA])
            } else {
                anyhow::bail!(
                    "token public key {}: not an RSA, EC or Ed25519 PEM key",
                    p.display()
                );
            };
            external.push(key);
        }
        let own = if external.is_empty() {
            let s = secret(auth_dir)?;
            Some((EncodingKey::from_secret(&s)?, DecodingKey::from_secret(&s)?))
        } else {
            None
        };
        Ok(Tokens {
            cfg: cfg.clone(),
            own,
            external,
        })
    }

    pub fn issues(&self) -> bool {
        self.own.is_some()
    }

    /// Sign a token for `sub` ("" for anonymous) granting `access`.
    pub fn issue(&self, sub: &str, access: Vec<Grant>) -> anyhow::Result<(String, u64)> {
        let (enc, _) = self
            .own
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("tokens come from an external token server"))?;
        let t = now();
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let claims = Claims {
            iss: self.cfg.issuer.clone(),
            sub: sub.to_string(),
            aud: self.cfg.service.clone(),
            exp: t + self.cfg.expiry.as_secs(),
            nbf: t.saturating_sub(1),
            iat: t,
            jti: hex::encode(jti),
            access,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, enc)?;
        Ok((token, self.cfg.expiry.as_secs()))
    }

    /// Check a presented token; why it is refused otherwise.
    pub fn verify(&self, token: &str) -> Result<Token, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        let validation = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            v.set_issuer(&[&self.cfg.issuer]);
            v.set_audience(&[&self.cfg.service]);
            v.validate_nbf = true;
            v.leeway = 5;
            v
        };
        // Our own secret for HS256, then every external key that verifies the header's
        // algorithm.
        let own = (self.own.as_ref())
            .filter(|_| header.alg == Algorithm::HS256)
            .map(|(_, dec)| (dec, true));
        let external = (self.external.iter())
            .filter(|(_, algs)| algs.contains(&header.alg))
            .map(|(key, _)| (key, false));
        let mut why = "signed by an unknown key".to_string();
        for (key, own) in own.into_iter().chain(external) {
            match jsonwebtoken::decode::<Claims>(token, key, &validation(header.alg)) {
                Ok(d) => {
                    return Ok(Token {
                        sub: d.claims.sub,
                        own,
                        access: d.claims.access,
                    })
                }
                Err(e) => why = e.to_string(),
            }
        }
        Err(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TokenConfig {
        toml::from_str("").unwrap()
    }

    #[test]
    fn scopes_parse() {
        let s = Scope::parse_all(
            "repository:team/app:pull,push registry:catalog:* repository(plugin):x:pull",
        );
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "team/app");
        assert_eq!(s[0].actions, ["pull", "push"]);
        assert_eq!(
            (s[1].kind.as_str(), s[1].name.as_str()),
            ("registry", "catalog")
        );
        assert_eq!(s[2].kind, "repository");
    }

    #[test]
    fn own_tokens_round_trip_and_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokens::new(&cfg(), dir.path()).unwrap();
        let grant = Grant {
            kind: "repository".into(),
            name: "team/app".into(),
            actions: vec!["pull".into()],
        };
        let (tok, exp) = t.issue("alice", vec![grant.clone()]).unwrap();
        assert_eq!(exp, 300);
        let v = t.verify(&tok).unwrap();
        assert_eq!(v.sub, "alice");
        assert!(v.allows("team/app", Action::Pull));
        assert!(!v.allows("team/app", Action::Push));
        assert!(!v.allows("team/other", Action::Pull));
        // The same secret after a restart; another store's secret is another key.
        let again = Tokens::new(&cfg(), dir.path()).unwrap();
        assert!(again.verify(&tok).is_ok());
        let other = Tokens::new(&cfg(), tempfile::tempdir().unwrap().path()).unwrap();
        assert!(other.verify(&tok).is_err());
        // Tampered, expired, or for another service.
        let mut bad = tok.clone();
        bad.pop();
        assert!(t.verify(&bad).is_err());
        let expired = {
            let c = Claims {
                iss: "stowage".into(),
                sub: "alice".into(),
                aud: "stowage".into(),
                exp: now() - 60,
                nbf: now() - 120,
                iat: now() - 120,
                jti: "x".into(),
                access: vec![grant.clone()],
            };
            let enc = &t.own.as_ref().unwrap().0;
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &c, enc).unwrap()
        };
        assert!(t.verify(&expired).is_err(), "expired");
        let mut strict = Tokens::new(&cfg(), dir.path()).unwrap();
        let mut other_service = cfg();
        other_service.service = "elsewhere".into();
        strict.cfg = other_service;
        assert!(strict.verify(&tok).is_err(), "audience checked");
    }
}
