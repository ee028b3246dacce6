"""Terminal rendering with rich: readable at any width, Chinese aligned by cell width.

Everything shown from a case, a query or the database goes through :func:`_text` or
:func:`_markup`, which write control characters as escapes (kb.querytext.shown): a row stored
before the model refused them must not clear the screen or retitle the terminal.

Nothing is ever cut: ids, URLs, paths and titles are what people copy. Panels and tables are
used when the terminal is wide enough for every word in them to fit its cell; otherwise the
same content is printed as plain indented lines (:func:`_flow`), wrapped at spaces, where a
word longer than the line (a URL on a narrow terminal) keeps a line of its own and the
terminal wraps it, so it stays whole when copied.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Iterable

from rich import box
from rich.cells import cell_len
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from kb.querytext import shown

if TYPE_CHECKING:  # annotations only: `kbq show` and `kbq list` need not import the search results
    from kb.results import Hit, SearchOutcome


def _value(value: Any) -> str:
    from kb.results import value_text  # a search's renderers only, see above

    return value_text(value)



class _Console(Console):
    """rich's Console, leaving a closed pipe (`kbq list | head`) to the CLI to end quietly
    (rich would exit 1 by itself)."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


console = _Console(highlight=False, soft_wrap=False)

_WORD = re.compile(r"\S+")
MIN_PROSE_CELLS = 20  # a table's prose column narrower than this reads worse than plain lines


def _text(value: Any, style: str = "") -> Text:
    """Data as rich Text, its control characters shown as escapes."""
    return Text(shown(str(value)), style=style, overflow="fold")


def _markup(value: Any) -> str:
    """Data to put in a markup string: control characters shown as escapes, markup escaped."""
    return escape(shown(str(value)))


# -- width-aware building blocks ---------------------------------------------------------


def _cells(value: Text | str) -> int:
    """Terminal cells ``value`` takes (Chinese characters take two)."""
    return value.cell_len if isinstance(value, Text) else cell_len(value)


def _longest_word(values: Iterable[Text | str]) -> int:
    """Cells taken by the longest word (run of non-spaces) among ``values``."""
    return max((cell_len(word) for value in values for word in str(value).split()), default=0)


def _fits(needed: int) -> bool:
    return needed <= console.width


def _is_wide(word: str) -> bool:
    """Whether ``word`` holds double-width characters (Chinese): such text may break anywhere."""
    return cell_len(word) > len(word)


def _fold_point(text: str, cells: int) -> int:
    """How many characters of ``text`` fit in ``cells`` (at least one)."""
    used = 0
    for index, char in enumerate(text):
        used += cell_len(char)
        if used > cells:
            return max(index, 1)
    return len(text)


def _wrap_offsets(plain: str, first: int, rest: int) -> list[int]:
    """Where to break ``plain`` so its first line fits ``first`` cells and the others ``rest``.

    Breaks fall before words. A word that cannot fit a line of its own is split only when it
    is Chinese text; any other (an id, a URL, a path) stays whole on its own line."""
    breaks: list[int] = []
    room, used, previous_end, has_word = first, 0, 0, False
    for word in _WORD.finditer(plain):
        lead, start = cell_len(plain[previous_end:word.start()]), word.start()
        if has_word and used + lead + cell_len(word.group()) > room:
            breaks.append(start)
            room, used, lead = rest, 0, 0
        if _is_wide(word.group()):
            while used + lead + cell_len(plain[start:word.end()]) > room:
                start += _fold_point(plain[start:word.end()], max(room - used - lead, 1))
                breaks.append(start)
                room, used, lead = rest, 0, 0
        used += lead + cell_len(plain[start:word.end()])
        previous_end, has_word = word.end(), True
    return breaks


def _flow(text: Text | str, first: str = "", rest: str | None = None) -> None:
    """Print ``text`` wrapped to the console width after a prefix: ``first`` on its first line,
    ``rest`` (default: as many spaces) on the others. Nothing is cropped or cut with '…'."""
    text = text if isinstance(text, Text) else Text(text)
    rest = " " * cell_len(first) if rest is None else rest
    prefix = first
    for line in text.split("\n", allow_blank=True):
        breaks = _wrap_offsets(line.plain, console.width - cell_len(prefix), console.width - cell_len(rest))
        for part in line.divide(breaks):
            part.rstrip()
            console.print(Text(prefix) + part, soft_wrap=True)
            prefix = rest


