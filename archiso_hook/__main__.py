import sys

from archiso_hook.boot import precompiled

# Before anything imports attrs: its generated methods come compiled (precompiled.py).
precompiled.install()

from archiso_hook.bootcmd import fast  # noqa: E402

# What the boot runs, `mount NEWROOT`, without the command line's parser (bootcmd).
if fast(sys.argv[1:]) is None:
    from archiso_hook.cli import main

    raise SystemExit(main())
