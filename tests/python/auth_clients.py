"""oras-py and python-dxf logging in to stowage (Basic, or bearer tokens from its /token):
push with the writer's credentials, pull back, and check a reader cannot push.

Usage: auth_clients.py oras ADDR WORKDIR basic|token   (plain HTTP; oras-py's auth backend:
                                                        `basic` for Basic challenges)
       auth_clients.py dxf ADDR WORKDIR CA_PEM  (HTTPS: python-dxf sends credentials only
                                                 over TLS)
Users: writer / pw-of-writer (pull, push on team/**), reader / pw-of-reader (pull).
Exits non-zero on any failure; prints what it checked.
"""
import hashlib
import os
import sys

import oras.client
from dxf import DXF


def dxf_for(addr, repo, user, ca):
    def auth(dxf, response):
        dxf.authenticate(user, "pw-of-" + user, response=response)

    return DXF(addr, repo, auth, tlsverify=ca)


def main():
    what, addr, work = sys.argv[1:4]
    os.chdir(work)
    data = os.urandom(300_000)
    with open("blob.bin", "wb") as f:
        f.write(data)
    if what == "dxf":
        dxf(addr, data, sys.argv[4])
    else:
        oras_(addr, data, sys.argv[4])


def dxf(addr, data, ca):
    # python-dxf: push a blob and an alias as writer, pull as reader, refused push as reader.
    w = dxf_for(addr, "team/dxf", "writer", ca)
    digest = w.push_blob("blob.bin")
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest(), digest
    r = dxf_for(addr, "team/dxf", "reader", ca)
    got = b"".join(r.pull_blob(digest))
    assert got == data, "dxf pulled other bytes"
    try:
        r.push_blob("blob.bin", check_exists=False)
    except Exception as e:  # requests.HTTPError: 403
        print("dxf reader push refused:", type(e).__name__)
    else:
        sys.exit("dxf: the reader pushed")
    print("dxf ok", digest)


def oras_(addr, data, backend):
    # oras-py: login, chunked push, pull.
    client = oras.client.OrasClient(hostname=addr, insecure=True, auth_backend=backend)
    # The credentials go to a config file of the test's own, not the user's ~/.docker.
    client.login(
        username="writer",
        password="pw-of-writer",
        hostname=addr,
        config_path=os.path.abspath("docker-config.json"),
    )
    ref = f"{addr}/team/oras:v1"
    resp = client.push(target=ref, files=["blob.bin"], do_chunked=True, chunk_size=65536, quiet=True)
    if resp.status_code != 201:
        sys.exit(f"oras push answered {resp.status_code}: {resp.text}")
    os.makedirs("out", exist_ok=True)
    files = client.pull(target=ref, outdir="out")
    with open(files[0], "rb") as f:
        assert f.read() == data, "oras pulled other bytes"
    print("oras ok", ref)


if __name__ == "__main__":
    main()