def _record(title: Text, heading: Text, rows: list[tuple[str, Text]], *, subtitle: Text | None = None,
            border_style: str = "") -> None:
    """A case or a result: a panel of labelled rows when every word fits its cells; otherwise
    the same rows as plain lines (title, heading, then each label with its value indented)."""
    label_cells = max((cell_len(label) for label, _ in rows), default=0)
    value_cells = console.width - 4 - label_cells - 1  # panel borders and padding, grid gap
    words = _longest_word([heading, *(value for _, value in rows)])
    if _fits(_cells(title) + 6) and words <= value_cells and value_cells >= MIN_PROSE_CELLS:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold cyan", no_wrap=True)
        grid.add_column(ratio=1, overflow="fold")
        for label, value in rows:
            grid.add_row(label, value)
        console.print(Panel(Group(heading, grid), title=title, title_align="left", subtitle=subtitle,
                            subtitle_align="right", border_style=border_style, box=box.ROUNDED))
        return
    _flow(title + (Text("  ") + subtitle if subtitle is not None else Text("")))
    _flow(heading, "  ")
    indent = " " * (label_cells + 3)
    for label, value in rows:
        _flow(Text.assemble(("  " + label.ljust(label_cells) + " ", "bold cyan"), value), rest=indent)


def _fit_table(fixed: list[int], prose: Iterable[Text | str]) -> bool:
    """Whether a table (one cell of padding each side of each column) fits with its fixed
    columns at the widths given and its one prose column at least as wide as its longest
    word and MIN_PROSE_CELLS."""
    needed = sum(fixed) + max(MIN_PROSE_CELLS, _longest_word(prose)) + 2 * (len(fixed) + 1) + 2
    return _fits(needed)


def _name_cells(values: list[Text]) -> int:
    """A width for a column of short names: the longest name up to 16 cells, and never less
    than its longest word."""
    return max(min(max((_cells(v) for v in values), default=1), 16), _longest_word(values))


# -- search results ------------------------------------------------------------------------


def _features_line(features: dict[str, list]) -> str:
    if not features:
        return "[dim]no structured features recognised; text match only[/]"
    return " · ".join(f"{name} [bold]{_markup(_value(values))}[/]" for name, values in features.items())


def _matched(hit: Hit) -> Text:
    line = Text(overflow="fold")
    for feature in hit.matched_features:
        if line:
            line.append(" · ")
        in_case = _value(feature.case)
        label = f"{feature.name} {in_case}"
        if feature.similarity < 1:
            label = f"{feature.name} {_value(feature.query)}≈{in_case}"
        line.append(shown(label), style="green" if feature.similarity >= 0.99 else "yellow")
        line.append(f" +{feature.contribution:.2f}", style="dim")
    missed = [f.name for f in hit.features if f.similarity == 0]
    if missed:
        line.append(("  " if line else "") + "no match: " + ", ".join(missed), style="dim red")
    return line if line else Text("none", style="dim")


def _hit_rows(hit: Hit) -> list[tuple[str, Text]]:
    case = hit.case
    rows: list[tuple[str, Text]] = [("Matched", _matched(hit))]
    terms = ", ".join(t.split(":", 1)[-1] for t, _ in hit.text.terms[:5]) or "-"
    rows.append(("Text", _text(f"{hit.text.score:.2f} (+{hit.text.contribution:.2f}): {terms}")))
    if hit.semantic is not None:
        rows.append(("Meaning", Text(f"{hit.semantic:.2f} (+{hit.semantic_contribution:.2f}) sentence-embedding "
                                     f"similarity, closest text {hit.semantic_best:.2f}", overflow="fold")))
    for cause in case["causes"][:2]:
        rows.append(("Cause", _text(cause)))
    for fix in case["fixes"][:3]:
        mark = Text("✓ ", style="bold green") if fix.get("confirmed") else Text("· ", style="dim")
        rows.append(("Fix", mark + _text(fix["action"])))
    if case.get("related"):
        rows.append(("Related", _text(", ".join(case["related"]) + "  (same underlying problem)")))
    rows.append(("Sources", _text("\n".join(case["sources"]), style="blue")))
    return rows


