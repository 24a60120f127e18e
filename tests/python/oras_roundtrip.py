"""oras-py against stowage: chunked push (POST, several PATCHes, PUT) of several files and a
directory, then pull into another directory.

Usage: oras_roundtrip.py push ADDR REF SRC_DIR CHUNK_SIZE NAME...
       oras_roundtrip.py pull ADDR REF OUT_DIR

`push` runs with SRC_DIR as working directory (oras-py only pushes paths below the current
directory) and pushes NAME... (files or directories; a directory becomes a tar.gz layer).
`pull` prints the pulled paths, one per line. Exits non-zero on any failure.
"""
import os
import sys

import oras.client


def main():
    cmd, addr, ref = sys.argv[1:4]
    client = oras.client.OrasClient(hostname=addr, insecure=True)
    if cmd == "push":
        src, chunk_size, names = sys.argv[4], int(sys.argv[5]), sys.argv[6:]
        os.chdir(src)
        r = client.push(
            target=ref,
            files=names,
            do_chunked=True,
            chunk_size=chunk_size,
            manifest_annotations={"org.example.test": "clients_python"},
            quiet=True,
        )
        if r.status_code != 201:
            sys.exit(f"manifest push answered {r.status_code}: {r.text}")
        print(r.headers.get("Docker-Content-Digest", ""))
    elif cmd == "pull":
        out = sys.argv[4]
        files = client.pull(target=ref, outdir=out)
        for f in files:
            print(f)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
