"""The ``flux-async`` click group and its small commands: generate, status, upload, report,
emulator, demo. Part of the command line, never imported by the library; it takes the library's
names from ``_api``, and the emulator's only when ``emulator`` runs. ``batch`` is defined in
``_batchcommand`` and added to the group here.

Each command parses its options, opens a :class:`~flux_async.Session` and calls the public
API; the options they share live in ``_options``, the batch engine in ``_batch``, the display
in ``_display``, the shared running and reporting in ``_runtime``, the batch report in
``_report``, the demo in ``_demo``.
Machine output (file paths, URLs, ``--json``) goes to stdout; progress, notes and errors go to
stderr. API keys come from ``--api-key`` or the environment and are never printed.
"""

from __future__ import annotations

import logging
import shlex
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click

from ._api import (
    FluxError,
    GenerationRequest,
    SubmissionUncertainError,
    TaskError,
    TaskRef,
    TaskState,
    TaskStatus,
    TaskTimeoutError,
    __version__,
)
from ._batchcommand import batch
from ._options import (
    connection_options,
    download_all,
    local_images,
    open_session,
    output_options,
    request_options,
    writable_directory,
)
from ._runtime import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    Output,
    run_command,
    sole_error,
)

__all__ = ["cli", "status_command"]

_log = logging.getLogger("flux_async.cli")


# -- the group ---------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="flux-async")
def cli() -> None:
    """Generate images with Flux Kontext and Grok on toapis, apimart and Black Forest Labs.

    One job (generate), a resumable file of thousands (batch) and a page to look at its
    results (report), status checks, uploads, a local emulator of all three services
    (emulator) and a self-contained demo (demo).

    Exit codes: 0 success, 1 some job failed, 2 usage or input error, 130 interrupted.
    """


cli.add_command(batch)


# -- generate ----------------------------------------------------------------------------------


@cli.command()
@click.argument("prompt")
@request_options
@click.option(
    "-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
    help="Directory for the images (checked before anything is submitted).",
)  # fmt: skip
@connection_options
@output_options
def generate(
    prompt: str,
    model: str,
    size: str | None,
    images: tuple[str, ...],
    n: int | None,
    seed: int | None,
    output: Path,
    provider: str,
    api_key: str | None,
    base_url: str | None,
    quiet: bool,
    json_: bool,
    verbose: int,
) -> None:
    """Run one job for PROMPT, wait for it, download its images and print their paths.

    The task is named on stderr as soon as it is accepted, with the ``flux-async status``
    command that checks it (on BFL it takes the polling URL). With --json, stdout holds one
    object whether the job succeeded or not: the task (``task_id``, ``polling_url``, ``ref``)
    when one was created, and the files or the error.
    """
    out = Output.make(quiet=quiet, json_=json_)
    request = GenerationRequest(model=model, prompt=prompt, size=size, n=n, images=local_images(images), seed=seed)
    accepted: list[TaskRef] = []
    failure: list[BaseException] = []

    def failed_json(code: int) -> None:
        if out.json:
            error = failure[-1] if failure else None
            ref = accepted[0] if accepted else None
            out.data({**_task_json(provider, ref, error), "ok": False, "exit_code": code, "error": _error_json(error, code)})

    try:
        writable_directory(output)  # before anything is paid for
    except click.BadParameter as exc:
        failure.append(exc)
        failed_json(EXIT_USAGE)
        raise

    async def body() -> int:
        try:
            return await run()
        except Exception as exc:
            error = sole_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
            if error is not None and not isinstance(error, CommandError):
                failure.append(error)  # a CommandError was made from a failure recorded already
            raise

    async def run() -> int:
        started = time.monotonic()
        async with open_session(provider, api_key, base_url) as session:
            job = await session.submit(request)
            accepted.append(job.ref)
            hint = status_command(job.ref, base_url)
            _log.info("task %s accepted by %s", job.task_id, provider)
            out.info(f"submitted task {job.task_id} to {provider} (check it with: {hint})")
            spinner = out.err.status(f"waiting for {job.task_id}") if out.interactive else nullcontext()
            try:
                with spinner:
                    result = await job.result()
                _log.info("task %s succeeded after %.1f s", job.task_id, time.monotonic() - started)
                files = await download_all(session, result.images, output, job.task_id)
            except (FluxError, OSError) as exc:
                failure.append(exc)
                # The task exists and is paid for: name it, and how to look at it again.
                later = "" if _ended_for_good(exc) else f"; check it later with: {hint}"
                raise CommandError(f"task {job.task_id}: {type(exc).__name__}: {exc}{later}", EXIT_FAILED) from None
        _log.info("task %s: %d file(s) written to %s", job.task_id, len(files), output)
        if out.json:
            out.data({
                **_task_json(provider, job.ref),
                "ok": True,
                "files": [str(f) for f in files],
                "urls": [image.url for image in result.images],
                "seconds": round(time.monotonic() - started, 3),
            })  # fmt: skip
        else:
            for file in files:
                out.data(str(file))
        return EXIT_OK

    try:
        run_command(out, body, verbose=verbose)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILED
        ref = accepted[0] if accepted else None
        if code == EXIT_INTERRUPTED and ref is not None:
            out.error(f"task {ref.task_id} may still be running: {status_command(ref, base_url)}")
        if code != EXIT_OK:
            failed_json(code)
        raise


