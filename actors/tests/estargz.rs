//! eStargz layers as the real writer makes them, through ingest (decompress, identify the
//! encoder member by member) and restore (re-encode), bit for bit: blobs written by
//! `tests/go/estargzwrite`, built at test time against Debian's
//! golang-github-containerd-stargz-snapshotter-dev (what nerdctl, ctr-remote and BuildKit's
//! `compression=estargz` use), from tars of this machine's files. An eStargz blob is a gzip
//! member per file payload chunk (tar headers in the member before), the TOC member
//! (`stargz.index.json`) and a 51-byte empty footer member whose Extra field holds the TOC's
//! offset, all written by Go's compress/gzip (BestCompression unless told otherwise). Lazy
//! readers fetch the footer first, then the TOC, then single members: those ranges resume at
//! the member they start in.

mod common;
use common::{estargzwrite, run_gzwrite};

use std::path::{Path, PathBuf};
use std::time::Instant;

use stowage_actors::engine::recompress::{Compression, Encoding, LayerDecoder, Reencoder};

/// A tar of what lies under `dirs` (directories, symlinks, regular files; depth first,
/// sorted), stopping once `limit` bytes of file data are in.
fn layer(dirs: &[&str], limit: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    // The directories above, as a layer has them (eStargz's prioritized files need them).
    let mut above: Vec<&Path> = dirs
        .iter()
        .flat_map(|d| Path::new(d).ancestors().skip(1))
        .collect();
    above.sort();
    above.dedup();
    for p in above.into_iter().filter(|p| p.parent().is_some()) {
        b.append_path_with_name(p, p.strip_prefix("/").unwrap())
            .unwrap();
    }
    let mut data = 0usize;
    let mut stack: Vec<PathBuf> = dirs.iter().rev().map(PathBuf::from).collect();
    while let Some(p) = stack.pop() {
        if data >= limit {
            break;
        }
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let name = p.strip_prefix("/").unwrap();
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&p)
                .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            entries.sort();
            entries.reverse();
            stack.extend(entries);
        } else if !(meta.is_file() || meta.file_type().is_symlink()) {
            continue;
        } else if meta.is_file() {
            data += meta.len() as usize;
        }
        b.append_path_with_name(&p, name).unwrap();
    }
    b.into_inner().unwrap()
}

fn docs(limit: usize) -> Vec<u8> {
    layer(&["/usr/share/doc"], limit)
}

/// Shared libraries: large files, cut into chunks of their own members.
fn libs(limit: usize) -> Vec<u8> {
    layer(&["/usr/lib/x86_64-linux-gnu"], limit)
}

fn estargz(bin: &Path, args: &[&str], procs: Option<usize>, tar: &[u8]) -> Vec<u8> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    run_gzwrite(bin, &args, procs, tar)
}

/// Ingest: inflate while identifying each member's encoder; an error means the layer would
/// be kept raw.
fn ingest(name: &str, blob: &[u8]) -> (Encoding, Vec<u8>) {
    let mut d = LayerDecoder::new(Compression::detect(blob));
    let mut raw = Vec::new();
    for part in blob.chunks(100_003) {
        d.feed(part, &mut |b| raw.extend_from_slice(b))
            .unwrap_or_else(|e| panic!("{name}: kept raw: {e}"));
    }
    let enc = d
        .finish()
        .unwrap_or_else(|e| panic!("{name}: kept raw: {e}"));
    (enc, raw)
}

fn restore(enc: &Encoding, raw: &[u8]) -> Vec<u8> {
    let mut r = Reencoder::new(enc);
    let mut out = Vec::new();
    for part in raw.chunks(70_001) {
        r.push(part, &mut out);
    }
    r.finish(&mut out);
    out
}

