"""Reading and writing the reviewed YAML case files.

Reading validates everything before anything is written anywhere: the first
problem raises :class:`CaseFileError` with one line naming the file, and the
line/column (YAML syntax) or the field (schema) at fault.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import CaseFileError
from .limits import CASE_FILE_BYTES, read_text
from .models import Case
from .querytext import shown

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
    """``fixes[0].action``, or ``config.lr`` for a bad value or key ``lr``. A key is shown as one
    short line: control characters (a line break too) escaped, a long one cut."""
    out = ""
    for part in location:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":  # pydantic's mark of an error in the key rather than in its value
            name = shown(part if len(part) <= 60 else f"{part[:50]}...", one_line=True)
            out += f".{name}" if out else name
    return out or "(top level)"


def read_case(path: Path) -> Case:
    """The validated case in a file, or one line naming the file and what is wrong (with the
    line and column where the file has one). The size is checked before anything is parsed."""
    import yaml

    text = read_text(path, CASE_FILE_BYTES)
    if "\x00" in text:
        raise CaseFileError(f"{path}: contains NUL bytes; a case file must be text")
    try:
        data = yaml.load(text, Loader=_case_loader())
    except _AliasFound:
        raise CaseFileError(f"{path}{_first_alias(text)}: case files may not use aliases; write the value out") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CaseFileError(f"{path}{where}: YAML syntax error: {problem}") from None
    return validate_document(data, str(path))


class _AliasFound(Exception):
    """Raised by the case loader at the first node built a second time."""


@functools.cache
def _case_loader() -> type:
    """libyaml's safe loader (the same safe subset, ~10x faster than pure Python) refusing aliases.

    An alias repeats its anchor's node without repeating its bytes, so a 150 KB file of one
    10 KB anchor used 20,000 times made a 202 MB case; no case file needs one. libyaml composes
    the node graph in C (shared nodes, so its size follows the file's), but the Python
    constructor then visits every node, and a node it has already built is an alias: refused
    there at once, before anything is expanded, at no measurable cost to a plain file.
    """
    import yaml

    class CaseLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc, valid-type]
        def construct_object(self, node, deep=False):  # noqa: ANN001, ANN201 - PyYAML's signature
            if node in self.constructed_objects:
                raise _AliasFound
            return super().construct_object(node, deep)

    return CaseLoader


def _first_alias(text: str) -> str:
    """Where the first alias of ``text`` is, and its name; parsed again only for the error."""
    import yaml

    for event in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        if isinstance(event, yaml.AliasEvent):
            return f":{event.start_mark.line + 1}:{event.start_mark.column + 1}: YAML alias '*{event.anchor}'"
    return ": a YAML alias"


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
    """Write one ``<id>.yaml`` per case (see :func:`write_case_texts`)."""
    cases = list(cases)
    return write_case_texts([case.id for case in cases], ((case.id, case_yaml(case)) for case in cases),
                            directory, overwrite=overwrite)


def write_case_texts(ids: list[str], texts: Iterable[tuple[str, str]], directory: Path, *,
                     overwrite: bool = False) -> list[Path]:
    """Write ``<id>.yaml`` files into ``directory`` from ``(id, text)`` pairs (made one at a
    time, so an export need not hold every text). Nothing is written when a file of one of
    ``ids`` exists and ``overwrite`` is off; a link counts as a file, even a dangling one.

    Each file is written aside and renamed over its name: a killed export leaves whole files
    only, and ``--overwrite`` replaces a symbolic link rather than writing where it points
    (possibly outside ``directory``). Every failure is one line naming the path."""
    import os

    if directory.exists() and not directory.is_dir():
        raise CaseFileError(f"{directory}: exists and is not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CaseFileError(f"{directory}: cannot create the folder: {err.strerror or err}") from None
    if not overwrite:
        clashing = [directory / f"{case_id}.yaml" for case_id in ids if os.path.lexists(directory / f"{case_id}.yaml")]
        if clashing:
            raise CaseFileError(f"{clashing[0]}: already exists ({len(clashing)} file(s) would be overwritten; use --overwrite)")
    written: list[Path] = []
    for case_id, text in texts:
        target = directory / f"{case_id}.yaml"
        aside = directory / f".{case_id}.yaml.{os.getpid()}.tmp"
        try:
            aside.write_text(text, encoding="utf-8")
            os.replace(aside, target)
        except OSError as err:
            aside.unlink(missing_ok=True)
            raise CaseFileError(f"{target}: cannot write: {err.strerror or err}") from None
        written.append(target)
    return written