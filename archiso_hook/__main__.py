from archiso_hook.cli import main

raise SystemExit(main())
