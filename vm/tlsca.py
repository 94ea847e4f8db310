"""A certificate authority of the lab's own, for https servers on 127.0.0.1 (made with the
openssl command, in a directory of the test's).

    ca = CertificateAuthority.create(tmp / "ca", "lab CA")
    cert, key = ca.issue(tmp / "server", ips=["10.0.2.2", "127.0.0.1"])
    # ca.cert is what a client (the initramfs: ARCHISO_CA_BUNDLE) must trust

Keys are EC P-256, certificates valid for 30 days from now (a guest's clock is the host's),
with the addresses as subjectAltName, which is what TLS clients check.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import attrs


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()}")


@attrs.frozen
class CertificateAuthority:
    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path, name: str) -> CertificateAuthority:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / "ca.crt", directory / "ca.key"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        return cls(cert, key)

    def issue(self, directory: Path, *, ips: Sequence[str]) -> tuple[Path, Path]:
        """A server certificate (and its key) for these addresses, signed by this CA."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key, csr = directory / "server.crt", directory / "server.key", directory / "csr"
        ext = directory / "ext.cnf"
        ext.write_text(
            "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
            f"subjectAltName={','.join(f'IP:{ip}' for ip in ips)}\n"
        )
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={ips[0]}",
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-CAcreateserial", "-out", str(cert), "-days", "30", "-extfile", str(ext),
        )  # fmt: skip
        return cert, key
