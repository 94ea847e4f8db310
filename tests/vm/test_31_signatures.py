"""verify= and cms_verify= in QEMU: a medium signed by `archiso-hook build --sign-gpg
--sign-cms`, an initramfs given the keys as mkarchiso gives them (ARCHISO_GNUPG_FD,
ARCHISO_TLS_FD), gpgv and openssl in the initramfs checking each image before anything
is mounted from it; a signature that does not match stops the boot cleanly."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from archiso_hook.build.imagesums import Signing
from tests.vm.conftest import Lab, fails_cleanly, power_off
from vm import lab_dir
from vm.lab import signing_initramfs
from vm.media import SAMPLE_LABEL
from vm.qemu import Drive

pytestmark = pytest.mark.vm

BASE = f"archisobasedir=arch archisolabel={SAMPLE_LABEL}"


@attrs.frozen
class Keys:
    home: Path  # GNUPGHOME holding the secret key
    fingerprint: str
    public: Path  # its public key, armored, for ARCHISO_GNUPG_FD
    cert: Path
    key: Path


def _run(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    return done.stdout


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    where = tmp_path_factory.mktemp("keys")
    home = where / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    _run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key",
          "Live Signer <live@example.org>", "ed25519", "sign", "never"], env)  # fmt: skip
    listing = _run(["gpg", "--batch", "--with-colons", "--list-secret-keys"], env)
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line[:4] == "fpr:")
    public = where / "public.asc"
    public.write_text(_run(["gpg", "--batch", "--armor", "--export", fingerprint], env))
    cert, key = where / "codesign.crt", where / "codesign.key"
    _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
          "-subj", "/CN=Live code signing", "-addext", "extendedKeyUsage=codeSigning",
          "-keyout", str(key), "-out", str(cert)], env)  # fmt: skip
    yield Keys(home, fingerprint, public, cert, key)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


@pytest.fixture(scope="module")
def signed(lab: Lab, keys: Keys) -> Iterator[tuple[Path, Path]]:
    """(the signed sample ISO, an initramfs with its keys)."""
    before = os.environ.get("GNUPGHOME")
    os.environ["GNUPGHOME"] = str(keys.home)  # where the builder's gpg finds the secret key
    try:
        media = lab.media(
            "signed", signing=Signing(gpg_key=keys.fingerprint, cms=(keys.cert, keys.key))
        )
    finally:
        if before is None:
            del os.environ["GNUPGHOME"]
        else:
            os.environ["GNUPGHOME"] = before
    initrd = signing_initramfs(
        lab.kernel, lab_dir() / "initramfs-archiso-signing.img", gpg_keys=keys.public,
        cert=keys.cert,
    )  # fmt: skip
    yield media.iso, initrd


def test_signed_images_are_checked_before_use(lab: Lab, signed: tuple[Path, Path]) -> None:
    iso, initrd = signed
    append = f"{BASE} verify=y cms_verify=y copytoram=y lab.check=files"
    drives = [Drive(iso, kind="virtio")]
    with lab.boot("signed", append, drives, initrd=initrd) as guest:
        guest.expect(
            r"archiso-hook: /run/archiso/copytoram/root.fs.sfs: good GPG signature by "
            r"Live Signer <live@example.org>",
            timeout=240,
        )
        guest.expect("root.fs.sfs: good CMS signature by /codesign.crt", timeout=120)
        guest.expect(r"signatures checked: \d+ image\(s\)", timeout=120)
        guest.expect("LAB: PASS", timeout=200)


def test_a_signature_that_does_not_match_stops_the_boot(
    lab: Lab, signed: tuple[Path, Path], keys: Keys
) -> None:
    _, initrd = signed

    def swap(basedir: Path) -> None:  # root's signature on another image
        images = basedir / "x86_64"
        (images / "root.fs.sfs.sig").write_bytes((basedir / "any" / "share.sfs.sig").read_bytes())

    before = os.environ.get("GNUPGHOME")
    os.environ["GNUPGHOME"] = str(keys.home)
    try:
        media = lab.media("signed-swapped", signing=Signing(gpg_key=keys.fingerprint), edit=swap)
    finally:
        if before is None:
            del os.environ["GNUPGHOME"]
        else:
            os.environ["GNUPGHOME"] = before
    append = f"{BASE} verify=y"
    with lab.boot(
        "signed-swapped", append, [Drive(media.iso, kind="ide-cdrom")], initrd=initrd
    ) as guest:
        fails_cleanly(
            guest,
            r"root.fs.sfs: its GPG signature is not good: the signature does not match the "
            r"image",
        )
        power_off(guest)
