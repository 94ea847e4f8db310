"""Mount options as users write them (`cow_flags=noatime,subvol=@cow`), split the way
mount(8) does: words that are mount(2) flags, and the rest passed to the filesystem."""

from __future__ import annotations

import attrs

from archiso_hook.errors import InputError

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_DIRSYNC = 128
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

# word -> (flag, set it?)
_FLAG_WORDS: dict[str, tuple[int, bool]] = {
    "ro": (MS_RDONLY, True), "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True), "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True), "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True), "exec": (MS_NOEXEC, False),
    "sync": (MS_SYNCHRONOUS, True), "async": (MS_SYNCHRONOUS, False),
    "dirsync": (MS_DIRSYNC, True),
    "noatime": (MS_NOATIME, True), "atime": (MS_NOATIME, False),
    "nodiratime": (MS_NODIRATIME, True), "diratime": (MS_NODIRATIME, False),
    "relatime": (MS_RELATIME, True), "norelatime": (MS_RELATIME, False),
    "strictatime": (MS_STRICTATIME, True), "nostrictatime": (MS_STRICTATIME, False),
    "lazytime": (MS_LAZYTIME, True), "nolazytime": (MS_LAZYTIME, False),
}  # fmt: skip
# fstab-only words that mean nothing to mount(2).
_IGNORED = frozenset({"defaults", "auto", "noauto", "user", "nouser", "users", "nofail",
                      "_netdev", "owner", "group"})  # fmt: skip
# Words that would make the hook's mount something else entirely.
_REFUSED = frozenset({"remount", "bind", "rbind", "move", "make-private", "make-shared"})


@attrs.frozen
class MountOptions:
    flags: int = 0
    data: str | None = None  # comma-separated, for the filesystem

    @property
    def read_only(self) -> bool:
        return bool(self.flags & MS_RDONLY)


def parse_mount_options(text: str | None, *, what: str) -> MountOptions:
    """`what` names the parameter in errors (e.g. cow_flags)."""
    if not text:
        return MountOptions()
    flags = 0
    data: list[str] = []
    for word in text.split(","):
        if not word:
            raise InputError(f"{what}={text} is not valid: an empty option between commas")
        if word in _REFUSED:
            raise InputError(f"{what}={text} is not valid: {word} is not a mount option here")
        if word in _IGNORED or word.startswith("x-"):
            continue
        if word in _FLAG_WORDS:
            flag, on = _FLAG_WORDS[word]
            flags = flags | flag if on else flags & ~flag
        elif any(not c.isprintable() or c.isspace() for c in word):
            raise InputError(
                f"{what}={text} is not valid: {word!r} has blanks or control characters"
            )
        else:
            data.append(word)
    return MountOptions(flags, ",".join(data) or None)
