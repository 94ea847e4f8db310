import sys

from archiso_hook.boot import precompiled

# Before anything imports attrs: its generated methods come compiled (precompiled.py).
precompiled.install()

from archiso_hook.bootcmd import fast  # noqa: E402

argv = sys.argv[1:]
# /shutdown is a link to this program (initcpio/install/archiso): systemd runs it as
# `/shutdown VERB` once it has switched back into /run/initramfs at power-off.
if sys.argv[0].rpartition("/")[2] == "shutdown":
    argv = ["shutdown", *argv]
# What the boot runs, `mount NEWROOT`, without the command line's parser (bootcmd).
if fast(argv) is None:
    from archiso_hook.cli import main

    raise SystemExit(main(argv))
