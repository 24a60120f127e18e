//! Who may do what to which repository: the `[[access]]`, `[[anonymous]]`, `admins` and
//! `[groups]` of the config file.
//!
//! Rules name repositories by glob (`*` and `?` within one path component, `**` across `/`).
//! For a repository, the rules whose pattern matches and is the most specific (the most
//! literal characters; a tie is the union of the tied rules) decide alone: a narrower rule
//! that grants less overrides a broader one. An authenticated user gets what those rules grant
//! to them, to a group of theirs or to `"*"` (any authenticated user), plus what they grant
//! anonymously. Admins may do everything, operator endpoints included. With no `[[access]]`
//! rule and no admin configured, every authenticated user may do everything (as a registry
//! with only an htpasswd file behaves).

use std::collections::{BTreeSet, HashMap};

use regex::Regex;
use serde::Deserialize;

/// What a request does to a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];
}

/// One `[[access]]` rule as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    pub repositories: Vec<String>,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub actions: Vec<Action>,
}

/// One `[[anonymous]]` rule as written: actions allowed without credentials.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnonymousRule {
    pub repositories: Vec<String>,
    pub actions: Vec<Action>,
}

/// The access settings of the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    #[serde(default)]
    pub access: Vec<AccessRule>,
    #[serde(default)]
    pub anonymous: Vec<AnonymousRule>,
    #[serde(default)]
    pub admins: Vec<String>,
    #[serde(default)]
    pub groups: HashMap<String, Vec<String>>,
}

/// A repository glob, compiled.
#[derive(Clone, Debug)]
struct Glob {
    re: Regex,
    /// Literal characters: the more, the more specific.
    literal: usize,
}

impl Glob {
    fn new(p: &str) -> Result<Glob, String> {
        if p.is_empty() {
            return Err("an empty repository pattern".into());
        }
        let mut re = String::from("^");
        let mut literal = 0;
        let mut chars = p.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    // `a/**` matches `a` itself too, and everything below it.
                    if re.ends_with('/') && chars.peek().is_none() {
                        re.pop();
                        re.push_str("(/.*)?");
                    } else {
                        re.push_str(".*");
                    }
                }
                '*' => re.push_str("[^/]*"),
                '?' => re.push_str("[^/]"),
                c => {
                    literal += 1;
                    re.push_str(&regex::escape(&c.to_string()));
                }
            }
        }
        re.push('$');
        let re = Regex::new(&re).map_err(|e| format!("repository pattern {p:?}: {e}"))?;
        Ok(Glob { re, literal })
    }
}

/// Who asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    /// Authenticated with a password.
    User(String),
    /// Holding a verified bearer token (what it may do is in the token).
    Token(Box<super::token::Token>),
}

impl Identity {
    pub fn name(&self) -> &str {
        match self {
            Identity::Anonymous => "-",
            Identity::User(u) => u,
            Identity::Token(t) if t.sub.is_empty() => "-",
            Identity::Token(t) => &t.sub,
        }
    }
}

#[derive(Clone, Debug)]
struct Rule {
    globs: Vec<Glob>,
    /// `None`: an anonymous rule. Else users (`*`: any authenticated user) and groups.
    subjects: Option<(Vec<String>, Vec<String>)>,
    actions: BTreeSet<Action>,
}

/// The compiled access policy.
#[derive(Clone, Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    admins: BTreeSet<String>,
    /// user -> groups
    member_of: HashMap<String, BTreeSet<String>>,
    /// No `[[access]]` rule and no admin: authenticated users may do everything.
    open_to_users: bool,
}

impl Policy {
    pub fn new(c: &AccessConfig) -> Result<Policy, String> {
        let globs = |ps: &[String]| -> Result<Vec<Glob>, String> {
            if ps.is_empty() {
                return Err("a rule without repositories".into());
            }
            ps.iter().map(|p| Glob::new(p)).collect()
        };
        let mut rules = Vec::new();
        for r in &c.access {
            if r.users.is_empty() && r.groups.is_empty() {
                return Err(format!(
                    "an [[access]] rule for {:?} names no users or groups",
                    r.repositories
                ));
            }
            for g in &r.groups {
                if !c.groups.contains_key(g) {
                    return Err(format!("[[access]] names group {g:?}, not in [groups]"));
                }
            }
            rules.push(Rule {
                globs: globs(&r.repositories)?,
                subjects: Some((r.users.clone(), r.groups.clone())),
                actions: r.actions.iter().copied().collect(),
            });
        }
        for r in &c.anonymous {
            rules.push(Rule {
                globs: globs(&r.repositories)?,
                subjects: None,
                actions: r.actions.iter().copied().collect(),
            });
        }
        let mut member_of: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (g, users) in &c.groups {
            for u in users {
                member_of.entry(u.clone()).or_default().insert(g.clone());
            }
        }
        Ok(Policy {
            rules,
            admins: c.admins.iter().cloned().collect(),
            member_of,
            open_to_users: c.access.is_empty() && c.admins.is_empty(),
        })
    }

    pub fn is_admin(&self, who: &Identity) -> bool {
        match who {
            Identity::User(u) => self.open_to_users || self.admins.contains(u),
            _ => false,
        }
    }

