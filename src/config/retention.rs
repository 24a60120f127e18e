//! Retention policies: which tags and manifests of a repository are kept, and what garbage
//! collection may then reclaim (`[[retention]]` in the config file, `--retention` for the
//! simple cases). The shapes follow zot's `retention` and Harbor's tag-retention rules.
//!
//! A repository is governed by the first policy whose `repositories` glob matches it; a
//! repository matched by none keeps everything. Within a policy, a tag is kept when any keep
//! rule keeps it (`keep_tags` regexes, the N most recently pushed, those pushed within a
//! duration, the N most recently pulled, those pulled within a duration); a policy with no keep
//! rule keeps every tag. Untagged manifests older than `untagged_after` go, and referrers whose
//! subject is gone (unless `delete_orphan_referrers = false`). Index children and referrers of
//! a kept manifest are always kept.

use std::time::Duration;

use serde::Deserialize;

/// A tag pattern: a regex matched against the whole tag.
#[derive(Clone, Debug)]
pub struct TagPattern {
    source: String,
    re: regex::Regex,
}

impl TagPattern {
    pub fn new(source: &str) -> Result<TagPattern, String> {
        let re = regex::Regex::new(&format!("^(?:{source})$"))
            .map_err(|e| format!("tag pattern {source:?}: {e}"))?;
        Ok(TagPattern {
            source: source.to_string(),
            re,
        })
    }

    pub fn is_match(&self, tag: &str) -> bool {
        self.re.is_match(tag)
    }
}

impl PartialEq for TagPattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl<'de> Deserialize<'de> for TagPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TagPattern::new(&s).map_err(serde::de::Error::custom)
    }
}

fn yes() -> bool {
    true
}

/// One retention policy (`[[retention]]`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Repository name pattern; `*` matches any run of characters (`/` included).
    pub repositories: String,
    /// Tags matching any of these regexes (whole tag) are kept.
    #[serde(default)]
    pub keep_tags: Vec<TagPattern>,
    /// The N most recently pushed tags are kept.
    pub keep_last_pushed: Option<usize>,
    /// Tags pushed within this duration are kept.
    #[serde(default, with = "humantime_serde")]
    pub keep_pushed_within: Option<Duration>,
    /// The N most recently pulled tags are kept (tags never pulled do not count).
    pub keep_last_pulled: Option<usize>,
    /// Tags pulled within this duration are kept.
    #[serde(default, with = "humantime_serde")]
    pub keep_pulled_within: Option<Duration>,
    /// Untagged manifests (not index children or referrers of kept ones) older than this are
    /// deleted; unset: untagged manifests stay (those whose tags this policy deletes go).
    #[serde(default, with = "humantime_serde")]
    pub untagged_after: Option<Duration>,
    /// Delete referrers whose subject manifest is gone from the repository.
    #[serde(default = "yes")]
    pub delete_orphan_referrers: bool,
}

impl RetentionPolicy {
    /// Whether any rule keeps tags (without one, every tag is kept).
    pub fn has_tag_rules(&self) -> bool {
        !self.keep_tags.is_empty()
            || self.keep_last_pushed.is_some()
            || self.keep_pushed_within.is_some()
            || self.keep_last_pulled.is_some()
            || self.keep_pulled_within.is_some()
    }

    pub fn matches(&self, repo: &str) -> bool {
        super::glob_match(self.repositories.as_bytes(), repo.as_bytes())
    }

    /// `PATTERN=RULE[,RULE...]`, rules: `keep-last:N`, `keep-within:DUR`,
    /// `keep-pulled-last:N`, `keep-pulled-within:DUR`, `keep-tags:REGEX`, `untagged:DUR`,
    /// `keep-orphan-referrers`.
    pub fn parse(s: &str) -> Result<RetentionPolicy, String> {
        let (pattern, rules) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected PATTERN=RULE[,RULE...]"))?;
        if pattern.is_empty() {
            return Err("empty repository pattern".into());
        }
        let mut p = RetentionPolicy {
            repositories: pattern.to_string(),
            keep_tags: Vec::new(),
            keep_last_pushed: None,
            keep_pushed_within: None,
            keep_last_pulled: None,
            keep_pulled_within: None,
            untagged_after: None,
            delete_orphan_referrers: true,
        };
        let dur = |v: &str| humantime::parse_duration(v).map_err(|e| format!("{v:?}: {e}"));
        let count = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{v:?}: expected a number"))
        };
        for rule in rules.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (name, value) = rule.split_once(':').unwrap_or((rule, ""));
            match name {
                "keep-last" => p.keep_last_pushed = Some(count(value)?),
                "keep-within" => p.keep_pushed_within = Some(dur(value)?),
                "keep-pulled-last" => p.keep_last_pulled = Some(count(value)?),
                "keep-pulled-within" => p.keep_pulled_within = Some(dur(value)?),
                "keep-tags" => p.keep_tags.push(TagPattern::new(value)?),
                "untagged" => p.untagged_after = Some(dur(value)?),
                "keep-orphan-referrers" => p.delete_orphan_referrers = false,
                other => {
                    return Err(format!(
                        "{other:?}: rules are keep-last:N, keep-within:DUR, keep-pulled-last:N, \
                         keep-pulled-within:DUR, keep-tags:REGEX, untagged:DUR, \
                         keep-orphan-referrers"
                    ))
                }
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorthand_and_toml_forms() {
        let p = RetentionPolicy::parse("ci/*=keep-last:3,keep-tags:v[0-9]+|latest,untagged:2h")
            .unwrap();
        assert_eq!(p.keep_last_pushed, Some(3));
        assert_eq!(p.untagged_after, Some(Duration::from_secs(7200)));
        assert!(p.keep_tags[0].is_match("v12") && p.keep_tags[0].is_match("latest"));
        assert!(
            !p.keep_tags[0].is_match("v12-rc"),
            "the whole tag must match"
        );
        assert!(p.matches("ci/app") && !p.matches("prod/app"));
        assert!(p.delete_orphan_referrers && p.has_tag_rules());
        let q = RetentionPolicy::parse("*=untagged:0s,keep-orphan-referrers").unwrap();
        assert!(!q.has_tag_rules() && !q.delete_orphan_referrers);
        for bad in [
            "x",
            "=keep-last:1",
            "x=keep-last:many",
            "x=keep-within:soon",
            "x=keep-tags:(",
            "x=forever",
        ] {
            assert!(RetentionPolicy::parse(bad).is_err(), "{bad}");
        }
        let t: RetentionPolicy = toml::from_str(
            "repositories = \"ci/*\"\nkeep_tags = [\"release-.*\"]\nkeep_last_pulled = 2\n\
             keep_pulled_within = \"7d\"\n",
        )
        .unwrap();
        assert_eq!(t.keep_last_pulled, Some(2));
        assert_eq!(t.keep_pulled_within, Some(Duration::from_secs(7 * 86400)));
        assert!(
            toml::from_str::<RetentionPolicy>("repositories = \"x\"\nkeep_tags = [\"(\"]\n")
                .is_err()
        );
    }
}