def _print_hit(hit: Hit) -> None:
    title = Text.assemble((f"{hit.rank}. ", "bold"), (shown(hit.case_id), "bold magenta"))
    score = Text(f"score {hit.score:.2f}" + ("" if hit.confident else " (weak)"), style="bold" if hit.confident else "yellow")
    _record(title, _text(hit.case["title"], style="bold"), _hit_rows(hit), subtitle=score,
            border_style="green" if hit.confident else "yellow")


def _print_candidates(hits: list[Hit], title: str | None) -> None:
    ids = [shown(hit.case_id) for hit in hits]
    titles = [_text(hit.case["title"]) for hit in hits]
    if _fit_table([len(str(hits[-1].rank)), max(map(cell_len, ids)), 5], titles):
        table = Table(title=title, title_justify="left", box=box.SIMPLE, show_header=True, expand=True)
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("case", style="magenta", no_wrap=True, min_width=max(map(cell_len, ids)))
        table.add_column("title", ratio=1, overflow="fold")
        table.add_column("score", justify="right", no_wrap=True)
        for hit, case_id, case_title in zip(hits, ids, titles):
            table.add_row(str(hit.rank), case_id, case_title, f"{hit.score:.2f}")
        console.print(table)
        return
    if title:
        _flow(Text(title, style="italic"))
    for hit, case_id, case_title in zip(hits, ids, titles):
        _flow(Text.assemble((case_id, "magenta"), f"  score {hit.score:.2f}"), f"{hit.rank:>3}. ", "     ")
        _flow(case_title, "     ")


def _print_fixes(fixes) -> None:
    actions = [(Text("✓ confirmed ", style="bold green") if fix.confirmed else Text("")) + _text(fix.action) for fix in fixes]
    sources = [_text(", ".join(fix.cases)) for fix in fixes]
    source_cells = max(_longest_word(sources), 4)
    if _fit_table([len(str(len(fixes))), max(24, source_cells)], actions):
        table = Table(title="Recommended fixes", title_justify="left", box=box.SIMPLE, show_header=True, expand=True)
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("Fix", ratio=1, overflow="fold")
        table.add_column("From", overflow="fold", min_width=source_cells, max_width=max(24, source_cells), style="magenta")
        for number, (action, source) in enumerate(zip(actions, sources), start=1):
            table.add_row(str(number), action, source)
        console.print(table)
        return
    _flow(Text("Recommended fixes", style="italic"))
    for number, (action, source) in enumerate(zip(actions, sources), start=1):
        _flow(action, f"{number:>3}. ", "     ")
        _flow(Text.assemble(("from ", "dim"), (source.plain, "magenta")), "     ")


def render_outcome(outcome: SearchOutcome) -> None:
    _flow(Text.from_markup(f"[bold]Parsed[/] {_features_line(outcome.features)}"))
    if not outcome.hits:
        _flow(Text.from_markup(
            f"[bold yellow]No close case[/]: none of the {outcome.case_count} cases"
            + (" that pass the filters" if any(outcome.filters.values()) else "")
            + " shares a term or a feature with the query."
        ))
        return
    if outcome.abstained:
        _flow(Text.from_markup(
            f"[bold yellow]No close case[/] among {outcome.case_count} cases: {_markup(outcome.abstain_reason or 'nothing fits well')}. "
            "The best weak candidates, for what they are worth:"
        ))
    strong = [hit for hit in outcome.hits if hit.confident]
    weak = [hit for hit in outcome.hits if not hit.confident]
    if not outcome.abstained and not strong:
        # Plausible but not certain: show the best one in full, and say why it is not confident.
        _flow(Text.from_markup(f"[bold yellow]Possible match[/], not confident: {_markup(outcome.abstain_reason or '')}"))
        strong, weak = weak[:1], weak[1:]
    for hit in strong:
        _print_hit(hit)
    if weak:
        _print_candidates(weak, None if outcome.abstained else "Other candidates (not confident)")
    if outcome.fixes:
        _print_fixes(outcome.fixes)