    /// What `who` may do to `repo`.
    pub fn allowed(&self, who: &Identity, repo: &str) -> BTreeSet<Action> {
        if self.is_admin(who) {
            return Action::ALL.into_iter().collect();
        }
        let mut best: Option<usize> = None;
        let mut granted = BTreeSet::new();
        for rule in &self.rules {
            let Some(spec) = (rule.globs.iter())
                .filter(|g| g.re.is_match(repo))
                .map(|g| g.literal)
                .max()
            else {
                continue;
            };
            match best {
                Some(b) if spec < b => continue,
                Some(b) if spec == b => {}
                _ => {
                    best = Some(spec);
                    granted.clear();
                }
            }
            if self.applies(rule, who) {
                granted.extend(rule.actions.iter().copied());
            }
        }
        granted
    }

    fn applies(&self, rule: &Rule, who: &Identity) -> bool {
        let Some((users, groups)) = &rule.subjects else {
            return true; // anonymous grants hold for everyone
        };
        let Identity::User(u) = who else {
            return false;
        };
        users.iter().any(|x| x == "*" || x == u)
            || (self.member_of.get(u)).is_some_and(|gs| groups.iter().any(|g| gs.contains(g)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_text: &str) -> Policy {
        let c: AccessConfig = toml::from_str(toml_text).unwrap();
        Policy::new(&c).unwrap()
    }

    fn user(u: &str) -> Identity {
        Identity::User(u.into())
    }

    fn acts(p: &Policy, who: &Identity, repo: &str) -> Vec<&'static str> {
        p.allowed(who, repo)
            .into_iter()
            .map(Action::as_str)
            .collect()
    }

    #[test]
    fn globs() {
        let g = |p: &str, s: &str| Glob::new(p).unwrap().re.is_match(s);
        assert!(g("team/*", "team/app"));
        assert!(!g("team/*", "team/app/x"));
        assert!(g("team/**", "team/app/x"));
        assert!(g("team/**", "team"));
        assert!(!g("team/**", "teamx/app"));
        assert!(g("**", "a/b/c"));
        assert!(g("a?c", "abc"));
        assert!(!g("a?c", "a/c"));
        assert!(!g("a.c", "abc"), "dots are literal");
    }

    #[test]
    fn the_most_specific_rule_decides() {
        let p = policy(
            r#"
            admins = ["root"]
            [groups]
            devs = ["bob", "carol"]
            [[access]]
            repositories = ["team/**"]
            groups = ["devs"]
            actions = ["pull", "push"]
            [[access]]
            repositories = ["team/secret/**"]
            users = ["carol"]
            actions = ["pull"]
            [[access]]
            repositories = ["**"]
            users = ["*"]
            actions = ["pull"]
            [[anonymous]]
            repositories = ["public/*"]
            actions = ["pull"]
            "#,
        );
        assert_eq!(acts(&p, &user("bob"), "team/app"), ["pull", "push"]);
        assert_eq!(acts(&p, &user("carol"), "team/secret/x"), ["pull"]);
        assert!(
            acts(&p, &user("bob"), "team/secret/x").is_empty(),
            "narrower rule wins"
        );
        assert_eq!(acts(&p, &user("dave"), "other/x"), ["pull"]);
        assert_eq!(acts(&p, &Identity::Anonymous, "public/x"), ["pull"]);
        assert!(acts(&p, &Identity::Anonymous, "other/x").is_empty());
        assert!(acts(&p, &Identity::Anonymous, "public/x/y").is_empty());
        assert_eq!(
            acts(&p, &user("root"), "team/secret/x"),
            ["pull", "push", "delete"]
        );
        assert!(p.is_admin(&user("root")) && !p.is_admin(&user("bob")));
    }

    #[test]
    fn htpasswd_alone_lets_users_do_everything() {
        let p = policy("");
        assert_eq!(acts(&p, &user("x"), "a/b"), ["pull", "push", "delete"]);
        assert!(acts(&p, &Identity::Anonymous, "a/b").is_empty());
        let p = policy("[[anonymous]]\nrepositories = [\"**\"]\nactions = [\"pull\"]");
        assert_eq!(acts(&p, &Identity::Anonymous, "a/b"), ["pull"]);
        assert!(p.is_admin(&user("x")));
    }

    #[test]
    fn bad_rules_are_refused() {
        let bad = |t: &str| Policy::new(&toml::from_str::<AccessConfig>(t).unwrap()).is_err();
        assert!(bad(
            "[[access]]\nrepositories = [\"a\"]\nactions = [\"pull\"]"
        ));
        assert!(bad(
            "[[access]]\nrepositories = [\"a\"]\ngroups = [\"nope\"]\nactions = [\"pull\"]"
        ));
        assert!(bad(
            "[[access]]\nrepositories = []\nusers = [\"a\"]\nactions = [\"pull\"]"
        ));
        assert!(toml::from_str::<AccessConfig>(
            "[[access]]\nrepositories = [\"a\"]\nusers = [\"a\"]\nactions = [\"fly\"]"
        )
        .is_err());
    }
}
