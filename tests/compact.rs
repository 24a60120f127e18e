//! `stowage compact` and the data-directory lock, against the real binary.

mod common;

use std::process::Output;

use common::{pseudo_random, push_blob, stowage, Server};
use reqwest::blocking::Client;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A tar layer of 12 files; versions share most of their contents.
fn layer(version: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..12u64 {
        let mut data = pseudo_random(40_000 + 3_000 * i as usize, i);
        if i % 4 == 0 {
            data[100..108].copy_from_slice(&version.to_le_bytes());
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, format!("srv/app/file-{i}"), &data[..])
            .unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn compact_gives_back_free_pages_and_the_root_is_locked_while_in_use() {
    let root = tempfile::tempdir().unwrap();
    let c = Client::new();
    let layers: Vec<Vec<u8>> = (1..=8).map(layer).collect();
    let mut s = Server::start_at(root.path(), &["--dedup", "inline"]);
    let digests: Vec<String> = layers
        .iter()
        .map(|l| push_blob(&s, &c, "compact/app", l))
        .collect();

    // While the server runs, no other stowage process may use its directory.
    for args in [
        &["compact"][..],
        &["fsck"][..],
        &["serve", "--addr", "127.0.0.1:0"][..],
    ] {
        let o = stowage(args, root.path());
        assert!(!o.status.success(), "{args:?} ran beside the server");
        assert!(
            text(&o).contains("is in use by another stowage process (pid "),
            "{args:?}: {}",
            text(&o)
        );
    }
    assert!(s.stop());

    let data = root.path().join("meta/data.mdb");
    let before = std::fs::metadata(&data).unwrap().len();
    let o = stowage(&["compact"], root.path());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("given back"), "{}", text(&o));
    let after = std::fs::metadata(&data).unwrap().len();
    assert!(
        after < before,
        "compaction shrank nothing: {before} -> {after}"
    );
    assert!(!root.path().join("meta/data.mdb.compact").exists());

    // The compacted store serves every layer exactly and passes fsck.
    let mut s = Server::start_at(root.path(), &[]);
    for (l, d) in layers.iter().zip(&digests) {
        let got = c
            .get(s.url(&format!("/v2/compact/app/blobs/{d}")))
            .send()
            .unwrap()
            .bytes()
            .unwrap();
        assert!(got.as_ref() == l.as_slice(), "{d} differs after compaction");
    }
    assert!(s.stop());
    let o = stowage(&["fsck"], root.path());
    assert!(o.status.success(), "{}", text(&o));
}
