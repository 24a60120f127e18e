//! The object-storage interface ([`Bucket`]) against both of its backends — a local directory
//! and a real Garage server over S3 — with the same checks: whole and ranged reads, atomic
//! puts, conditional creates racing, multipart uploads, listing, batched deletes, request
//! counting, and clean, bounded errors while the object store is down.

mod common;

use std::time::{Duration, Instant};

use common::garage::Garage;
use common::{pseudo_random, sha256_hex};
use stowage_actors::storage::{Bucket, Created, Location, Op, S3Options, StorageError};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `enforced`: whether the store enforces conditional creates (Garage 2.5 does not).
async fn contract(b: &Bucket, scratch: &std::path::Path, enforced: bool) {
    // Missing objects.
    assert!(matches!(
        b.get("nothing/here").await,
        Err(StorageError::NotFound(_))
    ));
    assert_eq!(b.head("nothing/here").await.unwrap(), None);

    // Whole and ranged reads; a put replaces.
    let data = pseudo_random(100_000, 1);
    b.put("blobs/a", data.clone().into()).await.unwrap();
    assert_eq!(b.head("blobs/a").await.unwrap(), Some(100_000));
    assert_eq!(b.get("blobs/a").await.unwrap(), data);
    assert_eq!(
        b.get_range("blobs/a", 1000..1010).await.unwrap(),
        data[1000..1010]
    );
    b.put("blobs/a", "replaced".into()).await.unwrap();
    assert_eq!(b.get("blobs/a").await.unwrap(), "replaced");

    // A conditional create, where the store enforces it: once, and of many racing writers
    // exactly one wins. Where it does not, a create still writes.
    assert_eq!(b.enforces_create().await.unwrap(), enforced);
    assert!(
        b.list("probe").await.unwrap().is_empty(),
        "the probe cleans up"
    );
    let first = b.create("leases/x", "first".into()).await.unwrap();
    assert_eq!(first, Created::New);
    if enforced {
        let second = b.create("leases/x", "second".into()).await.unwrap();
        assert_eq!(second, Created::Existed);
        assert_eq!(b.get("leases/x").await.unwrap(), "first");
        let racers: Vec<_> = (0..8)
            .map(|i| b.create("leases/race", format!("writer {i}").into()))
            .collect();
        let won = futures_util::future::join_all(racers)
            .await
            .into_iter()
            .filter(|c| *c.as_ref().unwrap() == Created::New)
            .count();
        assert_eq!(won, 1, "exactly one of the racing creates wins");
    }

    // A multipart upload (three parts) reads back whole and across part boundaries.
    let big = pseudo_random(40 * 1024 * 1024 + 12345, 2);
    let path = scratch.join("big");
    std::fs::write(&path, &big).unwrap();
    assert_eq!(
        b.put_file("containers/big", &path).await.unwrap(),
        big.len() as u64
    );
    assert_eq!(
        sha256_hex(&b.get("containers/big").await.unwrap()),
        sha256_hex(&big)
    );
    let edge = 16 * 1024 * 1024u64;
    assert_eq!(
        b.get_range("containers/big", edge - 5..edge + 5)
            .await
            .unwrap(),
        big[edge as usize - 5..edge as usize + 5]
    );
    let small = scratch.join("small");
    std::fs::write(&small, b"tiny").unwrap();
    assert_eq!(b.put_file("containers/small", &small).await.unwrap(), 4);

    // Listing under a prefix, and deleting in batches (missing keys are fine).
    let keys: Vec<String> = (0..1100).map(|i| format!("many/{i:05}")).collect();
    {
        use futures_util::stream::{StreamExt, TryStreamExt};
        futures_util::stream::iter(&keys)
            .map(|k| b.put(k, k.clone().into_bytes().into()))
            .buffer_unordered(64)
            .try_collect::<Vec<()>>()
            .await
            .unwrap();
    }
    let mut listed: Vec<String> = b
        .list("many")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    listed.sort();
    assert_eq!(listed, keys);
    let listed = b.list("containers").await.unwrap();
    assert!(
        listed
            .iter()
            .any(|l| l.key == "containers/big" && l.size == big.len() as u64),
        "{listed:?}"
    );
    let mut gone = keys.clone();
    gone.push("many/never-was".into());
    assert_eq!(b.delete(&gone).await.unwrap(), gone.len());
    assert!(b.list("many").await.unwrap().is_empty());

    // Every request counted.
    let gets = b.stats().read(Op::Get);
    assert!(
        gets.requests >= 6 && gets.bytes >= big.len() as u64,
        "{gets:?}"
    );
    assert!(b.stats().read(Op::UploadPart).requests >= 3);
    assert!(
        b.stats().read(Op::Delete).requests >= 2,
        "1,101 keys take two batches"
    );
}

#[test]
fn local_directory_backend() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bucket::open(
        &Location::parse(dir.path().join("store").to_str().unwrap()).unwrap(),
        &S3Options::default(),
    )
    .unwrap();
    assert_eq!(b.kind(), "local");
    runtime().block_on(contract(&b, dir.path(), true));
}

#[test]
fn s3_backend_on_garage() {
    let g = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let b = g.bucket("contract", None);
    assert_eq!(b.kind(), "s3");
    // Garage 2.5 ignores `If-None-Match` on PUT (its S3 API reads it on GET only).
    runtime().block_on(contract(&b, dir.path(), false));
    let requests: u64 = Op::ALL.iter().map(|op| b.stats().read(*op).requests).sum();
    assert!(
        b.attempts() >= requests,
        "every request is at least one HTTP attempt"
    );

    // Another prefix sees none of it.
    let other = g.bucket("elsewhere", None);
    runtime().block_on(async {
        assert_eq!(other.head("blobs/a").await.unwrap(), None);
        assert!(other.list("containers").await.unwrap().is_empty());
    });
}

/// With the object store down, requests fail with an error within the configured time (after
/// retrying), and work again once it is back.
#[test]
fn s3_errors_are_clean_and_bounded_while_garage_is_down() {
    let mut g = Garage::start();
    let b = g.bucket("faults", Some(Duration::from_secs(3)));
    let rt = runtime();
    rt.block_on(b.put("k", "v".into())).unwrap();
    g.stop();
    let start = Instant::now();
    let err = rt.block_on(b.get("k")).unwrap_err();
    assert!(matches!(err, StorageError::Store("get", _)), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    assert!(b.stats().read(Op::Get).failures >= 1);
    assert!(
        b.attempts() > b.stats().read(Op::Put).requests + b.stats().read(Op::Get).requests,
        "the failed GET was retried"
    );
    g.restart();
    assert_eq!(rt.block_on(b.get("k")).unwrap(), "v");
}

#[test]
fn locations_parse() {
    assert_eq!(
        Location::parse("s3://my-bucket/a/b/").unwrap(),
        Location::S3 {
            bucket: "my-bucket".into(),
            prefix: "a/b".into()
        }
    );
    assert_eq!(
        Location::parse("s3://my-bucket").unwrap(),
        Location::S3 {
            bucket: "my-bucket".into(),
            prefix: "".into()
        }
    );
    assert_eq!(
        Location::parse("/var/lib/x").unwrap(),
        Location::Local("/var/lib/x".into())
    );
    assert_eq!(
        Location::parse("file:///var/lib/x").unwrap(),
        Location::Local("/var/lib/x".into())
    );
    for bad in ["s3://UPPER", "s3://ab", "gs://bucket", ""] {
        assert!(Location::parse(bad).is_err(), "{bad}");
    }
}
