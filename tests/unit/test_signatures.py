"""verify= and cms_verify=: gpgv's verdict read from its status lines, and real
signatures made by the builder (gpg, openssl cms) checked by the boot's own functions
with the host's gpgv and openssl. The boot's use of them is proven in
tests/vm/test_31_signatures.py."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from archiso_hook.boot import signatures
from archiso_hook.boot.signatures import GpgVerdict, SignatureError, gpg_verdict
from archiso_hook.build.imagesums import Signing, sign_image

GOOD = (
    "[GNUPG:] NEWSIG\n"
    "[GNUPG:] KEY_CONSIDERED 0123ABCD 0\n"
    "[GNUPG:] GOODSIG 89ABCDEF01234567 Live Signer <live@example.org>\n"
    "[GNUPG:] VALIDSIG 0123ABCD 2026-12-02 1764633600 0 4 0 22 10 00 0123ABCD\n"
)


@pytest.mark.parametrize(
    ("status", "code", "verdict"),
    [
        (GOOD, 0, GpgVerdict(True, "Live Signer <live@example.org>", "")),
        (GOOD, 1, GpgVerdict(False, "", "gpgv found no good signature (exit status 1)")),
        (GOOD.replace("[GNUPG:] VALIDSIG", "[GNUPG:] X"), 0,
         GpgVerdict(False, "", "gpgv found no good signature (exit status 0)")),
        ("[GNUPG:] BADSIG 89ABCDEF01234567 Live Signer\n", 1,
         GpgVerdict(False, "Live Signer", signatures._BAD["BADSIG"])),
        ("[GNUPG:] ERRSIG 89ABCDEF01234567 22 10 00 1764633600 9 -\n"
         "[GNUPG:] NO_PUBKEY 89ABCDEF01234567\n", 2,
         GpgVerdict(False, "key 89ABCDEF01234567", signatures._BAD["NO_PUBKEY"])),
        ("[GNUPG:] ERRSIG 89ABCDEF01234567 22 10 00 1764633600 4 -\n", 2,
         GpgVerdict(False, "key 89ABCDEF01234567", signatures._BAD["ERRSIG"])),
        (GOOD + "[GNUPG:] NEWSIG\n[GNUPG:] EXPKEYSIG 1234 Old Key\n", 0,
         GpgVerdict(False, "Old Key", signatures._BAD["EXPKEYSIG"])),  # every one must be good
        ("", 0, GpgVerdict(False, "", "gpgv found no good signature (exit status 0)")),
    ],
)  # fmt: skip
def test_gpgv_verdict(status: str, code: int, verdict: GpgVerdict) -> None:
    assert gpg_verdict(status, code) == verdict


def quiet(line: str) -> None:
    """The builder's log, here unread."""


def _run(*argv: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(
        argv, capture_output=True, text=True, check=True, env={**os.environ, **(env or {})}
    ).stdout


@pytest.fixture(scope="module")
def gpg_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, Path]]:
    """A GnuPG home with a signing key; (home, fingerprint, keyring of its public key)."""
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    env = {"GNUPGHOME": str(home)}
    _run("gpg", "--batch", "--passphrase", "", "--quick-gen-key", "Live Signer <live@example.org>",
         "ed25519", "sign", "never", env=env)  # fmt: skip
    listing = _run("gpg", "--batch", "--with-colons", "--list-secret-keys", env=env)
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line[:4] == "fpr:")
    keyring = home / "trustedkeys.gpg"
    keyring.write_bytes(
        subprocess.run(
            ["gpg", "--batch", "--export", fingerprint],
            capture_output=True, check=True, env={**os.environ, **env},
        ).stdout
    )  # fmt: skip
    yield home, fingerprint, keyring
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


def _image(tmp_path: Path) -> Path:
    image = tmp_path / "root.fs.sfs"
    image.write_bytes(os.urandom(100_000))
    return image


def test_a_gpg_signature_the_builder_made_is_good_and_a_changed_image_is_not(
    tmp_path: Path, gpg_home: tuple[Path, str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, fingerprint, keyring = gpg_home
    monkeypatch.setenv("GNUPGHOME", str(home))
    image = _image(tmp_path)
    sign_image(image, Signing(gpg_key=fingerprint), quiet)
    assert signatures.check_gpg(str(image), str(keyring)) == "Live Signer <live@example.org>"
    data = bytearray(image.read_bytes())
    data[5000] ^= 1
    image.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match=r"its GPG signature is not good: the signature does"):
        signatures.check_gpg(str(image), str(keyring))


def test_a_signature_by_a_key_not_built_in_is_refused(
    tmp_path: Path, gpg_home: tuple[Path, str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, fingerprint, _ = gpg_home
    monkeypatch.setenv("GNUPGHOME", str(home))
    image = _image(tmp_path)
    sign_image(image, Signing(gpg_key=fingerprint), quiet)
    empty = tmp_path / "empty.gpg"
    empty.write_bytes(b"")
    with pytest.raises(SignatureError) as caught:
        signatures.check_gpg(str(image), str(empty))
    assert "it was made by a key that is not in the initramfs" in caught.value.message


def test_a_missing_signature_or_keyring_is_one_sentence(tmp_path: Path) -> None:
    image = _image(tmp_path)
    with pytest.raises(SignatureError, match=r"^verify=y, but .*root.fs.sfs has no GPG signature"):
        signatures.check_gpg(str(image), str(tmp_path / "keyring.gpg"))
    Path(f"{image}.sig").write_bytes(b"x")
    with pytest.raises(SignatureError, match=r"^verify=y, but the initramfs has no keyring"):
        signatures.check_gpg(str(image), str(tmp_path / "keyring.gpg"))
    with pytest.raises(SignatureError, match=r"^cms_verify=y, but .* has no CMS signature"):
        signatures.check_cms(str(image), str(tmp_path / "c.crt"))


@pytest.fixture(scope="module")
def codesign(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed code-signing certificate and its key, as archiso's CI makes them."""
    where = tmp_path_factory.mktemp("codesign")
    cert, key = where / "codesign.crt", where / "codesign.key"
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
         "-subj", "/CN=Live code signing", "-addext", "extendedKeyUsage=codeSigning",
         "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return cert, key


def test_a_cms_signature_the_builder_made_is_good_and_a_changed_image_is_not(
    tmp_path: Path, codesign: tuple[Path, Path]
) -> None:
    cert, key = codesign
    image = _image(tmp_path)
    sign_image(image, Signing(cms=(cert, key)), quiet)
    assert Path(f"{image}.cms.sig").read_bytes()[:1] == b"\x30"  # DER
    signatures.check_cms(str(image), str(cert), str(tmp_path / "no-ca.crt"))  # self-signed
    image.write_bytes(image.read_bytes()[:-1])
    with pytest.raises(SignatureError, match=r"its CMS signature does not verify against"):
        signatures.check_cms(str(image), str(cert), str(tmp_path / "no-ca.crt"))


def test_a_cms_signature_by_another_certificate_is_refused(
    tmp_path: Path, codesign: tuple[Path, Path]
) -> None:
    cert, _ = codesign
    other, other_key = tmp_path / "other.crt", tmp_path / "other.key"
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=Someone else", "-addext", "extendedKeyUsage=codeSigning",
         "-keyout", str(other_key), "-out", str(other))  # fmt: skip
    image = _image(tmp_path)
    sign_image(image, Signing(cms=(other, other_key)), quiet)
    with pytest.raises(SignatureError, match=r"does not verify"):
        signatures.check_cms(str(image), str(cert), str(tmp_path / "no-ca.crt"))