# -- one case, the case list, counts -----------------------------------------------------------


def render_case(case: dict[str, Any]) -> None:
    rows: list[tuple[str, Text]] = []
    model = case["model"]
    framework = case["framework"]
    rows.append(("Status", _text(f"{case.get('status', 'reviewed')} · language {case['language']} · phase {case.get('phase', '-')}")))
    rows.append(("Model", _text(" · ".join(str(v) for v in [model["name"], model.get("version"), model.get("size")] if v))))
    libs = ", ".join(f"{k} {v}" for k, v in framework.get("libraries", {}).items())
    rows.append(("Framework", _text(" ".join(v for v in [framework["name"], framework.get("version", "")] if v) + (f" ({libs})" if libs else ""))))
    hardware = case.get("hardware") or {}
    if hardware:
        rows.append(("Hardware", _text(" · ".join(f"{k} {v}" for k, v in hardware.items()))))
    if case.get("config"):
        rows.append(("Config", _text(", ".join(f"{k}={v}" for k, v in case["config"].items()))))
    rows.append(("Symptom", _text(case["symptom"])))
    for obs in case.get("observations", []):
        where = f" @ step {obs['step']}" if obs.get("step") else ""
        note = f" — {obs['note']}" if obs.get("note") else ""
        rows.append(("Observed", _text(f"{obs['metric']} {obs['value']:g} ({obs.get('when', 'other')}, {obs.get('context', 'symptom')}){where}{note}")))
    for cause in case["causes"]:
        rows.append(("Cause", _text(cause)))
    for fix in case["fixes"]:
        mark = Text("✓ confirmed ", style="bold green") if fix.get("confirmed") else Text("unconfirmed ", style="dim")
        rows.append(("Fix", mark + _text(fix["action"])))
    if case.get("tags"):
        rows.append(("Tags", _text(", ".join(case["tags"]))))
    if case.get("related"):
        rows.append(("Related", _text(", ".join(case["related"]))))
    rows.append(("Sources", _text("\n".join(case["sources"]), style="blue")))
    if case.get("updated_at"):
        rows.append(("Updated", _text(f"{case['updated_at']} (created {case.get('created_at')})")))
    _record(Text(shown(case["id"]), style="bold magenta"), _text(case["title"], style="bold"), rows)


def render_case_list(cases: list[dict[str, Any]]) -> None:
    entries = []
    for case in cases:
        model = case["model"].get("version") or case["model"]["name"]
        status = "" if case.get("status", "reviewed") == "reviewed" else " [draft]"
        entries.append((_text(case["id"]), _text(case["title"] + status), _text(model), _text(case["framework"]["name"])))
    id_cells = max((_cells(e[0]) for e in entries), default=2)
    model_cells, framework_cells = _name_cells([e[2] for e in entries]), _name_cells([e[3] for e in entries])
    if _fit_table([id_cells, model_cells, framework_cells], [e[1] for e in entries]):
        table = Table(box=box.SIMPLE_HEAD, expand=True)
        table.add_column("id", style="magenta", no_wrap=True, min_width=id_cells)
        table.add_column("title", ratio=1, overflow="fold")
        table.add_column("model", width=model_cells, overflow="fold")
        table.add_column("framework", width=framework_cells, overflow="fold")
        for entry in entries:
            table.add_row(*entry)
        console.print(table)
    else:
        for case_id, title, model, framework in entries:
            _flow(Text.assemble((case_id.plain, "magenta"), "  ", model, (" · ", "dim"), framework), "", "    ")
            _flow(title, "    ")
    console.print(f"{len(cases)} case(s)")


def _counts(counts: dict[str, int]) -> None:
    """``name  count`` lines, counts aligned when the longest name leaves room for them."""
    names = {name: shown(str(name)) for name in counts}
    pad = max((cell_len(n) for n in names.values()), default=0)
    if pad + 10 > console.width:
        pad = 0
    for name, count in counts.items():
        label = names[name]
        _flow(Text(label + " " * max(pad - cell_len(label), 0) + f"  {count:>5}"), "  ", "    ")


