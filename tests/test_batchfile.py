"""Batch input files: parsing .txt / .jsonl / .csv, line numbers, defaults, and the checking pass."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flux_async import GenerationRequest
from flux_async.cli._batchentry import Defaults, Entry, LineError
from flux_async.cli._batchfile import BatchFileError, check_file, detect_format, read_entries

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PRO = Defaults(model="flux-kontext-pro")


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def entries(path: Path, defaults: Defaults = PRO) -> list[Entry | LineError]:
    return list(read_entries(path, defaults))


def only_entries(items: list[Entry | LineError]) -> list[Entry]:
    assert all(isinstance(item, Entry) for item in items), items
    return [item for item in items if isinstance(item, Entry)]


# -- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("a.txt", "txt"), ("a.JSONL", "jsonl"), ("a.ndjson", "jsonl"), ("dir.x/a.csv", "csv")],
)
def test_detect_format_by_suffix(name: str, fmt: str) -> None:
    assert detect_format(name) == fmt


@pytest.mark.parametrize("name", ["prompts", "prompts.json", "prompts.tsv"])
def test_unknown_suffix_is_a_file_error(name: str) -> None:
    with pytest.raises(BatchFileError, match=r"unknown file type"):
        detect_format(name)


def test_missing_file_is_a_file_error(tmp_path: Path) -> None:
    with pytest.raises(BatchFileError, match="cannot open"):
        entries(tmp_path / "nope.txt")


# -- .txt --------------------------------------------------------------------------------------


def test_txt_one_prompt_per_line_with_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "p.txt", "a red fox\n\n# a comment\n  a blue whale  \r\nlast line")
    defaults = Defaults(model="flux-kontext-max", size="1:1", seed=7)
    found = only_entries(entries(path, defaults))
    assert [(e.index, e.line, e.request.prompt) for e in found] == [
        (0, 1, "a red fox"),
        (1, 4, "a blue whale"),
        (2, 5, "last line"),
    ]
    assert found[0].request == GenerationRequest(
        model="flux-kontext-max", prompt="a red fox", size="1:1", seed=7
    )


def test_txt_without_a_model_reports_each_line(tmp_path: Path) -> None:
    path = write(tmp_path, "p.txt", "one\ntwo\n")
    found = entries(path, Defaults())
    assert found == [
        LineError(0, 1, "model", "no model: name one in the file or with --model"),
        LineError(1, 2, "model", "no model: name one in the file or with --model"),
    ]


def test_undecodable_line_is_reported_with_its_number(tmp_path: Path) -> None:
    path = write(tmp_path, "p.txt", b"fine\nbad \xff here\nfine again\n")
    found = entries(path)
    assert isinstance(found[1], LineError)
    assert found[1].line == 2
    assert "UTF-8" in found[1].message
    assert [e.request.prompt for e in found if isinstance(e, Entry)] == ["fine", "fine again"]
    assert [e.index for e in found] == [0, 1, 2]


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "p.txt", "\ufeffa fox\n".encode())
    assert only_entries(entries(path))[0].request.prompt == "a fox"


# -- .jsonl ------------------------------------------------------------------------------------


def test_jsonl_fields_override_defaults_and_null_means_default(tmp_path: Path) -> None:
    lines = [
        {"prompt": "a", "size": "4:3", "safety_tolerance": 5, "extra": {"x": 1}},
        {"prompt": "b", "model": "grok-4-1-image", "n": 2, "size": None},
        {"prompt": "c", "prompt_upsampling": True, "response_format": "jpg"},
    ]
    path = write(tmp_path, "r.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    found = only_entries(entries(path, Defaults(model="flux-kontext-pro", size="1:1")))
    assert [e.request for e in found] == [
        GenerationRequest(
            model="flux-kontext-pro", prompt="a", size="4:3", safety_tolerance=5, extra={"x": 1}
        ),
        GenerationRequest(model="grok-4-1-image", prompt="b", size="1:1", n=2),
        GenerationRequest(
            model="flux-kontext-pro",
            prompt="c",
            size="1:1",
            prompt_upsampling=True,
            response_format="jpg",
        ),
    ]
    assert [e.line for e in found] == [1, 2, 3]


def test_jsonl_images_resolve_against_the_file_directory(tmp_path: Path) -> None:
    sub = tmp_path / "jobs"
    sub.mkdir()
    lines = [
        {"prompt": "a", "images": "in/cat.png"},
        {"prompt": "b", "images": ["https://example.com/x.png", "/abs/y.png"]},
    ]
    path = write(sub, "r.jsonl", "\n".join(json.dumps(x) for x in lines))
    found = only_entries(entries(path, Defaults(model="grok-4-1-image", images=("/flag.png",))))
    assert found[0].request.images == (str(sub / "in" / "cat.png"),)
    assert found[1].request.images == ("https://example.com/x.png", "/abs/y.png")


def test_jsonl_default_images_apply_only_when_a_line_names_none(tmp_path: Path) -> None:
    path = write(tmp_path, "r.jsonl", '{"prompt": "a"}\n{"prompt": "b", "images": []}\n')
    found = only_entries(entries(path, Defaults(model="flux-kontext-pro", images=("/flag.png",))))
    assert found[0].request.images == ("/flag.png",)
    assert found[1].request.images == ()


@pytest.mark.parametrize(
    ("line", "field", "text"),
    [
        ('{"promt": "a"}', "promt", "unknown field"),
        ('{"size": "1:1"}', "prompt", "missing"),
        ('{"prompt": null}', "prompt", "missing"),
        ('{"prompt": "a", "images": 3}', "images", "string or a list of strings"),
        ('{"prompt": "a", "images": ["ok", 1]}', "images", "string or a list of strings"),
        ('{"prompt": "a", "extra": [1]}', "extra", "JSON object"),
        ('["a"]', None, "expected a JSON object"),
        ('{"prompt": "a",', None, "not valid JSON"),
    ],
)
def test_jsonl_line_errors_name_line_and_field(
    tmp_path: Path, line: str, field: str | None, text: str
) -> None:
    path = write(tmp_path, "r.jsonl", '{"prompt": "fine"}\n' + line + "\n")
    found = entries(path)
    error = found[1]
    assert isinstance(error, LineError)
    assert (error.index, error.line, error.field) == (1, 2, field)
    assert text in error.message
    assert str(error).startswith("line 2: ")


# -- .csv --------------------------------------------------------------------------------------


def test_csv_rows_typed_cells_and_multiline_records(tmp_path: Path) -> None:
    content = (
        "model,prompt,n,images,prompt_upsampling,extra\n"
        'grok-4-1-image,"two\nlines",2,https://e.com/a.png | b.png,,\n'
        ",,,,,\n"
        'flux-kontext-pro,plain,,,YES,"{""k"": 1}"\n'
    )
    path = write(tmp_path, "r.csv", content)
    found = only_entries(entries(path, Defaults(model="unused")))
    assert [(e.index, e.line) for e in found] == [(0, 2), (1, 5)]
    assert found[0].request == GenerationRequest(
        model="grok-4-1-image",
        prompt="two\nlines",
        n=2,
        images=("https://e.com/a.png", str(tmp_path / "b.png")),
    )
    assert found[1].request == GenerationRequest(
        model="flux-kontext-pro", prompt="plain", prompt_upsampling=True, extra={"k": 1}
    )


@pytest.mark.parametrize(
    ("row", "field", "text"),
    [
        ("x,two", "n", "not an integer"),
        ("x,1.5", "n", "not an integer"),
        ("x,1,extra", None, "3 cells for 2 columns"),
        (",2", "prompt", "missing"),
    ],
)
def test_csv_cell_errors(tmp_path: Path, row: str, field: str | None, text: str) -> None:
    path = write(tmp_path, "r.csv", f"prompt,n\nok,1\n{row}\n")
    error = entries(path)[1]
    assert isinstance(error, LineError)
    assert (error.line, error.field) == (3, field)
    assert text in error.message


def test_csv_boolean_cells(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "prompt,prompt_upsampling\na,no\nb,maybe\n")
    found = entries(path)
    assert isinstance(found[0], Entry)
    assert found[0].request.prompt_upsampling is False
    assert isinstance(found[1], LineError)
    assert found[1].field == "prompt_upsampling"


@pytest.mark.parametrize(
    ("header", "text"),
    [
        ("prompt,colour", "unknown column(s) 'colour'"),
        ("model,size", "no 'prompt' column"),
        ("prompt,prompt", "named twice"),
    ],
)
def test_csv_bad_header_is_a_file_error(tmp_path: Path, header: str, text: str) -> None:
    path = write(tmp_path, "r.csv", header + "\na,b\n")
    with pytest.raises(BatchFileError, match="line 1") as info:
        entries(path)
    assert text in str(info.value)


def test_csv_undecodable_record_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", b"prompt\nfine\nbad\xfe\nfine\n")
    found = entries(path)
    assert isinstance(found[1], LineError)
    assert found[1].line == 3
    assert isinstance(found[2], Entry)
    assert found[2].line == 4


def test_empty_csv_has_no_requests(tmp_path: Path) -> None:
    assert entries(write(tmp_path, "r.csv", "")) == []


# -- streaming and checking ----------------------------------------------------------------------


class RecordingHasher:
    def __init__(self) -> None:
        self.fed: list[bytes] = []

    def update(self, data: bytes, /) -> None:
        self.fed.append(data)


def test_reading_is_lazy(tmp_path: Path) -> None:
    path = write(tmp_path, "p.txt", "".join(f"prompt {i}\n" for i in range(10_000)))
    hasher = RecordingHasher()
    stream = read_entries(path, PRO, fingerprint=hasher)
    first = next(stream)
    assert isinstance(first, Entry)
    # Only the first line was read (the file object buffers, but the parser pulled one line).
    assert hasher.fed == [b"prompt 0\n"]
    stream.close()


def test_check_file_reports_every_bad_line_with_field(tmp_path: Path) -> None:
    image = write(tmp_path, "cat.png", PNG)
    lines = [
        {"prompt": "ok"},
        {"prompt": "bad size", "size": "5:5"},
        {"prompt": "ok too", "images": image.name},
        {"prompt": "missing image", "images": "nope.png"},
        {"prompt": "ok", "model": "grok-4-1-image", "n": 4},
        {"prompt": "bad n", "model": "grok-4-1-image", "n": 3},
        {"prompt": "unknown model", "model": "dall-e"},
    ]
    path = write(tmp_path, "r.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    report = check_file(path, PRO, "toapis")
    assert not report.ok
    assert report.requests == 7
    assert [(e.line, e.field) for e in report.errors] == [
        (2, "size"),
        (4, "images[0]"),
        (6, "n"),
        (7, "model"),
    ]
    assert report.error_count == 4
    assert "no such file" in report.errors[1].message
    assert report.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()


def test_check_file_uses_the_provider_catalog(tmp_path: Path) -> None:
    path = write(tmp_path, "r.jsonl", '{"prompt": "x", "model": "grok-4-1-image"}\n')
    assert check_file(path, PRO, "toapis").ok
    report = check_file(path, PRO, "bfl")
    assert [(e.line, e.field) for e in report.errors] == [(1, "model")]


def test_check_file_caps_listed_errors_but_counts_all(tmp_path: Path) -> None:
    path = write(tmp_path, "p.txt", "x\n" * 30)
    report = check_file(path, Defaults(), "toapis", max_errors=5)
    assert report.error_count == 30
    assert len(report.errors) == 5
    assert [e.line for e in report.errors] == [1, 2, 3, 4, 5]


_prompt = (
    st.text(
        alphabet=st.characters(
            blacklist_categories=("Cs", "Cc", "Zl", "Zp"),
            blacklist_characters="\x85\x0b\x0c\x1c\x1d\x1e",
        ),
        min_size=1,
        max_size=40,
    )
    .map(str.strip)
    .filter(lambda p: bool(p) and not p.startswith("#"))
)


@given(prompts=st.lists(_prompt, max_size=20))
def test_txt_round_trip(tmp_path_factory: pytest.TempPathFactory, prompts: list[str]) -> None:
    path = tmp_path_factory.mktemp("rt") / "p.txt"
    path.write_text("".join(p + "\n" for p in prompts), encoding="utf-8")
    found = only_entries(entries(path))
    assert [e.request.prompt for e in found] == prompts
    assert [e.index for e in found] == list(range(len(prompts)))
    assert [e.line for e in found] == list(range(1, len(prompts) + 1))


@given(
    prompts=st.lists(
        st.text(min_size=1, max_size=30).filter(lambda s: "\x00" not in s), max_size=10
    )
)
def test_jsonl_round_trip(tmp_path_factory: pytest.TempPathFactory, prompts: list[str]) -> None:
    path = tmp_path_factory.mktemp("rt") / "r.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    assert [e.request.prompt for e in only_entries(entries(path))] == prompts