/// The blob is stored deduplicated (not raw) as `label`, restores bit for bit, and has the
/// eStargz shape: many members, the last the 51-byte footer with the `SG` Extra subfield.
fn assert_exact(name: &str, blob: &[u8], label: &str) -> (Encoding, Vec<u8>) {
    let (enc, raw) = ingest(name, blob);
    assert_eq!(enc.label(), label, "{name}");
    let Encoding::Gzip { members, trailing } = &enc else {
        panic!("{name}: {enc:?}")
    };
    assert!(
        trailing.is_empty(),
        "{name}: {} trailing bytes",
        trailing.len()
    );
    assert!(members.len() > 3, "{name}: {} members", members.len());
    let footer = members.last().unwrap();
    assert_eq!((footer.raw_len, footer.header.len()), (0, 38), "{name}");
    assert_eq!(&footer.header[12..14], b"SG", "{name}: footer");
    assert!(&blob[blob.len() - 51..blob.len() - 13] == footer.header.as_slice());
    let out = restore(&enc, &raw);
    if out != blob {
        let at = out.iter().zip(blob).position(|(a, b)| a != b);
        panic!(
            "{name}: re-encoded {} bytes vs {}, first difference at {at:?}",
            out.len(),
            blob.len()
        );
    }
    (enc, raw)
}

/// estargz.Build with its defaults (BestCompression, 4 MiB chunks), as `nerdctl image convert
/// --estargz` calls it, on documentation and on shared libraries; timed against the writer.
#[test]
fn build_with_defaults_round_trips() {
    let Some(bin) = estargzwrite() else { return };
    for (name, tar) in [("docs", docs(16 << 20)), ("libs", libs(24 << 20))] {
        let t = Instant::now();
        let blob = estargz(bin, &[], None, &tar);
        let written = t.elapsed();
        let (enc, raw) = assert_exact(name, &blob, "gzip-go-9");
        let t = Instant::now();
        let restored = restore(&enc, &raw);
        let took = t.elapsed();
        assert!(restored == blob);
        let Encoding::Gzip { members, .. } = &enc else {
            unreachable!()
        };
        eprintln!(
            "{name}: tar {} bytes, eStargz {} bytes in {} members; the Go writer took {written:.2?} \
             (GOMAXPROCS parts in parallel), stowage's restore {took:.2?}",
            tar.len(),
            blob.len(),
            members.len(),
        );
        // The plaintext is the input's entries (re-written by Go's tar) plus the TOC entry.
        assert!(
            raw.len() > tar.len() / 2,
            "{name}: {} plaintext bytes",
            raw.len()
        );
        assert!(
            raw.windows(17).any(|w| w == b"stargz.index.json"),
            "{name}: the TOC entry"
        );
    }
}

/// Other compression levels and chunk sizes: each member is identified on its own.
#[test]
fn build_levels_and_chunk_sizes_round_trip() {
    let Some(bin) = estargzwrite() else { return };
    let tar = libs(6 << 20);
    for (args, label) in [
        (&["-level", "1"][..], "gzip-go-1"),
        (&["-level", "6", "-chunk", "65536"][..], "gzip-go-6"),
        (&["-level", "5", "-chunk", "1000000"][..], "gzip-go-5"),
        (&["-level", "0"][..], "gzip-go-0"),
        (&["-chunk", "4096"][..], "gzip-go-9"),
    ] {
        let blob = estargz(bin, args, None, &tar);
        assert_exact(&format!("{args:?}"), &blob, label);
    }
}

