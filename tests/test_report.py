"""``flux-async report DIR``: the batch report, checked with an HTML parser (one figure per
image, every prompt escaped, failures listed, nothing fetched from outside) and, where Debian's
``chromium`` is installed, opened in a real headless browser.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flux_async.cli._app import cli
from flux_async.cli._report import REPORT_NAME, read_batch, write_report
from flux_async.emulator import DEFAULT_API_KEY, Duration, EmulatorProcess, Scenario

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c63f8cfc0f01f0005"
    "0001ffa65f7a4f0000000049454e44ae426082"
)
HOSTILE = "<script>alert('pwned')</script> & \"quotes\" <img src=x onerror=alert(1)>"
PROMPTS = [
    "a red fox in fresh snow",
    HOSTILE,
    "a lighthouse at dusk",
    "</figcaption></figure><h1>injected</h1>",
    "a bowl of ramen",
    "a cat in a tiny hat",
]


class Page(HTMLParser):
    """What a browser would see: tags with their attributes, and the text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.open: list[str] = []
        self.by_tag: dict[str, list[str]] = {}
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in ("img", "meta", "rect", "line", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.open:
            while self.open and self.open.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        for tag in self.open:
            self.by_tag.setdefault(tag, []).append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]

    def texts(self, tag: str) -> list[str]:
        return self.by_tag.get(tag, [])


def make_batch(root: Path, *, change_input: bool = False) -> Path:
    """A finished batch as ``flux-async batch`` leaves it: input, ledger, results, images."""
    source = root / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": p, "seed": 40 + i}) + "\n" for i, p in enumerate(PROMPTS)))
    out = root / "run"
    out.mkdir()
    run = "0123456789abcdef"
    meta = {
        "journal": "flux-async batch journal", "version": 2, "provider": "bfl", "input": str(source),
        "fingerprint": hashlib.sha256(source.read_bytes()).hexdigest(), "requests": len(PROMPTS) + 1,
        "defaults": {"model": "flux-kontext-pro", "size": "1:1", "n": None, "images": [], "seed": None},
        "run": run,
    }  # fmt: skip
    ledger = [{"ledger": "flux-async ledger", "version": 1, "meta": meta}]
    results: list[dict[str, Any]] = []
    failures = {3: ("ModerationError", "moderated: Request Moderated"), 5: ("TaskFailedError", "Generation failed: <internal> error")}
    for index in range(len(PROMPTS)):
        key = f"{run}-{index}"
        ledger.append({"op": "intent", "key": key, "provider": "bfl", "model": "flux-kontext-pro", "digest": "d", "at": 1000.0 + index})
        ledger.append({"op": "settle", "key": key, "status": "failed" if index in failures else "succeeded", "at": 1003.0 + 2 * index})
        task = f"task-{index}"
        if index in failures:
            kind, message = failures[index]
            results.append({"index": index, "line": index + 1, "task_id": task, "status": "failed", "files": [], "error": {"kind": kind, "message": message}})
        else:
            name = f"{index}-{task}.png"
            (out / name).write_bytes(PNG)
            results.append({"index": index, "line": index + 1, "task_id": task, "status": "succeeded", "files": [name], "error": None})
    results.append({"index": 99, "line": 100, "task_id": None, "status": "failed", "files": [], "error": {"kind": "BadRequestError", "message": "refused: <b>bad</b>"}})
    (out / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ledger))
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    if change_input:
        source.write_text(source.read_text() + '{"prompt": "one more"}\n')
    return out


@pytest.fixture
def batch_dir(tmp_path: Path) -> Path:
    return make_batch(tmp_path)


def test_one_figure_per_image_with_its_prompt_and_facts(batch_dir: Path) -> None:
    report = write_report(batch_dir)
    assert report == batch_dir / REPORT_NAME
    page = Page(report.read_text(encoding="utf-8"))
    figures = page.all("figure")
    images = page.all("img")
    assert len(figures) == len(images) == 4
    for img in images:
        assert img["src"] is not None
        assert (batch_dir / img["src"]).is_file()  # relative to the page
    captions = " ".join(page.texts("figcaption"))
    for index in (0, 1, 2, 4):
        assert PROMPTS[index] in captions
        assert f"#{index} (line {index + 1})" in captions
        assert str(40 + index) in captions  # the seed
    assert "flux-kontext-pro" in captions
    assert "1:1" in captions
    assert "3.0 s" in captions  # request 0: intent at 1000, settled at 1003


