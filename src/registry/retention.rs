//! Applying the retention policies (see `config::retention`): a plan is computed from one read
//! transaction (tags with their push and pull times, manifest links, manifest bodies for index
//! children and subjects), then applied per repository in one write transaction that checks
//! each step again, so a tag pushed or moved since the plan was made is never deleted. A dry
//! run returns the plan without applying it.
//!
//! Pull times by tag are gathered in memory on every manifest GET by tag and written in
//! batches (every minute, before each collection and at shutdown), never one write per GET.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::{blocking, manifest, Registry};
use crate::config::RetentionPolicy;
use crate::error::Result;
use crate::meta::{now, Meta, TagEntry};
use crate::names::{Digest, RepoName, Tag};

/// What retention deleted (or, in a dry run, would delete).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RetentionReport {
    pub tags_deleted: u64,
    pub manifests_deleted: u64,
    /// Per policy (its repository pattern): tags and manifests deleted.
    pub by_policy: BTreeMap<String, PolicyDeletions>,
    /// `repo:tag` and `repo@digest` of what went, the first [`LISTED`].
    pub deleted: Vec<String>,
    /// In a dry run, every manifest that would go (for the rest of the pass to count what
    /// it would free).
    #[serde(skip)]
    pub planned: HashSet<(RepoName, Digest)>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PolicyDeletions {
    pub tags: u64,
    pub manifests: u64,
}

/// Entries listed by name in a report.
pub const LISTED: usize = 1000;

/// What one repository's policy decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RepoPlan {
    pub tags: Vec<(String, Digest)>,
    pub manifests: Vec<Digest>,
}

/// One manifest as retention sees it.
pub(crate) struct ManifestInfo {
    /// Unix seconds it was linked into the repository.
    pub linked: u64,
    pub children: Vec<Digest>,
    pub subject: Option<Digest>,
}

/// The tags and manifests `policy` deletes from a repository holding `tags` and `manifests`,
/// at time `now`; referrers whose subject is gone are deleted only once `grace` old.
pub(crate) fn plan_repo(
    policy: &RetentionPolicy,
    tags: &[TagEntry],
    manifests: &HashMap<Digest, ManifestInfo>,
    now: u64,
    grace: u64,
) -> RepoPlan {
    let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs());
    // Tags.
    let mut kept: HashSet<&str> = HashSet::new();
    if policy.has_tag_rules() {
        for t in tags {
            if policy.keep_tags.iter().any(|p| p.is_match(&t.tag))
                || secs(policy.keep_pushed_within).is_some_and(|w| t.pushed + w >= now)
                || secs(policy.keep_pulled_within)
                    .is_some_and(|w| t.pulled > 0 && t.pulled + w >= now)
            {
                kept.insert(&t.tag);
            }
        }
        let mut by_push: Vec<&TagEntry> = tags.iter().collect();
        by_push.sort_by(|a, b| b.pushed.cmp(&a.pushed).then_with(|| b.tag.cmp(&a.tag)));
        for t in by_push.iter().take(policy.keep_last_pushed.unwrap_or(0)) {
            kept.insert(&t.tag);
        }
        let mut by_pull: Vec<&TagEntry> = tags.iter().filter(|t| t.pulled > 0).collect();
        by_pull.sort_by(|a, b| b.pulled.cmp(&a.pulled).then_with(|| b.tag.cmp(&a.tag)));
        for t in by_pull.iter().take(policy.keep_last_pulled.unwrap_or(0)) {
            kept.insert(&t.tag);
        }
    } else {
        kept.extend(tags.iter().map(|t| t.tag.as_str()));
    }
    let mut plan = RepoPlan::default();
    for t in tags {
        if !kept.contains(t.tag.as_str()) {
            plan.tags.push((t.tag.clone(), t.digest.clone()));
        }
    }
    // Manifests: the roots are those a kept tag names; index children and referrers of a kept
    // manifest are kept with it.
    let still_tagged: HashSet<&Digest> = tags
        .iter()
        .filter(|t| kept.contains(t.tag.as_str()))
        .map(|t| &t.digest)
        .collect();
    let untagged_now: HashSet<&Digest> = tags
        .iter()
        .filter(|t| !kept.contains(t.tag.as_str()))
        .map(|t| &t.digest)
        .filter(|d| !still_tagged.contains(d))
        .collect();
    let mut keep: HashSet<&Digest> = HashSet::new();
    for (d, m) in manifests {
        let young_untagged = !still_tagged.contains(d)
            && !untagged_now.contains(d)
            && m.subject.is_none()
            && policy
                .untagged_after
                .is_none_or(|a| m.linked + a.as_secs() > now);
        if still_tagged.contains(d) || young_untagged {
            keep.insert(d);
        }
        // A referrer is kept unless its subject goes: decided below.
    }
    let mut referrers: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
    for (d, m) in manifests {
        if let Some(s) = &m.subject {
            referrers.entry(s).or_default().push(d);
        }
    }
    // Close over children and referrers.
    let mut stack: Vec<&Digest> = keep.iter().copied().collect();
    while let Some(d) = stack.pop() {
        let Some(m) = manifests.get(d) else { continue };
        for c in m
            .children
            .iter()
            .chain(referrers.get(d).into_iter().flatten().copied())
        {
            if manifests.contains_key(c) && keep.insert(c) {
                stack.push(c);
            }
        }
    }
    for (d, m) in manifests {
        if keep.contains(d) {
            continue;
        }
        let goes = match &m.subject {
            // A referrer whose subject is gone (or goes now), once past the grace period.
            Some(s) => {
                policy.delete_orphan_referrers && !keep.contains(s) && m.linked + grace <= now
            }
            // An image whose tags this pass deletes, or an untagged one old enough.
            None => true,
        };
        if goes {
            plan.manifests.push(d.clone());
        }
    }
    plan.tags.sort();
    plan.manifests.sort_by_key(|d| d.to_string());
    plan
}

