"""Parsing and validating uploaded task datasets (JSONL or CSV) into normalised rows."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from adapters_store.errors import InvalidInput
from adapters_store.records import InputKind

MAX_REPORTED_LINES = 20
# A row is {"text", "text_pair", "label"}: anything nested deeper is not a row.
MAX_JSON_DEPTH = 8


@dataclass(frozen=True)
class Row:
    text: str
    label: str
    text_pair: str | None = None

    def to_dict(self) -> dict[str, str]:
        out = {"text": self.text, "label": self.label}
        if self.text_pair is not None:
            out["text_pair"] = self.text_pair
        return out


@dataclass(frozen=True)
class ParsedDataset:
    rows: list[Row]
    format: Literal["jsonl", "csv"]
    input_kind: InputKind

    @property
    def label_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.label for r in self.rows).items()))

    def to_jsonl(self) -> bytes:
        lines = (json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in self.rows)
        return "".join(lines).encode()


def detect_format(filename: str, content_type: str | None) -> Literal["jsonl", "csv"]:
    name = filename.lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    if content_type and "csv" in content_type:
        return "csv"
    if content_type and ("json" in content_type):
        return "jsonl"
    raise InvalidInput(
        f"cannot tell the format of {filename!r}: name it .jsonl or .csv",
        {"filename": filename, "content_type": content_type},
    )


@dataclass(frozen=True)
class FieldMap:
    """Which column (CSV) or key (JSONL) holds each part of a row. With the default names any
    other column is an error; a mapping the user gave names the columns that matter, so the
    other columns of their file (ids, metadata) are ignored."""

    text: str = "text"
    label: str = "label"
    text_pair: str = "text_pair"

    @property
    def mapped(self) -> bool:
        return self != DEFAULT_FIELDS

    def names(self) -> set[str]:
        return {self.text, self.label, self.text_pair}

    def check(self) -> FieldMap:
        names = [self.text, self.label, self.text_pair]
        if len(set(names)) != 3:
            raise InvalidInput("text_field, label_field and text_pair_field must differ",
                               {"fields": names})
        bad = [n for n in names if not n.strip() or len(n) > 100]
        if bad:
            raise InvalidInput("a field name must be 1 to 100 characters", {"fields": bad})
        return self


DEFAULT_FIELDS = FieldMap()


def _row_from_obj(obj: object, max_chars: int, fields: FieldMap = DEFAULT_FIELDS) -> Row:
    if not isinstance(obj, dict):
        raise ValueError("each line must be a JSON object")
    if not fields.mapped:
        unknown = set(obj) - fields.names()
        if unknown:
            raise ValueError(f"unknown fields: {sorted(unknown)} (name the columns to read "
                             "with text_field / label_field / text_pair_field)")
    text, label, pair = obj.get(fields.text), obj.get(fields.label), obj.get(fields.text_pair)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{fields.text!r} must be a non-empty string")
    if isinstance(label, (int, bool)) and not isinstance(label, bool):
        label = str(label)
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"{fields.label!r} must be a non-empty string or integer")
    if pair is not None and (not isinstance(pair, str) or not pair.strip()):
        raise ValueError(f"{fields.text_pair!r} must be a non-empty string when present")
    if len(text) > max_chars or (pair is not None and len(pair) > max_chars):
        raise ValueError(f"text longer than {max_chars} characters "
                         "(the server's ADAPTERD_MAX_INPUT_CHARS setting raises it)")
    if len(label) > 200:
        raise ValueError(f"{fields.label!r} longer than 200 characters")
    return Row(text=text, label=label.strip(), text_pair=pair)


def _nesting(line: str) -> int:
    """Deepest bracket nesting of a JSON text (outside strings), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in line:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _iter_jsonl(raw: str, max_chars: int, errors: list[dict],
                fields: FieldMap) -> list[tuple[int, Row]]:
    rows = []
    # A row is one flat object of strings; the limits keep a hostile line from costing a
    # recursion error or unbounded parse time.
    max_line = 3 * max_chars + 1024
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        if len(line) > max_line:
            errors.append({"line": lineno, "error": f"line longer than {max_line} characters"})
            continue
        if _nesting(line) > MAX_JSON_DEPTH:
            errors.append({"line": lineno,
                           "error": f"JSON nested deeper than {MAX_JSON_DEPTH} levels"})
            continue
        try:
            rows.append((lineno, _row_from_obj(json.loads(line), max_chars, fields)))
        except (ValueError, json.JSONDecodeError) as exc:
            errors.append({"line": lineno, "error": str(exc)})
    return rows


