"""``telemetry-collector dev-cert``: a local CA and a server certificate for trying things out.

A collector on a laptop or in CI needs a TLS certificate the client trusts. This
writes a throwaway certificate authority (``ca.pem``, ``ca.key``) and a server
certificate signed by it (``server.pem``, ``server.key``) for the given hosts,
by running the ``openssl`` command-line tool, which every platform that runs
Python can install. No Python package is added for it: ``cryptography`` is not
a dependency of anything the collector needs, and ``trustme`` (which the tests
use) is a development tool. The client then trusts the CA with
``telemetry config set ca-bundle DIR/ca.pem`` (or ``ca_bundle=`` in code).

Never use these files in production: the CA key sits next to the certificate.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from telemetry_core.errors import TelemetryError

__all__ = ["FILES", "DevCertError", "write_dev_certificates"]

#: The files written, in the output directory.
FILES: Final = ("ca.pem", "ca.key", "server.pem", "server.key")
#: Validity of the throwaway certificates, in days (under the 825 days clients accept).
VALID_DAYS: Final = 397
_CURVE: Final = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


class DevCertError(TelemetryError):
    """The certificates could not be written (no ``openssl``, files exist, a failure)."""


def _subject_alt_names(hosts: Sequence[str]) -> str:
    names = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            names.append(f"DNS:{host}")
        else:
            names.append(f"IP:{host}")
    return ",".join(names)


def _openssl(openssl: str, *args: str, cwd: Path) -> None:
    proc = subprocess.run(
        [openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.split())[:300]
        raise DevCertError(f"openssl {args[0]} failed: {detail}")


def write_dev_certificates(
    out: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost", "::1"), *, force: bool = False
) -> dict[str, Path]:
    """Write a local CA and a server certificate for ``hosts`` into ``out``.

    Returns the paths by file name (:data:`FILES`). Existing files are kept
    (:class:`DevCertError`) unless ``force``. Private keys are written with
    mode 0600.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise DevCertError(
            "the openssl command is not installed; install it (e.g. `apt install openssl`), "
            "or make the files with trustme: `pip install trustme` and "
            "`python -m trustme -d DIR -i 127.0.0.1 localhost`"
        )
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in FILES}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not force:
        raise DevCertError(f"{', '.join(existing)} already exist; pass --force to replace them")
    extensions = out / "server.ext"
    extensions.write_text(
        f"subjectAltName={_subject_alt_names(hosts)}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n",
        encoding="utf-8",
    )
    try:
        _openssl(openssl, "req", "-x509", *_CURVE, "-keyout", "ca.key", "-out", "ca.pem",
                 "-days", str(VALID_DAYS), "-subj", "/CN=telemetry-core development CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=out)  # fmt: skip
        _openssl(openssl, "req", *_CURVE, "-keyout", "server.key", "-out", "server.csr",
                 "-subj", f"/CN={hosts[0]}", cwd=out)  # fmt: skip
        _openssl(openssl, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem",
                 "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem",
                 "-days", str(VALID_DAYS), "-extfile", "server.ext", cwd=out)  # fmt: skip
    finally:
        for scratch in ("server.csr", "server.ext", "ca.srl"):
            (out / scratch).unlink(missing_ok=True)
    for key in ("ca.key", "server.key"):
        os.chmod(paths[key], 0o600)
    return paths