/// The other ways tools drive the package: one Writer over the whole tar (AppendTar), and
/// BuildKit's lossless append that keeps the input tar's bytes; Build on one thread (it
/// splits the tar into GOMAXPROCS parts) and with prioritized files moved first.
#[test]
fn writer_modes_round_trip() {
    let Some(bin) = estargzwrite() else { return };
    let tar = docs(8 << 20);
    // Prioritized: the tar's last regular file, moved to the front.
    let last = tar::Archive::new(&tar[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.header().entry_type().is_file())
        .map(|e| e.path().unwrap().to_string_lossy().into_owned())
        .last()
        .unwrap();
    for (args, procs, label) in [
        (vec!["-mode", "writer"], None, "gzip-go-9"),
        (vec!["-mode", "lossless"], None, "gzip-go-9"),
        (vec!["-mode", "lossless", "-level", "6"], None, "gzip-go-6"),
        (vec![], Some(1), "gzip-go-9"),
        (vec!["-prioritized", last.as_str()], Some(2), "gzip-go-9"),
    ] {
        let name = format!("{args:?} GOMAXPROCS={procs:?}");
        let blob = estargz(bin, &args, procs, &tar);
        assert_exact(&name, &blob, label);
    }
}

/// Re-encodes from a resume point and checks the tail against the blob.
fn resumed_tail(enc: &Encoding, raw: &[u8], blob: &[u8], at: u64) -> u64 {
    let (mut r, resume) =
        Reencoder::resume(enc, at).unwrap_or_else(|| panic!("no resume point for {at}"));
    assert!(resume.offset <= at, "{at}: {resume:?}");
    let mut out = Vec::new();
    for part in raw[resume.plain as usize..].chunks(65_536) {
        r.push(part, &mut out);
    }
    r.finish(&mut out);
    assert!(
        out == blob[resume.offset as usize..],
        "resumed for {at} at {resume:?}: {} bytes, want {}",
        out.len(),
        blob.len() as u64 - resume.offset
    );
    resume.offset
}

/// What a lazy reader (stargz-snapshotter) asks for: the footer, then the TOC from the offset
/// the footer gives, then the members of single files at the offsets the TOC gives. Each is
/// re-encoded from the start of its own member, not from the layer's start.
#[test]
fn lazy_reader_ranges_resume_at_their_member() {
    let Some(bin) = estargzwrite() else { return };
    let tar = libs(12 << 20);
    let blob = estargz(bin, &["-chunk", "262144"], None, &tar);
    let (enc, raw) = assert_exact("libs", &blob, "gzip-go-9");
    let len = blob.len() as u64;

    // The footer: the last 51 bytes, a member of its own.
    assert_eq!(resumed_tail(&enc, &raw, &blob, len - 51), len - 51);
    let extra = &blob[blob.len() - 51 + 16..blob.len() - 51 + 32];
    let toc_at = u64::from_str_radix(std::str::from_utf8(extra).unwrap(), 16).unwrap();

    // The TOC member, where the footer says it starts.
    assert_eq!(resumed_tail(&enc, &raw, &blob, toc_at), toc_at);

    // The TOC itself, from the plaintext: a tar entry named stargz.index.json.
    let name_at = raw
        .windows(18)
        .rposition(|w| w == b"stargz.index.json\0")
        .expect("TOC entry");
    let size = std::str::from_utf8(&raw[name_at + 124..name_at + 135]).unwrap();
    let size = usize::from_str_radix(size.trim_matches(|c| c == '\0' || c == ' '), 8).unwrap();
    let toc: serde_json::Value =
        serde_json::from_slice(&raw[name_at + 512..name_at + 512 + size]).unwrap();
    let offsets: Vec<u64> = toc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["offset"].as_u64())
        .filter(|&o| o > 0)
        .collect();
    let chunks = toc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "chunk")
        .count();
    assert!(
        offsets.len() > 20,
        "{} payload offsets in the TOC",
        offsets.len()
    );
    assert!(chunks > 0, "a file cut into chunks");
    // A payload's member, from its first byte and from inside it (the last few: each check
    // re-encodes to the end of the layer).
    for &o in offsets.iter().rev().take(6) {
        assert_eq!(resumed_tail(&enc, &raw, &blob, o), o, "payload at {o}");
        assert_eq!(
            resumed_tail(&enc, &raw, &blob, o + 7),
            o,
            "inside payload at {o}"
        );
    }
}