def test_every_prompt_is_escaped(batch_dir: Path) -> None:
    html = write_report(batch_dir).read_text(encoding="utf-8")
    page = Page(html)
    assert page.all("script") == []
    assert [attrs for _, attrs in page.tags if any(k.startswith("on") for k in attrs)] == []
    assert len(page.all("h1")) == 1  # the page's own title, not the injected one
    text = "".join(page.text)
    for prompt in PROMPTS:
        assert prompt in text  # shown as text, exactly as typed
    assert HOSTILE not in html
    alts = [img["alt"] for img in page.all("img")]
    assert HOSTILE in alts


def test_failures_are_grouped_by_kind_with_their_messages(batch_dir: Path) -> None:
    page = Page(write_report(batch_dir).read_text(encoding="utf-8"))
    kinds = {attrs["data-kind"] for attrs in page.all("details")}
    assert kinds == {"ModerationError", "TaskFailedError", "BadRequestError"}
    listed = " ".join(page.texts("li"))
    assert "#3 (line 4) · task task-3" in listed
    assert "moderated: Request Moderated" in listed
    assert "Generation failed: <internal> error" in listed
    assert "#99 (line 100) · no task" in listed
    assert "refused: <b>bad</b>" in listed
    assert PROMPTS[3] in listed


def test_totals_and_the_chart(batch_dir: Path) -> None:
    page = Page(write_report(batch_dir).read_text(encoding="utf-8"))
    totals = " ".join(page.texts("section")[:40])
    for expected in ("7", "jobs", "4", "succeeded", "3", "failed", "images", "requests per job",
                     "not recorded", "wall time", "13.0 s"):  # first intent 1000, last settle 1013
        assert expected in totals
    [svg] = page.all("svg")
    assert svg["role"] == "img"
    assert len(page.all("rect")) >= 1
    assert "median" in " ".join(page.texts("svg"))


def test_the_page_fetches_nothing_from_outside(batch_dir: Path) -> None:
    page = Page(write_report(batch_dir).read_text(encoding="utf-8"))
    for tag in ("link", "iframe", "object", "embed", "script"):
        assert page.all(tag) == []
    for _, attrs in page.tags:
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            assert not value.startswith(("http:", "https:", "//")), value
    [csp] = [m for m in page.all("meta") if m.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in (csp["content"] or "")


def test_a_changed_input_file_shows_no_prompts(tmp_path: Path) -> None:
    out = make_batch(tmp_path, change_input=True)
    batch = read_batch(out)
    assert all(job.prompt is None for job in batch.jobs)
    assert any("changed since the batch ran" in note for note in batch.notes)
    page = Page(write_report(out).read_text(encoding="utf-8"))
    assert len(page.all("figure")) == 4
    assert PROMPTS[0] not in "".join(page.text)


def test_a_directory_without_results_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["report", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 2
    assert "results.jsonl" in result.stderr
    assert not (tmp_path / REPORT_NAME).exists()


# -- a real batch, then its report (and a real browser, where there is one) ---------------------------


@pytest.fixture(scope="module")
def real_batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real")
    source = root / "prompts.txt"
    source.write_text("\n".join(["a red fox", HOSTILE, "blocked: a moderated one", "a lighthouse"]) + "\n")
    scenario = Scenario(duration=Duration.fixed(0.05), blocked_terms=("blocked",))
    with EmulatorProcess(scenario) as emu:
        args = ["batch", str(source), "-o", str(root / "run"), "-q", "--provider", "bfl",
                "--base-url", emu.base_url("bfl"), "--api-key", DEFAULT_API_KEY]
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 1, result.output  # the moderated one
    made = CliRunner().invoke(cli, ["report", str(root / "run")], catch_exceptions=False)
    assert made.exit_code == 0, made.output
    assert made.stdout.strip() == str(root / "run" / REPORT_NAME)
    return root / "run"


def test_the_report_of_a_real_batch(real_batch: Path) -> None:
    page = Page((real_batch / REPORT_NAME).read_text(encoding="utf-8"))
    records = [json.loads(line) for line in (real_batch / "results.jsonl").read_text().splitlines()]
    files = [f for r in records for f in r["files"]]
    assert len(files) == 3
    assert sorted(img["src"] or "" for img in page.all("img")) == sorted(files)
    assert HOSTILE in "".join(page.texts("figcaption"))
    assert [a["data-kind"] for a in page.all("details")] == ["ModerationError"]
    assert len(page.all("rect")) >= 1  # times to result come from the ledger


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_a_headless_browser_renders_the_report(real_batch: Path, tmp_path: Path) -> None:
    url = (real_batch / REPORT_NAME).as_uri()
    common = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=50)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = Page(dom.stdout)
    assert len(page.all("figure")) == 3
    assert page.all("script") == []
    assert HOSTILE in "".join(page.texts("figcaption"))
    shot = tmp_path / "report.png"
    done = subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert shot.stat().st_size > 10_000
