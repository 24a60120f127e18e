"""python-dxf against stowage, in two phases so the Rust test can probe the registry between
them. Prints one JSON object on stdout; exits non-zero (with the reason on stderr) on failure.

Usage: dxf_ops.py push ADDR REPO WORK_DIR
         pushes WORK_DIR/big.bin and WORK_DIR/small.bin from files (POST, then one PUT with the
         whole body), a third blob from an iterator (PUT with a chunked transfer-encoded body),
         checks blob_size / pull_blob / the "already exists" short cut, tags them with
         set_alias, reads the alias back, lists aliases, mounts a blob into REPO-mirror.
       dxf_ops.py delete ADDR REPO ALIAS DIGEST...
         del_alias, then del_blob for each DIGEST, checking each is gone afterwards.
"""
import hashlib
import json
import os
import sys

import requests
from dxf import DXF


def check(cond, msg):
    if not cond:
        sys.exit(f"dxf_ops: {msg}")


def sha256_of(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def status_of(fn, *args):
    """Run fn(*args); the HTTP status of the HTTPError it raises, or None when it succeeds."""
    try:
        fn(*args)
        return None
    except requests.exceptions.HTTPError as e:
        return e.response.status_code if e.response is not None else -1


def push(addr, repo, work):
    d = DXF(addr, repo, insecure=True)
    out = {"blobs": {}}
    with open(os.path.join(work, "big.bin"), "rb") as f:
        big = f.read()
    with open(os.path.join(work, "small.bin"), "rb") as f:
        small = f.read()

    progress = []
    dg_big = d.push_blob(os.path.join(work, "big.bin"),
                         progress=lambda dg, chunk, size: progress.append(len(chunk)))
    check(dg_big == sha256_of(big), f"push_blob returned {dg_big}")
    check(sum(progress) == len(big), f"progress saw {sum(progress)} of {len(big)} bytes")
    dg_small = d.push_blob(os.path.join(work, "small.bin"))
    check(dg_small == sha256_of(small), f"push_blob returned {dg_small}")

    # From an iterator: requests sends it with Transfer-Encoding: chunked (no Content-Length).
    parts = [b"streamed-" * 1000, os.urandom(300_000), b"", b"tail"]
    streamed = b"".join(parts)
    dg_streamed = d.push_blob(data=iter(parts), digest=sha256_of(streamed))
    check(dg_streamed == sha256_of(streamed), "streamed push_blob digest")

    # Pushing again finds the blob (HEAD 200) and returns its digest without uploading.
    check(d.push_blob(os.path.join(work, "small.bin")) == dg_small, "re-push of an existing blob")

    for name, dg, data in [("big", dg_big, big), ("small", dg_small, small),
                           ("streamed", dg_streamed, streamed)]:
        check(d.blob_size(dg) == len(data), f"blob_size({name}) = {d.blob_size(dg)}")
        got = b"".join(d.pull_blob(dg))  # pull_blob verifies the digest while reading
        check(got == data, f"pull_blob({name}) returned different bytes")
        it, size = d.pull_blob(dg, size=True, chunk_size=65536)
        check(size == len(data), f"pull_blob({name}, size=True) size {size}")
        check(b"".join(it) == data, f"pull_blob({name}, size=True) bytes")
        out["blobs"][name] = {"digest": dg, "size": len(data)}

    check(status_of(d.blob_size, sha256_of(b"never pushed")) == 404, "blob_size of unknown")

    manifest = d.set_alias("v1", dg_big, dg_small)
    d.set_alias("v2", dg_streamed)
    check(d.get_alias("v1") == [dg_big, dg_small], f"get_alias(v1) = {d.get_alias('v1')}")
    check(d.get_alias("v1", sizes=True) == [(dg_big, len(big)), (dg_small, len(small))],
          "get_alias(v1, sizes=True)")
    check(d.get_digest("v1") == dg_big, "get_digest(v1): config is the first blob")
    check(d.get_manifest("v1") == manifest, "get_manifest returns the manifest byte for byte")
    mdigest, _ = d.head_manifest_and_response("v1")
    check(mdigest == sha256_of(manifest.encode()), f"HEAD manifest digest {mdigest}")
    check(d.get_alias("v2") == [dg_streamed], "get_alias(v2)")
    aliases = sorted(d.list_aliases())
    check(aliases == ["v1", "v2"], f"list_aliases = {aliases}")
    paged = sorted(d.list_aliases(batch_size=1, iterate=True))
    check(paged == ["v1", "v2"], f"list_aliases(batch_size=1) = {paged}")

    # Cross-repository mount, then the blob is readable through the other repository.
    mirror = DXF(addr, repo + "-mirror", insecure=True)
    check(mirror.mount_blob(repo, dg_small) == dg_small, "mount_blob")
    check(b"".join(mirror.pull_blob(dg_small)) == small, "pull of the mounted blob")

    out["alias"] = "v1"
    out["manifest"] = manifest
    out["manifest_digest"] = mdigest
    print(json.dumps(out))


def delete(addr, repo, alias, digests):
    d = DXF(addr, repo, insecure=True)
    removed = d.del_alias(alias)
    check(removed == digests, f"del_alias returned {removed}")
    check(status_of(d.get_alias, alias) == 404, "get_alias after del_alias")
    check(alias not in d.list_aliases(), "list_aliases after del_alias")
    # The blobs are still there until deleted themselves.
    for dg in digests:
        check(d.blob_size(dg) > 0, f"blob {dg} still present after del_alias")
    for dg in digests:
        d.del_blob(dg)
        check(status_of(d.blob_size, dg) == 404, f"blob_size after del_blob({dg})")
        check(status_of(lambda x: b"".join(d.pull_blob(x)), dg) == 404, f"pull after del_blob({dg})")
    print(json.dumps({"deleted": digests, "remaining_aliases": sorted(d.list_aliases())}))


def main():
    cmd = sys.argv[1]
    if cmd == "push":
        push(*sys.argv[2:5])
    elif cmd == "delete":
        delete(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
