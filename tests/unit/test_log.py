from __future__ import annotations

import io

from archiso_hook.log import Log


def test_console_lines_and_levels() -> None:
    stream = io.StringIO()
    log = Log(stream=stream)
    log.info("mounted /dev/sr0")
    log.warning("slow medium")
    log.error("no medium\nsecond line")
    log.debug("hidden without rd.debug")
    assert stream.getvalue().splitlines() == [
        "archiso-hook: mounted /dev/sr0",
        "archiso-hook: warning: slow medium",
        "archiso-hook: error: no medium",
        "archiso-hook: error: second line",
    ]


def test_quiet_keeps_warnings_and_errors_and_debug_shows_steps() -> None:
    stream = io.StringIO()
    log = Log(stream=stream, quiet=True, debug=True)
    log.info("mounted")
    log.warning("careful")
    log.debug("step")
    assert stream.getvalue().splitlines() == ["archiso-hook: warning: careful"]
    stream = io.StringIO()
    Log(stream=stream, debug=True).debug("step")
    assert stream.getvalue() == "archiso-hook: step\n"