def status_command(ref: TaskRef, base_url: str | None) -> str:
    """The ``flux-async status`` command line that checks ``ref`` (BFL's takes the polling URL)."""
    words = ["flux-async", "status", ref.polling_url or ref.task_id, "--provider", ref.provider]
    if base_url:
        words += ["--base-url", base_url]
    return shlex.join(words)


def _ended_for_good(error: BaseException) -> bool:
    """True when the provider ended the task without an image: no later check can help."""
    return isinstance(error, TaskError) and not isinstance(error, TaskTimeoutError)


def _task_json(provider: str, ref: TaskRef | None, error: BaseException | None = None) -> dict[str, Any]:
    """The task part of ``generate --json``: what ``flux-async status`` needs to find it."""
    if ref is None:
        # An uncertain submission may know the task it created.
        task_id = getattr(error, "task_id", None) if isinstance(error, SubmissionUncertainError) else None
        return {"task_id": task_id, "provider": provider, "polling_url": None, "ref": None}
    return {"task_id": ref.task_id, "provider": provider, "polling_url": ref.polling_url, "ref": ref.to_dict()}


def _error_json(error: BaseException | None, code: int) -> dict[str, Any]:
    if error is None:
        kind = "Interrupted" if code == EXIT_INTERRUPTED else "Error"
        return {"kind": kind, "message": "interrupted" if code == EXIT_INTERRUPTED else "the command failed"}
    message = error.format_message() if isinstance(error, click.ClickException) else str(error)
    info: dict[str, Any] = {"kind": type(error).__name__, "message": message or type(error).__name__}
    if isinstance(error, SubmissionUncertainError) and error.client_business_id:
        info["client_business_id"] = error.client_business_id
    return info


# -- status and upload -------------------------------------------------------------------------


def _state_json(state: TaskState) -> dict[str, Any]:
    def when(value: Any) -> str | None:
        return None if value is None else str(value.isoformat())

    images = state.result.images if state.result is not None else ()
    failure = state.failure
    return {
        "task_id": state.task_id,
        "status": state.status.value,
        "raw_status": state.raw_status,
        "progress": state.progress,
        "estimated_time": state.estimated_time,
        "created_at": when(state.created_at),
        "completed_at": when(state.completed_at),
        "images": [{"url": image.url, "expires_at": when(image.expires_at)} for image in images],
        "failure": None if failure is None else {"code": failure.code, "message": failure.message},
    }


