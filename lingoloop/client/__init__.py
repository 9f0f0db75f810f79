"""`lingoloop`, the command-line client: transcribe files on any LingoLoop server from a
terminal or a script, over the public HTTP API only (no Django here; a test holds that).

    config.py   where `lingoloop login` keeps the server and token (or LINGOLOOP_URL/_TOKEN)
    api.py      the HTTP calls, and the server's refusals as errors with their `message`
    follow.py   one run followed live over SSE (resumed with Last-Event-ID), or by polling
    display.py  progress bars on a terminal, plain lines in a pipe
    cli.py      the commands and their exit codes
"""
