"""Reading and writing the reviewed YAML case files.

Reading validates everything before anything is written anywhere: the first
problem raises :class:`CaseFileError` with one line naming the file, and the
line/column (YAML syntax) or the field (schema) at fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import CaseFileError
from .models import Case

CASE_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class LoadedCase:
    case: Case
    path: Path


def discover(paths: Iterable[Path]) -> list[Path]:
    """The case files named: files as given, directories searched (not recursively)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix in CASE_SUFFIXES and p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise CaseFileError(f"{path}: no such file or directory")
    return found


def _field_path(location: tuple) -> str:
    out = ""
    for part in location:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def read_case(path: Path) -> Case:
    import yaml

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CaseFileError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    if "\x00" in text:
        raise CaseFileError(f"{path}: contains NUL bytes; a case file must be text")
    try:
        # libyaml's parser when PyYAML has it: the same safe subset, ~10x faster than pure Python
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CaseFileError(f"{path}{where}: YAML syntax error: {problem}") from None
    return validate_document(data, str(path))


def validate_document(data: Any, where: str) -> Case:
    """A case from parsed data (a YAML file, an API request body), or one line naming the bad field."""
    from pydantic import ValidationError

    if not isinstance(data, dict):
        raise CaseFileError(f"{where}: expected a mapping of case fields, found {type(data).__name__}")
    try:
        return Case.model_validate(data)
    except ValidationError as exc:
        raise CaseFileError(f"{where}: {_first_problem(exc)}") from None


def _first_problem(exc) -> str:
    """One line for the most useful error: an unknown key first (it is usually a typo of a missing one)."""
    import difflib

    errors = exc.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    error = unknown[0] if unknown else errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if unknown:
        known = _known_fields(error["loc"][:-1])
        guess = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        hint = f"; did you mean '{guess[0]}'?" if guess else ""
        return f"field '{_field_path(error['loc'])}': unknown field{hint}{more}"
    message = "missing required field" if error["type"] == "missing" else error["msg"]
    return f"field '{_field_path(error['loc'])}': {message}{more}"


def _known_fields(location: tuple) -> list[str]:
    """Field names of the model at ``location`` (the case itself, or a nested part of it)."""
    model = Case
    for part in location:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        inner = getattr(annotation, "__args__", (annotation,))
        model = next((a for a in inner if hasattr(a, "model_fields")), None)
        if model is None:
            return []
    return list(model.model_fields)


def iter_cases(paths: Iterable[Path]) -> Iterator[LoadedCase]:
    """Read and validate the files one at a time, in :func:`discover` order.

    Lazy so an ingest of 100k files holds one batch of cases, not all of them;
    the caller writes inside one transaction, so the first bad file (raised
    here, naming it) still leaves the database as it was. A duplicate id is an
    error naming both files.
    """
    seen: dict[str, Path] = {}
    for path in discover(paths):
        case = read_case(path)
        if case.id in seen:
            raise CaseFileError(f"{path}: field 'id': duplicate id '{case.id}' (also in {seen[case.id]})")
        if case.id != path.stem:
            raise CaseFileError(f"{path}: field 'id': '{case.id}' does not match the file name '{path.stem}'")
        seen[case.id] = path
        yield LoadedCase(case, path)


def load_cases(paths: Iterable[Path], *, include_drafts: bool = True) -> list[LoadedCase]:
    """Every file validated (see :func:`iter_cases`), drafts left out unless asked for."""
    return [loaded for loaded in iter_cases(paths) if include_drafts or loaded.case.status == "reviewed"]


def _prune_empty(value: Any) -> Any:
    if isinstance(value, dict):
        pruned = {k: _prune_empty(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ({}, [], None)}
    if isinstance(value, list):
        return [_prune_empty(v) for v in value]
    return value


def case_yaml(case: Case) -> str:
    """Canonical YAML of a case: schema field order, empty parts left out, Unicode kept."""
    import yaml

    data = _prune_empty(case.model_dump(mode="json", exclude_none=True))
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=100)


def write_cases(cases: Iterable[Case], directory: Path, *, overwrite: bool = False) -> list[Path]:
    """Write one ``<id>.yaml`` per case. Refuses to clobber existing files unless told to."""
    cases = list(cases)
    directory.mkdir(parents=True, exist_ok=True)
    targets = [directory / f"{case.id}.yaml" for case in cases]
    if not overwrite:
        clashing = [p for p in targets if p.exists()]
        if clashing:
            raise CaseFileError(f"{clashing[0]}: already exists ({len(clashing)} file(s) would be overwritten; use --overwrite)")
    for case, target in zip(cases, targets):
        target.write_text(case_yaml(case), encoding="utf-8")
    return targets