@cli.command()
@click.argument("task_id")
@click.option(
    "-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Also download the images here if the task succeeded.",
)  # fmt: skip
@connection_options
@output_options
def status(
    task_id: str,
    output: Path | None,
    provider: str,
    api_key: str | None,
    base_url: str | None,
    quiet: bool,
    json_: bool,
    verbose: int,
) -> None:
    """Check a task once. On BFL, TASK_ID is the task's polling URL.

    Exit code 0 when the task succeeded or is still running, 1 when it ended without an image.
    """
    out = Output.make(quiet=quiet, json_=json_)

    async def body() -> int:
        async with open_session(provider, api_key, base_url) as session:
            state = await session.get_task(task_id)
            files: list[Path] = []
            if output is not None and state.result is not None:
                files = await download_all(session, state.result.images, output, state.task_id)
        info = _state_json(state)
        if out.json:
            out.data({**info, "files": [str(f) for f in files]})
        else:
            line = f"{state.task_id}: {state.status.value} ({state.raw_status})"
            if state.progress is not None and not state.terminal:
                line += f", {state.progress:g}%"
            out.data(line)
            if state.failure is not None:
                code = "" if state.failure.code is None else f" [{state.failure.code}]"
                out.data(f"  failure: {state.failure.message}{code}")
            for image in info["images"]:
                expires = f" (expires {image['expires_at']})" if image["expires_at"] else ""
                out.data(f"  image: {image['url']}{expires}")
            for file in files:
                out.data(f"  file: {file}")
        ended_badly = state.terminal and state.status is not TaskStatus.SUCCEEDED
        return EXIT_FAILED if ended_badly else EXIT_OK

    run_command(out, body, verbose=verbose)


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@connection_options
@output_options
def upload(
    path: Path,
    provider: str,
    api_key: str | None,
    base_url: str | None,
    quiet: bool,
    json_: bool,
    verbose: int,
) -> None:
    """Upload a local image and print its URL (toapis and apimart; BFL takes images inline)."""
    out = Output.make(quiet=quiet, json_=json_)

    async def body() -> int:
        async with open_session(provider, api_key, base_url) as session:
            url = await session.upload(path)
        out.data({"url": url, "provider": provider} if out.json else url)
        return EXIT_OK

    run_command(out, body, verbose=verbose)


# -- report ----------------------------------------------------------------------------------------


@cli.command("report")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@output_options
def report_command(directory: Path, quiet: bool, json_: bool, verbose: int) -> None:
    """Write DIRECTORY/report.html for a batch's output directory and print its path.

    One self-contained page (no network, nothing but the batch's own images): the images with
    their prompts, model, size, seed and time to result; the failures grouped by kind with
    their messages; the totals and a chart of time to result.
    """
    from ._report import write_report

    out = Output.make(quiet=quiet, json_=json_)
    try:
        path = write_report(directory)
    except FileNotFoundError as exc:
        out.error(str(exc))
        raise SystemExit(EXIT_USAGE) from None
    except OSError as exc:
        out.error(f"cannot write the report: {exc}")
        raise SystemExit(EXIT_FAILED) from None
    out.data({"report": str(path)} if out.json else str(path))


# -- emulator and demo ---------------------------------------------------------------------------


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("options", nargs=-1, type=click.UNPROCESSED)
def emulator(options: tuple[str, ...]) -> None:
    """Run the local emulator of toapis, apimart and BFL in the foreground (Ctrl-C stops it).

    Takes the options of ``python -m flux_async.emulator`` (--port, --host, --scenario, --seed,
    --key, --any-key, --public-url, --json; see --help) and prints the same things; it works
    without the cli extra too.
    """
    from ..emulator.__main__ import main as emulator_main

    raise SystemExit(emulator_main(list(options), prog="flux-async emulator"))


@cli.command()
@click.option(
    "-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Directory for the images (default: a new ./flux-async-demo directory).",
)  # fmt: skip
@click.option("--jobs", type=click.IntRange(3, 300), default=24, show_default=True, help="How many jobs to run.")
@output_options
def demo(output: Path | None, jobs: int, quiet: bool, json_: bool, verbose: int) -> None:
    """Run a batch on all three services against a local emulator: no key, no network.

    Shows the progress display and writes real images. One prompt is refused by moderation
    on purpose, to show how a failure is reported; that expected failure leaves the exit code
    at 0 (any other failure makes it 1).
    """
    from ._demo import run_demo

    out = Output.make(quiet=quiet, json_=json_)

    async def body() -> int:
        return await run_demo(output, jobs=jobs, out=out)

    run_command(out, body, verbose=verbose)
