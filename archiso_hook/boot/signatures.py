"""verify=y and cms_verify=y: an image's detached signature, checked before anything is
mounted from it, against keys built into the initramfs (as mkinitcpio-archiso does).

- GPG: `<image>.sig`, checked by `gpgv` against the keyring the install hook made from
  ARCHISO_GNUPG_FD (the public keys mkarchiso hands it), at KEYRING.
- CMS: `<image>.cms.sig` (DER), checked by `openssl cms -verify` against the signing
  certificate from ARCHISO_TLS_FD at CODESIGN_CERT, chained to the CA from
  ARCHISO_TLSCA_FD at CODESIGN_CA (or to itself when there is none).

The programs are the initramfs's own (gpgv and openssl, added by the install hook only
when keys are given): a signature check is what they are written and audited for.
Which lines of gpgv's status output make a good signature is decided here, purely.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import TYPE_CHECKING

import attrs

from archiso_hook.errors import HookError
from archiso_hook.steps import VerifySignatures

if TYPE_CHECKING:
    from archiso_hook.boot.executor import Boot

KEYRING = "/etc/archiso/gpg/trustedkeys.gpg"
CODESIGN_CERT = "/codesign.crt"  # the paths mkinitcpio-archiso uses
CODESIGN_CA = "/codesign_CA.crt"
GPG_SUFFIX = ".sig"
CMS_SUFFIX = ".cms.sig"


class SignatureError(HookError):
    """A signature that is missing, or does not verify: nothing is mounted."""


@attrs.frozen
class GpgVerdict:
    good: bool
    signer: str  # the key's user ID or fingerprint, as gpgv names it
    reason: str  # why not, when not good


# The status keywords (doc/DETAILS of GnuPG) that tell why a signature is not good.
# The most telling first: gpgv says ERRSIG with NO_PUBKEY for a key it does not have.
_BAD = {
    "BADSIG": "the signature does not match the image (the image or the signature changed)",
    "NO_PUBKEY": "it was made by a key that is not in the initramfs",
    "EXPKEYSIG": "the signing key has expired",
    "REVKEYSIG": "the signing key was revoked",
    "EXPSIG": "the signature has expired",
    "ERRSIG": "the signature cannot be checked",
}


def gpg_verdict(status: str, returncode: int) -> GpgVerdict:
    """What gpgv's `--status-fd` lines and exit status say: good only with exit status 0,
    a GOODSIG, a VALIDSIG and none of the bad keywords (as archiso's check of GOODSIG,
    made stricter: a file holding several signatures must have every one good)."""
    keywords: dict[str, str] = {}
    for line in status.splitlines():
        if line.startswith("[GNUPG:] "):
            keyword, _, rest = line[len("[GNUPG:] ") :].partition(" ")
            keywords.setdefault(keyword, rest)
    for keyword, reason in _BAD.items():
        if keyword in keywords:
            rest = keywords[keyword]
            # ERRSIG and NO_PUBKEY give a key ID and numbers, the others a key ID and a name.
            signer = (
                f"key {rest.split()[0]}"
                if keyword in ("ERRSIG", "NO_PUBKEY") and rest
                else (_signer(rest))
            )
            return GpgVerdict(False, signer, reason)
    if returncode != 0 or "GOODSIG" not in keywords or "VALIDSIG" not in keywords:
        return GpgVerdict(False, "", f"gpgv found no good signature (exit status {returncode})")
    return GpgVerdict(True, _signer(keywords["GOODSIG"]), "")


def _signer(rest: str) -> str:
    """`<keyid> <user id>` of GOODSIG and the like: the user ID, else the key ID."""
    keyid, _, user = rest.partition(" ")
    return user or keyid


def gpgv_command(image: str, signature: str, keyring: str = KEYRING) -> list[str]:
    return ["gpgv", "--status-fd", "1", "--keyring", keyring, signature, image]


def cms_command(
    image: str, signature: str, cert: str = CODESIGN_CERT, ca: str = CODESIGN_CA
) -> list[str]:
    """mkinitcpio-archiso's check: the signer's certificate given (-certfile, -nointern),
    chained to the CA, or to itself when no CA was built in; -purpose any because a
    code-signing certificate has no S/MIME usage (openssl issue 17134)."""
    return [
        "openssl", "cms", "-verify", "-binary", "-noattr", "-nointern", "-purpose", "any",
        "-in", signature, "-inform", "DER", "-content", image, "-out", os.devnull,
        "-certfile", cert, "-CAfile", ca if os.path.exists(ca) else cert,
    ]  # fmt: skip


def _run(argv: list[str], what: str, parameter: str, hint: str) -> tuple[int, str, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace", check=False)
    except FileNotFoundError:
        raise SignatureError(
            f"{parameter}=y, but the initramfs has no {argv[0]} to check {what}", hint=hint
        ) from None
    return done.returncode, done.stdout, done.stderr


def check_gpg(image: str, keyring: str = KEYRING) -> str:
    """`<image>.sig` against the built-in keyring; the signer, or SignatureError."""
    signature = image + GPG_SUFFIX
    hint = "build the initramfs with the signing keys (ARCHISO_GNUPG_FD, as mkarchiso does)"
    if not os.path.exists(signature):
        raise SignatureError(
            f"verify=y, but {image} has no GPG signature {signature} beside it",
            hint="sign the images (archiso-hook build --sign-gpg KEY), or boot without verify=y",
        )
    if not os.path.exists(keyring):
        raise SignatureError(f"verify=y, but the initramfs has no keyring {keyring}", hint=hint)
    code, status, stderr = _run(gpgv_command(image, signature, keyring), image, "verify", hint)
    verdict = gpg_verdict(status, code)
    if not verdict.good:
        said = " | ".join(line for line in stderr.splitlines() if line.strip())[-300:]
        raise SignatureError(
            f"{image}: its GPG signature is not good: {verdict.reason}"
            + (f" ({verdict.signer})" if verdict.signer else ""),
            hint=f"gpgv said: {said}" if said else "write the medium again",
        )
    return verdict.signer


def check_cms(image: str, cert: str = CODESIGN_CERT, ca: str = CODESIGN_CA) -> None:
    """`<image>.cms.sig` against the built-in code-signing certificate, or SignatureError."""
    signature = image + CMS_SUFFIX
    hint = "build the initramfs with the certificate (ARCHISO_TLS_FD, as mkarchiso does)"
    if not os.path.exists(signature):
        raise SignatureError(
            f"cms_verify=y, but {image} has no CMS signature {signature} beside it",
            hint="sign the images (archiso-hook build --sign-cms CERT,KEY), or boot without "
            "cms_verify=y",
        )
    if not os.path.exists(cert):
        raise SignatureError(
            f"cms_verify=y, but the initramfs has no code-signing certificate {cert}", hint=hint
        )
    code, _, stderr = _run(cms_command(image, signature, cert, ca), image, "cms_verify", hint)
    if code != 0:
        said = " | ".join(line for line in stderr.splitlines() if line.strip())[-300:]
        raise SignatureError(
            f"{image}: its CMS signature does not verify against {cert}",
            hint=f"openssl said: {said}" if said else "write the medium again",
        )


def verify_signatures(boot: Boot, step: VerifySignatures) -> None:
    """The VerifySignatures step: every image, as it will be used (its copy in RAM if one
    was made; its signatures went along), before anything is mounted from it."""
    start = time.monotonic()
    for image in step.images:
        used = boot.image_paths.get(image, image)
        if step.gpg:
            signer = check_gpg(used)
            boot.log.info(f"{used}: good GPG signature by {signer}")
        if step.cms:
            check_cms(used)
            boot.log.info(f"{used}: good CMS signature by {CODESIGN_CERT}")
    boot.log.info(
        f"signatures checked: {len(step.images)} image(s) in {time.monotonic() - start:.1f} s"
    )