fn policy_for<'a>(policies: &'a [RetentionPolicy], repo: &RepoName) -> Option<&'a RetentionPolicy> {
    policies.iter().find(|p| p.matches(repo.as_str()))
}

/// What retention sees of `repo`'s manifests.
fn manifest_infos(
    m: &Meta,
    t: &heed::RoTxn<'_>,
    repo: &RepoName,
) -> Result<HashMap<Digest, ManifestInfo>> {
    let mut out = HashMap::new();
    for (d, link) in m.manifest_links_of(t, repo)? {
        let children = match m.manifest(t, &d)? {
            Some((rec, body)) => manifest::parse(Some(&rec.media_type), &body)
                .map(|p| p.children)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        out.insert(
            d,
            ManifestInfo {
                linked: link.created,
                children,
                subject: link.subject,
            },
        );
    }
    Ok(out)
}

impl Registry {
    /// Record a pull of `repo:tag` (written in the next batch).
    pub(crate) fn note_pull(&self, repo: &RepoName, tag: &Tag) {
        if self.inner.cfg.retention.is_empty() {
            return;
        }
        self.inner
            .pulls
            .lock()
            .expect("pull times lock")
            .insert((repo.clone(), tag.clone()), now());
    }

    /// Write the pull times gathered since the last batch, in one transaction.
    pub async fn flush_pull_times(&self) -> Result<()> {
        let batch: Vec<(RepoName, Tag, u64)> = {
            let mut p = self.inner.pulls.lock().expect("pull times lock");
            p.drain().map(|((r, t), at)| (r, t, at)).collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        let inner = self.inner.clone();
        blocking(move || {
            // Lazy: pull times go to the journal with the next durable commit.
            let mut w = inner.meta.write_lazy()?;
            inner.meta.record_pulls(&mut w, &batch)?;
            w.commit()?;
            Ok(())
        })
        .await
    }

    /// Apply the retention policies (or, with `dry_run`, only say what they would delete).
    pub(crate) async fn apply_retention(&self, dry_run: bool) -> Result<RetentionReport> {
        if self.inner.cfg.retention.is_empty() {
            return Ok(RetentionReport::default());
        }
        self.flush_pull_times().await?;
        let inner = self.inner.clone();
        blocking(move || {
            let m = &inner.meta;
            let policies = &inner.cfg.retention;
            let grace = inner.cfg.gc_delay.as_secs();
            let mut plans = Vec::new();
            {
                let t = m.read()?;
                let now = now();
                for repo in m.all_repos(&t)? {
                    let Some(policy) = policy_for(policies, &repo) else {
                        continue;
                    };
                    let tags = m.tag_entries(&t, &repo)?;
                    let infos = manifest_infos(m, &t, &repo)?;
                    let plan = plan_repo(policy, &tags, &infos, now, grace);
                    if plan != RepoPlan::default() {
                        plans.push((repo, policy.repositories.clone(), plan));
                    }
                }
            }
            let mut report = RetentionReport::default();
            for (repo, policy, plan) in plans {
                let (mut tags_done, mut manifests_done) = (Vec::new(), Vec::new());
                if dry_run {
                    tags_done = plan.tags.iter().map(|(t, _)| t.clone()).collect();
                    manifests_done = plan.manifests.clone();
                    report
                        .planned
                        .extend(plan.manifests.iter().map(|d| (repo.clone(), d.clone())));
                } else {
                    let mut w = m.write()?;
                    for (tag, digest) in &plan.tags {
                        let Ok(tag_name) = tag.parse::<Tag>() else {
                            continue;
                        };
                        // Moved or pushed again since the plan: kept.
                        if m.tag(&w, &repo, &tag_name)?.as_ref() != Some(digest) {
                            continue;
                        }
                        if m.delete_tag(&mut w, &repo, &tag_name)? {
                            tags_done.push(tag.clone());
                        }
                    }
                    let tagged: HashSet<Digest> = m
                        .tag_entries(&w, &repo)?
                        .into_iter()
                        .map(|t| t.digest)
                        .collect();
                    for d in &plan.manifests {
                        if tagged.contains(d) {
                            continue; // tagged again since the plan
                        }
                        if m.unlink_manifest(&mut w, &repo, d)? {
                            manifests_done.push(d.clone());
                        }
                    }
                    w.commit()?;
                }
                let e = report.by_policy.entry(policy).or_default();
                e.tags += tags_done.len() as u64;
                e.manifests += manifests_done.len() as u64;
                report.tags_deleted += tags_done.len() as u64;
                report.manifests_deleted += manifests_done.len() as u64;
                for t in tags_done {
                    if report.deleted.len() < LISTED {
                        report.deleted.push(format!("{repo}:{t}"));
                    }
                }
                for d in manifests_done {
                    if report.deleted.len() < LISTED {
                        report.deleted.push(format!("{repo}@{d}"));
                    }
                }
            }
            if !dry_run && report.tags_deleted + report.manifests_deleted > 0 {
                tracing::info!(
                    tags = report.tags_deleted,
                    manifests = report.manifests_deleted,
                    "retention applied"
                );
            }
            Ok(report)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn tag(name: &str, n: u8, pushed: u64, pulled: u64) -> TagEntry {
        TagEntry {
            tag: name.into(),
            digest: d(n),
            pushed,
            pulled,
        }
    }

    fn image(linked: u64) -> ManifestInfo {
        ManifestInfo {
            linked,
            children: vec![],
            subject: None,
        }
    }

    fn names(p: &RepoPlan) -> (Vec<&str>, Vec<Digest>) {
        (
            p.tags.iter().map(|(t, _)| t.as_str()).collect(),
            p.manifests.clone(),
        )
    }

    const NOW: u64 = 1_000_000;

    #[test]
    fn the_first_matching_policy_governs_and_unmatched_repositories_keep_everything() {
        let ps = vec![
            RetentionPolicy::parse("ci/release/*=keep-tags:.*").unwrap(),
            RetentionPolicy::parse("ci/*=keep-last:1").unwrap(),
        ];
        let governing =
            |r: &str| policy_for(&ps, &r.parse().unwrap()).map(|p| p.repositories.clone());
        assert_eq!(governing("ci/release/app").as_deref(), Some("ci/release/*"));
        assert_eq!(governing("ci/app").as_deref(), Some("ci/*"));
        assert_eq!(governing("prod/app"), None);
    }

    #[test]
    fn every_keep_rule_and_their_union() {
        let tags = vec![
            tag("v1", 1, NOW - 500, 0),
            tag("v2", 2, NOW - 400, NOW - 10),
            tag("v3", 3, NOW - 300, 0),
            tag("v4", 4, NOW - 200, NOW - 300),
            tag("release-1", 5, NOW - 1000, 0),
        ];
        let infos: HashMap<Digest, ManifestInfo> =
            (1..=5).map(|n| (d(n), image(NOW - 1000))).collect();
        let run = |spec: &str| {
            let p = RetentionPolicy::parse(spec).unwrap();
            let mut plan = plan_repo(&p, &tags, &infos, NOW, 0);
            plan.tags.sort();
            names(&plan)
                .0
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(run("*=keep-last:2"), ["release-1", "v1", "v2"]);
        assert_eq!(run("*=keep-within:350s"), ["release-1", "v1", "v2"]);
        assert_eq!(run("*=keep-pulled-last:1"), ["release-1", "v1", "v3", "v4"]);
        assert_eq!(
            run("*=keep-pulled-within:100s"),
            ["release-1", "v1", "v3", "v4"]
        );
        assert_eq!(run("*=keep-tags:release-.*"), ["v1", "v2", "v3", "v4"]);
        assert_eq!(
            run("*=keep-last:1,keep-tags:release-.*,keep-pulled-last:1"),
            ["v1", "v3"],
            "a tag any rule keeps is kept"
        );
        assert!(
            run("*=untagged:1h").is_empty(),
            "no keep rule: every tag kept"
        );
    }

    #[test]
    fn manifests_follow_their_tags_and_untagged_ones_their_delay() {
        let tags = vec![
            tag("old", 1, NOW - 500, 0),
            tag("new", 2, NOW - 100, 0),
            tag("alias", 2, NOW - 50, 0),
        ];
        let mut infos: HashMap<Digest, ManifestInfo> = HashMap::new();
        infos.insert(d(1), image(NOW - 500));
        infos.insert(d(2), image(NOW - 100));
        infos.insert(d(3), image(NOW - 7200)); // untagged, old
        infos.insert(d(4), image(NOW - 60)); // untagged, young
        let p = RetentionPolicy::parse("*=keep-last:1").unwrap();
        let plan = plan_repo(&p, &tags, &infos, NOW, 0);
        // "alias" goes, but its manifest is still tagged "new".
        assert_eq!(names(&plan), (vec!["new", "old"], vec![d(1)]));
        let p = RetentionPolicy::parse("*=keep-last:2,untagged:1h").unwrap();
        let plan = plan_repo(&p, &tags, &infos, NOW, 0);
        let mut expect = vec![d(1), d(3)];
        expect.sort_by_key(|d| d.to_string());
        assert_eq!(names(&plan), (vec!["old"], expect));
    }

    #[test]
    fn index_children_and_referrers_of_kept_manifests_stay() {
        let tags = vec![tag("multi", 1, NOW - 10, 0), tag("gone", 5, NOW - 900, 0)];
        let mut infos: HashMap<Digest, ManifestInfo> = HashMap::new();
        infos.insert(
            d(1),
            ManifestInfo {
                linked: NOW - 7200,
                children: vec![d(2), d(3)],
                subject: None,
            },
        );
        infos.insert(d(2), image(NOW - 7200));
        infos.insert(d(3), image(NOW - 7200));
        // A signature of the index, and one of the image that goes.
        let sig = |subject: u8| ManifestInfo {
            linked: NOW - 7200,
            children: vec![],
            subject: Some(d(subject)),
        };
        infos.insert(d(4), sig(1));
        infos.insert(d(5), image(NOW - 900));
        infos.insert(d(6), sig(5));
        // A referrer whose subject never arrived, young and old.
        infos.insert(
            d(7),
            ManifestInfo {
                linked: NOW - 10,
                ..sig(9)
            },
        );
        infos.insert(d(8), sig(9));
        let p = RetentionPolicy::parse("*=keep-last:1,untagged:0s").unwrap();
        let plan = plan_repo(&p, &tags, &infos, NOW, 3600);
        let mut expect = vec![d(5), d(6), d(8)];
        expect.sort_by_key(|d| d.to_string());
        assert_eq!(names(&plan), (vec!["gone"], expect));
        let p = RetentionPolicy::parse("*=keep-last:1,untagged:0s,keep-orphan-referrers").unwrap();
        let plan = plan_repo(&p, &tags, &infos, NOW, 3600);
        assert_eq!(names(&plan), (vec!["gone"], vec![d(5)]));
    }
}