def render_stats(stats) -> None:
    total = sum(stats.counts.values())
    _flow(Text.from_markup(f"[bold]{total} cases[/] in {_markup(stats.url)}: "
                           + ", ".join(f"{n} {status}" for status, n in sorted(stats.counts.items()))))
    _flow(f"index: {stats.index_cases} reviewed cases, {stats.index_terms} terms, revision {stats.revision}")
    for title, counts in (("model family", stats.by_model_family), ("framework", stats.by_framework),
                          ("phase", stats.by_phase), ("language", stats.by_language)):
        console.print(f"\n[bold]by {title}[/]")
        _counts(counts)


# -- eval, review, feedback ------------------------------------------------------------------


def render_eval(report, split: str, show_misses: int) -> None:
    abstain = "-" if report.abstention_accuracy is None else f"{report.abstention_accuracy:.3f}"
    figures = [("MRR", f"{report.mrr:.3f}"), *((f"R@{k}", f"{report.recall[k]:.3f}") for k in (1, 3, 5)),
               ("answerable", str(report.answerable)), ("false abstain", str(report.false_abstentions)),
               ("none", str(report.none_queries)), ("abstain acc.", abstain)]
    heading = f"kbq eval ({split}: {report.queries} queries)"
    if _fits(sum(max(_longest_word([name]), len(value)) + 2 for name, value in figures) + 2):
        table = Table(box=box.SIMPLE_HEAD, title=heading, title_justify="left")
        for name, _ in figures:
            table.add_column(name, justify="right", overflow="fold")
        table.add_row(*(value for _, value in figures))
        console.print(table)
    else:
        _flow(Text(heading, style="italic"))
        width = max(len(name) for name, _ in figures)
        for name, value in figures:
            _flow(f"{name.ljust(width)}  {value}", "  ", "    ")
    if report.unknown_expected:
        _flow(Text.from_markup(f"[yellow]{len(report.unknown_expected)} expected reference(s) match no case[/], "
                               f"e.g. {_markup(report.unknown_expected[0])}"))
    misses = report.misses
    if misses and show_misses:
        console.print(f"[bold]Misses[/] ({len(misses)}; first {min(show_misses, len(misses))}):")
        for miss in misses[:show_misses]:
            got = ", ".join(miss.ranked[:3]) or "-"
            want = ", ".join(miss.expected) or (f"{miss.references[0]} (no such case)" if miss.references else "(abstain)")
            where = f"rank {miss.rank}" if miss.rank else ("abstained" if miss.abstained else "not in top 10")
            _flow(_text(miss.query[:100]), "- ", "  ")
            _flow(_text(f"want {want} · {where} · got {got}"), "    ")


def render_review(reports) -> None:
    if not reports:
        console.print("No draft cases to review.")
        return
    for report in reports:
        _flow(Text.assemble((shown(report.id), "bold magenta"), "  ", (shown(report.location), "dim")), "", "    ")
        _flow(_text(report.title), "  ")
        for finding in report.findings:
            _flow(_text(finding, style="yellow"), "  - ", "    ")
    console.print(f"{len(reports)} draft(s). Edit each file, set status: reviewed, then kbq ingest.")


def render_feedback(rows: list[dict]) -> None:
    entries = [(_text(row["created_at"][:19]), _text(row["case_id"]), Text("helpful" if row["helpful"] else "not helpful"),
                _text(row["query"] + (f"\n— {row['comment']}" if row.get("comment") else ""))) for row in rows]
    id_cells = max((_cells(e[1]) for e in entries), default=4)
    if _fit_table([19, id_cells, 11], [e[3] for e in entries]):
        table = Table(box=box.SIMPLE_HEAD, expand=True)
        table.add_column("when", no_wrap=True)
        table.add_column("case", no_wrap=True, min_width=id_cells)
        table.add_column("verdict", no_wrap=True)
        table.add_column("query / comment", ratio=1, overflow="fold")
        for entry in entries:
            table.add_row(*entry)
        console.print(table)
    else:
        for when, case_id, helpful, note in entries:
            _flow(Text.assemble(when.plain, "  ", (case_id.plain, "magenta"), "  ", helpful.plain), "", "    ")
            _flow(note, "    ")
    console.print(f"{len(rows)} feedback item(s)")