def _iter_csv(raw: str, max_chars: int, errors: list[dict],
              fields: FieldMap) -> list[tuple[int, Row]]:
    reader = csv.DictReader(io.StringIO(raw, newline=""))
    header = reader.fieldnames or []
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        # csv.DictReader keeps only the last of two equal columns: refuse instead of guessing.
        raise InvalidInput(
            f"the CSV header names columns more than once: {duplicates}",
            {"lines": [{"line": 1, "error": f"header is {header}"}]},
        )
    if fields.text not in header or fields.label not in header:
        raise InvalidInput(
            f"CSV needs a header row with columns {fields.text},{fields.label} (and optionally "
            f"{fields.text_pair}); other names can be mapped with text_field, label_field and "
            "text_pair_field",
            {"lines": [{"line": 1, "error": f"header is {header}"}]},
        )
    rows = []
    for record in reader:
        lineno = reader.line_num
        try:
            if None in record:
                raise ValueError("more fields than the header has")
            obj = {k: v for k, v in record.items() if k in fields.names()}
            if obj.get(fields.text_pair) == "":
                obj.pop(fields.text_pair)
            extra = set(record) - fields.names()
            if extra and not fields.mapped:
                raise ValueError(f"unknown columns: {sorted(extra)} (name the columns to read "
                                 "with text_field / label_field / text_pair_field)")
            rows.append((lineno, _row_from_obj(obj, max_chars, fields)))
        except ValueError as exc:
            errors.append({"line": lineno, "error": str(exc)})
    return rows


def parse_dataset(
    data: bytes,
    fmt: Literal["jsonl", "csv"],
    *,
    min_rows_per_label: int,
    max_chars: int,
    max_rows: int,
    fields: FieldMap = DEFAULT_FIELDS,
) -> ParsedDataset:
    """Validate every row; raise InvalidInput naming the offending lines, or return the dataset."""
    try:
        raw = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InvalidInput(f"the file is not valid UTF-8 (line {line})", {
            "lines": [{"line": line, "error": f"invalid UTF-8 byte {data[exc.start]:#04x}"}],
            "byte_offset": exc.start}) from exc
    errors: list[dict] = []
    numbered = (_iter_jsonl if fmt == "jsonl" else _iter_csv)(raw, max_chars, errors,
                                                               fields.check())
    if errors:
        raise InvalidInput(
            f"{len(errors)} invalid line(s) in the {fmt.upper()} upload",
            {"lines": errors[:MAX_REPORTED_LINES], "invalid_lines": len(errors)},
        )
    if not numbered:
        raise InvalidInput("the upload has no rows", {"lines": []})
    if len(numbered) > max_rows:
        raise InvalidInput(
            f"the upload has {len(numbered)} rows; the limit is {max_rows} "
            "(the server's ADAPTERD_MAX_TRAIN_ROWS setting raises it)",
            {"rows": len(numbered), "max_rows": max_rows, "setting": "ADAPTERD_MAX_TRAIN_ROWS"})
    with_pair = [n for n, r in numbered if r.text_pair is not None]
    if with_pair and len(with_pair) != len(numbered):
        without = [n for n, r in numbered if r.text_pair is None]
        raise InvalidInput(
            "either every row has 'text_pair' or none does",
            {"lines": [{"line": n, "error": "missing text_pair"}
                       for n in without[:MAX_REPORTED_LINES]]},
        )
    parsed = ParsedDataset(
        rows=[r for _, r in numbered], format=fmt, input_kind="pair" if with_pair else "single"
    )
    counts = parsed.label_counts
    if len(counts) < 2:
        raise InvalidInput("a task needs at least 2 distinct labels", {"label_counts": counts})
    scarce = {label: n for label, n in counts.items() if n < min_rows_per_label}
    if scarce:
        raise InvalidInput(
            f"every label needs at least {min_rows_per_label} rows; "
            + ", ".join(f"{label!r} has {n}" for label, n in sorted(scarce.items())[:10]),
            {"label_counts": counts, "too_few": scarce, "min_rows_per_label": min_rows_per_label,
             "setting": "ADAPTERD_MIN_ROWS_PER_LABEL"},
        )
    return parsed


def load_rows(jsonl: bytes) -> list[Row]:
    """Read back a dataset blob that parse_dataset already normalised."""
    rows = []
    for line in jsonl.decode("utf-8").splitlines():
        obj = json.loads(line)
        rows.append(Row(text=obj["text"], label=obj["label"], text_pair=obj.get("text_pair")))
    return rows
