"""`lingoloop`: the commands, and what their exit codes mean.

    0    everything asked for succeeded
    1    some of it failed (a run failed or was cancelled, a file was refused)
    2    usage error (a bad option, a missing file, a run id that is not one)
    3    the server cannot be reached, or refused the credentials (or there are none)
    130  interrupted (Ctrl-C); runs being followed keep going on the server

Messages for the person go to stderr; stdout holds what was asked for (a transcript with
`--output -`, the results with `--json`), so the client works in a pipe. Progress bars are
shown only when stdout is a terminal.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import threading
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

from lingoloop.client import config
from lingoloop.client.api import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Api,
    ClientError,
    Unreachable,
    check,
)
from lingoloop.client.display import Display, describe
from lingoloop.client.follow import READ_TIMEOUT, RunState, follow

EXIT_INTERRUPTED = 130
FORMATS = ("txt", "srt", "vtt", "tsv", "json")
STATUSES = ("queued", "processing", "succeeded", "failed", "cancelled")


class UsageError(Exception):
    pass


# --- Arguments -------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def run_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a run id (a UUID)") from None


def parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable results")

    top = Parser(
        prog="lingoloop",
        description="Transcribe audio on a LingoLoop server and follow it live.",
        epilog="The server and token come from LINGOLOOP_URL and LINGOLOOP_TOKEN, or from "
        "`lingoloop login`. Exit codes: 0 all succeeded, 1 some failed, 2 usage error, "
        "3 server unreachable or credentials refused, 130 interrupted.",
    )
    commands = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    login = commands.add_parser(
        "login", help="log in to a server and keep its token", parents=[common]
    )
    login.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    login.add_argument("--username", help="asked for when not given")
    login.add_argument("--token", help="an API token to keep instead of logging in")
    login.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    commands.add_parser("logout", help="forget the kept token", parents=[common])

    transcribe = commands.add_parser(
        "transcribe", help="upload files, follow them live, write their transcripts",
        parents=[common],
    )  # fmt: skip
    transcribe.add_argument("files", nargs="+", type=Path, metavar="FILE")
    transcribe.add_argument("--language", help="spoken language code, e.g. de (default: detect)")
    transcribe.add_argument("--model", help="a model the server offers (lingoloop models)")
    transcribe.add_argument("--hotwords", help="words to favour: names, jargon")
    transcribe.add_argument(
        "--speakers-by-channel", action="store_true",
        help="one speaker per channel (call recordings): each channel transcribed on its own",
    )  # fmt: skip
    transcribe.add_argument(
        "--speaker-names", metavar="NAMES", help="with --speakers-by-channel: 'Alice, Bob'"
    )
    transcribe.add_argument("--task", choices=("transcribe", "translate"), default=None)
    transcribe.add_argument(
        "--word-timestamps", action="store_true", help="time every word as well"
    )
    transcribe.add_argument("--format", choices=FORMATS, default="txt", help="default: txt")
    transcribe.add_argument(
        "--output", metavar="DIR|-",
        help="folder for the transcripts (default: beside each file); - for standard output",
    )  # fmt: skip
    transcribe.add_argument("--priority", type=int, help="higher runs first (default 0)")
    transcribe.add_argument(
        "--no-wait", action="store_true", help="upload, print the run ids and exit"
    )
    transcribe.add_argument(
        "--cancel-on-interrupt", action="store_true",
        help="Ctrl-C cancels the runs (by default they keep going on the server)",
    )  # fmt: skip

    commands.add_parser("models", help="the models the server offers", parents=[common])
    detect = commands.add_parser(
        "detect-language", help="which language files speak (their first 30 s), at once",
        parents=[common],
    )  # fmt: skip
    detect.add_argument("files", nargs="+", type=Path, metavar="FILE")
    detect.add_argument("--model", help="a multilingual model (default: the server's choice)")

    runs = commands.add_parser("runs", help="list your runs, newest first", parents=[common])
    runs.add_argument("--status", choices=STATUSES)
    runs.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")

    show = commands.add_parser("show", help="one run's state and text", parents=[common])
    show.add_argument("run_id", type=run_id, metavar="ID")

    get = commands.add_parser("get", help="a finished run's transcript", parents=[common])
    get.add_argument("run_id", type=run_id, metavar="ID")
    get.add_argument("--format", choices=FORMATS, default="txt", help="default: txt")
    get.add_argument(
        "--output", metavar="DIR|-", default="-",
        help="folder to write it to, named after the audio (default: standard output)",
    )  # fmt: skip

    for name, what in (("cancel", "cancel runs"), ("retry", "queue failed or cancelled runs "
                       "again"), ("delete", "delete finished runs and their audio")):  # fmt: skip
        action = commands.add_parser(name, help=what, parents=[common])
        action.add_argument("run_ids", type=run_id, nargs="+", metavar="ID")

    watch = commands.add_parser(
        "watch", help="follow runs live (default: all of yours, until Ctrl-C)", parents=[common]
    )
    watch.add_argument("run_ids", type=run_id, nargs="*", metavar="ID")
    watch.add_argument(
        "--cancel-on-interrupt", action="store_true", help="Ctrl-C cancels the runs followed"
    )
    return top


# --- Entry point -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "login":
            return login(args)
        if args.command == "logout":
            print("Logged out." if config.forget() else "Not logged in.", file=sys.stderr)
            return 0
        api = connect()
        try:
            return COMMANDS[args.command](api, args)
        finally:
            api.close()
    except UsageError as error:
        print(f"lingoloop: {error}", file=sys.stderr)
        return EXIT_USAGE
    except config.ConfigError as error:
        print(f"lingoloop: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE if "Not logged in" in str(error) else EXIT_USAGE
    except ClientError as error:
        print(f"lingoloop: {error.message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("\nlingoloop: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


def connect() -> Api:
    login = config.load()
    return Api(login.url, login.token)


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


# --- login -----------------------------------------------------------------------------------


def login(args: argparse.Namespace) -> int:
    url = config.server_url(args.url)
    token = args.token
    if not token:
        username = args.username or input("Username: ").strip()
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass("Password: ")
        if not username or not password:
            raise UsageError("a username and a password are needed (or --token).")
        anonymous = Api(url, None)
        try:
            token = anonymous.token(username, password)
        finally:
            anonymous.close()
    checked = Api(url, token)
    try:
        checked.runs(limit=1)  # the token works here
    finally:
        checked.close()
    path = config.save(config.Login(url, token))
    if args.json:
        emit_json({"url": url, "config": str(path)})
    else:
        print(f"Logged in to {url}; the token is kept in {path}.", file=sys.stderr)
    return 0


# --- transcribe ------------------------------------------------------------------------------


@dataclass
class Item:
    """One file of `transcribe`: its upload, its run, where its transcript goes."""

    path: Path
    out: Path | None  # None: standard output
    run_id: str | None = None
    state: RunState | None = None
    error: str | None = None
    written: str | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def status(self) -> str:
        if self.state is not None:
            return self.state.status
        return "refused" if self.error else "not sent"

    def result(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "runId": self.run_id,
            "status": self.status,
            "output": self.written,
            "error": self.error or (self.state.error if self.state else None),
        }


def outputs_for(files: list[Path], output: str | None, fmt: str) -> list[Path | None]:
    """Where each transcript goes; refuses what cannot be (a missing file, two transcripts
    with the same name) before anything is uploaded."""
    problems = []
    for path in files:
        if not path.is_file():
            problems.append(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
        elif not os.access(path, os.R_OK):
            problems.append(f"{path}: not readable")
    if problems:
        raise UsageError("; ".join(problems))
    if output == "-":
        return [None] * len(files)
    if output is not None:
        folder = Path(output)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--output {output}: not a folder")
        outs = [folder / f"{path.stem}.{fmt}" for path in files]
    else:
        outs = [path.with_name(f"{path.stem}.{fmt}") for path in files]
    seen: set[Path] = set()
    for path, out in zip(files, outs, strict=True):
        if out.resolve() == path.resolve():
            raise UsageError(f"{path}: its transcript would overwrite it; use --output DIR")
        if out.resolve() in seen:
            raise UsageError(f"two transcripts would both be written to {out}; use --output DIR")
        seen.add(out.resolve())
    return list(outs)


def form_fields(args: argparse.Namespace, *, wait: bool) -> dict[str, str]:
    fields = {"mode": "auto" if wait else "async"}
    if args.language:
        fields["language"] = args.language
    if args.model:
        fields["model"] = args.model
    if args.hotwords:
        fields["hotwords"] = args.hotwords
    if args.speakers_by_channel:
        fields["channels"] = "separate"
    if args.speaker_names:
        fields["speakerNames"] = args.speaker_names
    if args.task:
        fields["task"] = args.task
    if args.word_timestamps:
        fields["wordTimestamps"] = "true"
    if args.priority is not None:
        fields["priority"] = str(args.priority)
    return fields


def transcribe(api: Api, args: argparse.Namespace) -> int:
    if args.json and args.output == "-":
        raise UsageError("--json and --output - both want standard output; choose one")
    outs = outputs_for(args.files, args.output, args.format)
    if args.output not in (None, "-"):
        Path(args.output).mkdir(parents=True, exist_ok=True)
    items = [Item(path, out) for path, out in zip(args.files, outs, strict=True)]
    interactive = sys.stdout.isatty() and not args.json
    display = Display(interactive=interactive, show_text=interactive)
    stop = threading.Event()
    fields = form_fields(args, wait=not args.no_wait)
    try:
        with display:
            for item in items:
                upload(api, item, fields, display)
                if item.state is not None and not args.no_wait:
                    start_following(api, item, display, stop)
            wait_for(items)
    except KeyboardInterrupt:
        stop.set()
        return interrupted(api, items, cancel=args.cancel_on_interrupt)
    except Unreachable:
        stop.set()
        left_running(items)
        raise
    for item in items:
        if item.state is not None and item.state.status == "succeeded" and not args.no_wait:
            write_transcript(api, item, args.format)
    return finish(items, args, display)


def upload(api: Api, item: Item, fields: dict[str, str], display: Display) -> None:
    size = item.path.stat().st_size
    key = str(item.path)
    display.upload_started(key, item.path.name, size)
    sent = 0

    def on_read(count: int) -> None:
        nonlocal sent
        sent += count
        display.uploaded(key, min(sent, size), size)

    try:
        run = api.transcribe(item.path, fields, on_read)
    except Unreachable:
        display.upload_finished(key)
        raise
    except ClientError as error:
        display.upload_finished(key)
        item.error = error.message
        display.note(f"{item.path.name}: {error.message}")
        if error.exit_code != EXIT_FAILED:
            raise
        return
    display.upload_finished(key)
    item.run_id = str(run["runId"])
    item.state = RunState(item.run_id)
    fresh = item.state.apply(run)
    display.run_started(item.run_id, item.path.name, item.state)
    display.run_changed(item.run_id, item.path.name, item.state, fresh)


def start_following(api: Api, item: Item, display: Display, stop: threading.Event) -> None:
    assert item.state is not None and item.run_id is not None
    if item.state.finished:
        return  # transcribed in the request (a short file)
    name, key = item.path.name, item.run_id

    def run() -> None:
        try:
            follow(api, item.state, lambda s, f: display.run_changed(key, name, s, f), stop=stop)  # type: ignore[arg-type]
        except ClientError as error:
            item.error = error.message

    item.thread = threading.Thread(target=run, name=f"follow-{key}", daemon=True)
    item.thread.start()


def wait_for(items: list[Item]) -> None:
    """Until every follower is done; short joins, so that Ctrl-C reaches this thread."""
    for item in items:
        while item.thread is not None and item.thread.is_alive():
            item.thread.join(0.2)
    unreachable = [item for item in items if item.error and item.state and not item.state.finished]
    if unreachable:
        raise Unreachable(unreachable[0].error or "The server stopped answering.")


def write_transcript(api: Api, item: Item, fmt: str) -> None:
    assert item.run_id is not None
    try:
        content = api.transcript(item.run_id, fmt)
    except ClientError as error:
        item.error = error.message
        return
    if item.out is None:
        sys.stdout.buffer.write(content)
        if not content.endswith(b"\n"):
            sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
        item.written = "-"
        return
    item.out.write_bytes(content)
    item.written = str(item.out)


def finish(items: list[Item], args: argparse.Namespace, display: Display) -> int:
    if args.no_wait:
        ok = all(item.run_id and not item.error for item in items)
    else:
        ok = all(item.status == "succeeded" and item.written for item in items)
    if args.json:
        emit_json([item.result() for item in items])
        return 0 if ok else EXIT_FAILED
    for item in items:
        problem = item.error or (item.state.error if item.state else None)
        if args.no_wait and item.run_id:
            print(item.run_id)  # for scripts: one run id a line
            display.note(f"{item.path.name}: {item.status}, run {item.run_id}")
        elif item.written:
            where = "standard output" if item.written == "-" else item.written
            display.note(f"{item.path.name}: {item.status} → {where}")
        elif not item.written:
            shown = (
                item.status
                if not problem or problem in item.status
                else f"{item.status}: {problem}"
            )
            display.note(f"{item.path.name}: {shown}")
    queued = [item.run_id for item in items if item.run_id]
    if args.no_wait and queued:
        display.note("Follow them with: lingoloop watch " + " ".join(queued))
    return 0 if ok else EXIT_FAILED


def unfinished(items: list[Item]) -> list[Item]:
    return [i for i in items if i.state is not None and not i.state.finished and i.run_id]


def left_running(items: list[Item]) -> None:
    running = unfinished(items)
    if running:
        ids = " ".join(item.run_id for item in running if item.run_id)
        print(f"lingoloop: still running on the server: {ids}", file=sys.stderr)


def interrupted(api: Api, items: list[Item], *, cancel: bool) -> int:
    running = unfinished(items)
    if cancel:
        for item in running:
            assert item.run_id is not None
            try:
                api.cancel(item.run_id)
                print(f"{item.path.name}: cancelled (run {item.run_id})", file=sys.stderr)
            except ClientError as error:
                print(f"{item.path.name}: could not cancel: {error.message}", file=sys.stderr)
    elif running:
        ids = " ".join(item.run_id for item in running if item.run_id)
        print(
            f"\nInterrupted; {'the run keeps' if len(running) == 1 else 'the runs keep'} going "
            f"on the server. Follow again with: lingoloop watch {ids}",
            file=sys.stderr,
        )
    else:
        print("\nInterrupted.", file=sys.stderr)
    return EXIT_INTERRUPTED


# --- The other commands ----------------------------------------------------------------------


def list_runs(api: Api, args: argparse.Namespace) -> int:
    runs = api.runs(status=args.status, limit=max(1, min(args.limit, 200)))
    if args.json:
        emit_json(runs)
        return 0
    for run in runs:
        audio = run.get("audio") or {}
        seconds = (audio.get("durationMs") or 0) / 1000
        print(
            "\t".join(
                [
                    str(run.get("runId")),
                    str(run.get("status")),
                    str(run.get("createdAt", ""))[:19].replace("T", " "),
                    f"{seconds:.0f}s",
                    printable(str(audio.get("filename", ""))),
                ]
            )
        )
    return 0


def show(api: Api, args: argparse.Namespace) -> int:
    run = api.run(args.run_id)
    if args.json:
        emit_json(run)
        return 0
    state = RunState(args.run_id)
    state.apply({k: v for k, v in run.items() if k != "segments"})
    audio = run.get("audio") or {}
    print(f"run       {run.get('runId')}")
    print(f"file      {printable(str(audio.get('filename', '')))}")
    print(f"status    {describe(state)}")
    if run.get("language"):
        print(f"language  {run['language']}")
    if run.get("text"):
        print()
        print(printable(str(run["text"]), keep_newlines=True))
    return 0 if run.get("status") != "failed" else EXIT_FAILED


def get(api: Api, args: argparse.Namespace) -> int:
    content = api.transcript(args.run_id, args.format)
    if args.output == "-":
        sys.stdout.buffer.write(content)
        return 0
    folder = Path(args.output)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--output {args.output}: not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    run = api.run(args.run_id)
    filename = str((run.get("audio") or {}).get("filename", ""))
    out = folder / f"{safe_stem(filename, args.run_id)}.{args.format}"
    out.write_bytes(content)
    if args.json:
        emit_json({"runId": args.run_id, "output": str(out)})
    else:
        print(f"wrote {out}", file=sys.stderr)
    return 0


def act(verb: str, call: Callable[[Api, str], Any]) -> Callable[[Api, argparse.Namespace], int]:
    def command(api: Api, args: argparse.Namespace) -> int:
        results, failed = [], False
        for run in args.run_ids:
            try:
                answer = call(api, run)
                status = answer.get("status") if isinstance(answer, dict) else "deleted"
                results.append({"runId": run, "status": status, "error": None})
                if not args.json:
                    print(f"{run}: {status}", file=sys.stderr)
            except ClientError as error:
                if error.exit_code != EXIT_FAILED:
                    raise
                failed = True
                results.append({"runId": run, "status": None, "error": error.message})
                if not args.json:
                    print(f"{run}: could not {verb}: {error.message}", file=sys.stderr)
        if args.json:
            emit_json(results)
        return EXIT_FAILED if failed else 0

    return command


def watch(api: Api, args: argparse.Namespace) -> int:
    if not args.run_ids:
        return watch_all(api, args)
    items = []
    for run in args.run_ids:
        answer = api.run(run)
        name = str((answer.get("audio") or {}).get("filename") or run)
        item = Item(Path(printable(name)), None, run_id=run, state=RunState(run))
        items.append(item)
    interactive = sys.stdout.isatty() and not args.json
    display = Display(interactive=interactive, show_text=interactive)
    stop = threading.Event()
    try:
        with display:
            for item, run in zip(items, args.run_ids, strict=True):
                assert item.state is not None
                display.run_started(run, item.path.name, item.state)
                start_following(api, item, display, stop)
            wait_for(items)
    except KeyboardInterrupt:
        stop.set()
        return interrupted(api, items, cancel=args.cancel_on_interrupt)
    if args.json:
        emit_json([item.result() for item in items])
    else:
        for item in items:
            display.note(f"{item.path.name}: {describe(item.state)}")  # type: ignore[arg-type]
    return 0 if all(item.status == "succeeded" for item in items) else EXIT_FAILED


def watch_all(api: Api, args: argparse.Namespace) -> int:
    """Every change of any of your runs, a line each, until Ctrl-C (which ends it: 0). A
    dropped stream is resumed from the last event seen."""
    last_id: str | None = None
    failures = 0
    try:
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with connect_sse(
                    api.http, "GET", "/api/runs/events", headers=headers,
                    timeout=httpx.Timeout(10.0, read=READ_TIMEOUT),
                ) as source:  # fmt: skip
                    check(source.response)
                    if not args.json and last_id is None:
                        print("Watching your runs; Ctrl-C stops.", file=sys.stderr)
                    for event in source.iter_sse():
                        failures = 0
                        last_id = event.id or last_id
                        if event.event in ("snapshot", "update", "done"):
                            print_event(event.event, event.json(), args.json)
            except (httpx.TransportError, SSEError, ClientError) as error:
                if isinstance(error, ClientError) and not (error.status or 0) >= 500:
                    raise
                failures += 1
                if failures > 5:
                    raise Unreachable(f"The event stream of {api.url} keeps failing.") from None
                print("lingoloop: the stream broke off; reconnecting", file=sys.stderr)
                threading.Event().wait(min(0.25 * 2**failures, 5.0))
    except KeyboardInterrupt:
        return 0


def print_event(kind: str, data: Any, as_json: bool) -> None:
    runs = data.get("runs", data) if isinstance(data, dict) else data
    for run in runs if isinstance(runs, list) else [runs]:
        if not isinstance(run, dict):
            continue
        if as_json:
            print(json.dumps({"event": kind, **run}, ensure_ascii=False), flush=True)
            continue
        state = RunState(str(run.get("runId")))
        state.apply({k: v for k, v in run.items() if k not in ("newSegments", "segments")})
        name = printable(str((run.get("audio") or {}).get("filename", "")))
        print(f"{state.run_id}  {name}  {describe(state)}", flush=True)


# --- Names from the server -------------------------------------------------------------------

_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:]+")


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """Text from the server without control characters (no terminal escape sequences)."""
    return "".join(
        ch
        for ch in text
        if (keep_newlines and ch == "\n") or unicodedata.category(ch) not in ("Cc", "Cf")
    )


def safe_stem(filename: str, fallback: str) -> str:
    """A local file name from a name the server gave: its last part only, no separators or
    control characters, never hidden or empty."""
    name = _UNSAFE.sub("_", Path(filename.replace("\\", "/")).name)
    stem = Path(name).stem.strip(" .")
    return stem[:100] or fallback


def models(api: Api, args: argparse.Namespace) -> int:
    answer = api.json("GET", "/api/models")
    if args.json:
        emit_json(answer)
        return 0
    for model in answer.get("models", []):
        languages = model.get("languages") or []
        knows = "English only" if languages == ["en"] else f"{len(languages)} languages"
        size = model.get("sizeBytes")
        print(
            "\t".join(
                [
                    printable(str(model.get("name")))
                    + (" (default)" if model.get("default") else ""),
                    knows + (", translates" if model.get("translates") else ""),
                    f"{size / 2**20:.0f} MiB" if isinstance(size, int) else "",
                    printable(str(model.get("description", ""))),
                ]
            )
        )
    return 0


def detect_language(api: Api, args: argparse.Namespace) -> int:
    found = []
    for path in args.files:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    for path in args.files:
        fields = {"model": args.model} if args.model else {}
        with path.open("rb") as handle:
            answer = api.json(
                "POST", "/api/detect-language", files={"file": (path.name, handle)}, data=fields,
                timeout=httpx.Timeout(120.0, connect=10.0),
            )  # fmt: skip
        found.append({"file": str(path), **answer})
        if not args.json:
            guesses = ", ".join(
                f"{printable(str(g.get('language')))} {float(g.get('probability', 0)):.2f}"
                for g in answer.get("languages", [])[1:]
            )
            print(
                f"{path.name}\t{printable(str(answer.get('language')))} "
                f"{float(answer.get('probability', 0)):.2f}"
                + (f"\t(then {guesses})" if guesses else "")
            )
    if args.json:
        emit_json(found)
    return 0


COMMANDS: dict[str, Callable[[Api, argparse.Namespace], int]] = {
    "transcribe": transcribe,
    "models": models,
    "detect-language": detect_language,
    "runs": list_runs,
    "show": show,
    "get": get,
    "cancel": act("cancel", lambda api, run: api.cancel(run)),
    "retry": act("retry", lambda api, run: api.retry(run)),
    "delete": act("delete", lambda api, run: api.delete(run)),
    "watch": watch,
}
