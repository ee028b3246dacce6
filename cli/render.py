"""Terminal rendering with rich: readable at 80 columns, Chinese aligned by cell width.

Everything shown from a case, a query or the database goes through :func:`_text` or
:func:`_markup`, which write control characters as escapes (kb.querytext.shown): a row stored
before the model refused them must not clear the screen or retitle the terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from kb.querytext import shown

if TYPE_CHECKING:  # annotations only: `kbq show` and `kbq list` need not import the search results
    from kb.results import Hit, SearchOutcome

console = Console(highlight=False, soft_wrap=False)


def _text(value: Any, style: str = "") -> Text:
    """Data as rich Text, its control characters shown as escapes."""
    return Text(shown(str(value)), style=style)


def _markup(value: Any) -> str:
    """Data to put in a markup string: control characters shown as escapes, markup escaped."""
    return escape(shown(str(value)))


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _features_line(features: dict[str, list]) -> str:
    if not features:
        return "[dim]no structured features recognised; text match only[/]"
    return " · ".join(f"{name} [bold]{_markup(_value(values))}[/]" for name, values in features.items())


def _matched(hit: Hit) -> Text:
    line = Text()
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


def _hit_panel(hit: Hit) -> Panel:
    case = hit.case
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column(ratio=1)
    grid.add_row("Matched", _matched(hit))
    terms = ", ".join(t.split(":", 1)[-1] for t, _ in hit.text.terms[:5]) or "-"
    grid.add_row("Text", _text(f"{hit.text.score:.2f} (+{hit.text.contribution:.2f}): {terms}"))
    if hit.semantic is not None:
        grid.add_row("Meaning", Text(f"{hit.semantic:.2f} (+{hit.semantic_contribution:.2f}) sentence-embedding similarity, "
                                     f"closest text {hit.semantic_best:.2f}"))
    for cause in case["causes"][:2]:
        grid.add_row("Cause", _text(cause))
    for fix in case["fixes"][:3]:
        mark = Text("✓ ", style="bold green") if fix.get("confirmed") else Text("· ", style="dim")
        grid.add_row("Fix", mark + _text(fix["action"]))
    if case.get("related"):
        grid.add_row("Related", _text(", ".join(case["related"]) + "  (same underlying problem)"))
    grid.add_row("Sources", _text("\n".join(case["sources"]), style="blue"))
    title = Text.assemble((f"{hit.rank}. ", "bold"), (shown(hit.case_id), "bold magenta"))
    score = Text(f"score {hit.score:.2f}" + ("" if hit.confident else " (weak)"), style="bold" if hit.confident else "yellow")
    body = Group(_text(case["title"], style="bold"), grid)
    return Panel(body, title=title, title_align="left", subtitle=score, subtitle_align="right",
                 border_style="green" if hit.confident else "yellow", box=box.ROUNDED)


def render_outcome(outcome: SearchOutcome) -> None:
    console.print(f"[bold]Parsed[/] {_features_line(outcome.features)}")
    if not outcome.hits:
        console.print(
            f"[bold yellow]No close case[/]: none of the {outcome.case_count} cases"
            + (" that pass the filters" if any(outcome.filters.values()) else "")
            + " shares a term or a feature with the query."
        )
        return
    if outcome.abstained:
        console.print(
            f"[bold yellow]No close case[/] among {outcome.case_count} cases: {_markup(outcome.abstain_reason or 'nothing fits well')}. "
            "The best weak candidates, for what they are worth:"
        )
    strong = [hit for hit in outcome.hits if hit.confident]
    weak = [hit for hit in outcome.hits if not hit.confident]
    if not outcome.abstained and not strong:
        # Plausible but not certain: show the best one in full, and say why it is not confident.
        console.print(f"[bold yellow]Possible match[/], not confident: {_markup(outcome.abstain_reason or '')}")
        strong, weak = weak[:1], weak[1:]
    for hit in strong:
        console.print(_hit_panel(hit))
    if weak:
        table = Table(title=None if outcome.abstained else "Other candidates (not confident)",
                      title_justify="left", box=box.SIMPLE, show_header=True, expand=True)
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("case", style="magenta", no_wrap=True)
        table.add_column("title", ratio=1, overflow="fold")
        table.add_column("score", justify="right", no_wrap=True)
        for hit in weak:
            table.add_row(str(hit.rank), _text(hit.case_id), _text(hit.case["title"]), f"{hit.score:.2f}")
        console.print(table)
    if outcome.fixes:
        table = Table(title="Recommended fixes", title_justify="left", box=box.SIMPLE, show_header=True, expand=True)
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("Fix", ratio=1, overflow="fold")
        table.add_column("From", overflow="fold", max_width=24, style="magenta")
        for i, fix in enumerate(outcome.fixes, start=1):
            mark = Text("✓ confirmed ", style="bold green") if fix.confirmed else Text("")
            table.add_row(str(i), mark + _text(fix.action), _text(", ".join(fix.cases)))
        console.print(table)


def render_case(case: dict[str, Any]) -> None:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column(ratio=1)
    model = case["model"]
    framework = case["framework"]
    grid.add_row("Status", _text(f"{case.get('status', 'reviewed')} · language {case['language']} · phase {case.get('phase', '-')}"))
    grid.add_row("Model", _markup(" · ".join(str(v) for v in [model["name"], model.get("version"), model.get("size")] if v)))
    libs = ", ".join(f"{k} {v}" for k, v in framework.get("libraries", {}).items())
    grid.add_row("Framework", _markup(" ".join(v for v in [framework["name"], framework.get("version", "")] if v) + (f" ({libs})" if libs else "")))
    hardware = case.get("hardware") or {}
    if hardware:
        grid.add_row("Hardware", _markup(" · ".join(f"{k} {v}" for k, v in hardware.items())))
    if case.get("config"):
        grid.add_row("Config", _markup(", ".join(f"{k}={v}" for k, v in case["config"].items())))
    grid.add_row("Symptom", _text(case["symptom"]))
    for obs in case.get("observations", []):
        where = f" @ step {obs['step']}" if obs.get("step") else ""
        note = f" — {obs['note']}" if obs.get("note") else ""
        grid.add_row("Observed", _text(f"{obs['metric']} {obs['value']:g} ({obs.get('when', 'other')}, {obs.get('context', 'symptom')}){where}{note}"))
    for cause in case["causes"]:
        grid.add_row("Cause", _text(cause))
    for fix in case["fixes"]:
        mark = Text("✓ confirmed ", style="bold green") if fix.get("confirmed") else Text("unconfirmed ", style="dim")
        grid.add_row("Fix", mark + _text(fix["action"]))
    if case.get("tags"):
        grid.add_row("Tags", _text(", ".join(case["tags"])))
    if case.get("related"):
        grid.add_row("Related", _text(", ".join(case["related"])))
    grid.add_row("Sources", _text("\n".join(case["sources"]), style="blue"))
    if case.get("updated_at"):
        grid.add_row("Updated", _text(f"{case['updated_at']} (created {case.get('created_at')})"))
    console.print(Panel(Group(_text(case["title"], style="bold"), grid), title=_text(case["id"]), title_align="left", box=box.ROUNDED))


def render_case_list(cases: list[dict[str, Any]]) -> None:
    table = Table(box=box.SIMPLE_HEAD, expand=True)
    table.add_column("id", style="magenta", no_wrap=True)
    table.add_column("title", ratio=1, overflow="ellipsis", no_wrap=True)
    table.add_column("model", no_wrap=True, max_width=14)
    table.add_column("framework", no_wrap=True, max_width=14)
    for case in cases:
        model = case["model"].get("version") or case["model"]["name"]
        status = "" if case.get("status", "reviewed") == "reviewed" else " [draft]"
        table.add_row(_text(case["id"]), _text(case["title"] + status), _text(model), _text(case["framework"]["name"]))
    console.print(table)
    console.print(f"{len(cases)} case(s)")


def render_stats(stats) -> None:
    total = sum(stats.counts.values())
    console.print(f"[bold]{total} cases[/] in {_markup(stats.url)}: "
                  + ", ".join(f"{n} {status}" for status, n in sorted(stats.counts.items())))
    console.print(f"index: {stats.index_cases} reviewed cases, {stats.index_terms} terms, revision {stats.revision}")
    for title, counts in (("model family", stats.by_model_family), ("framework", stats.by_framework),
                          ("phase", stats.by_phase), ("language", stats.by_language)):
        console.print(f"\n[bold]by {title}[/]")
        table = Table(box=None, show_header=False, padding=(0, 2))
        table.add_column(title, no_wrap=True)
        table.add_column("cases", justify="right")
        for name, count in counts.items():
            table.add_row(_markup(name), str(count))
        console.print(table)


def render_eval(report, split: str, show_misses: int) -> None:
    table = Table(box=box.SIMPLE_HEAD, title=f"kbq eval ({split}: {report.queries} queries)", title_justify="left")
    for column in ("MRR", "R@1", "R@3", "R@5", "answerable", "false abstain", "none", "abstain acc."):
        table.add_column(column, justify="right")
    abstain = "-" if report.abstention_accuracy is None else f"{report.abstention_accuracy:.3f}"
    table.add_row(f"{report.mrr:.3f}", *(f"{report.recall[k]:.3f}" for k in (1, 3, 5)), str(report.answerable),
                  str(report.false_abstentions), str(report.none_queries), abstain)
    console.print(table)
    if report.unknown_expected:
        console.print(f"[yellow]{len(report.unknown_expected)} expected reference(s) match no case[/], e.g. {_markup(report.unknown_expected[0])}")
    misses = report.misses
    if misses and show_misses:
        console.print(f"[bold]Misses[/] ({len(misses)}; first {min(show_misses, len(misses))}):")
        for miss in misses[:show_misses]:
            got = ", ".join(miss.ranked[:3]) or "-"
            want = ", ".join(miss.expected) or (f"{miss.references[0]} (no such case)" if miss.references else "(abstain)")
            where = f"rank {miss.rank}" if miss.rank else ("abstained" if miss.abstained else "not in top 10")
            console.print(_text(f"- {miss.query[:100]}\n    want {want} · {where} · got {got}"))


def render_review(reports) -> None:
    if not reports:
        console.print("No draft cases to review.")
        return
    for report in reports:
        console.print(Text.assemble((shown(report.id), "bold magenta"), "  ", (shown(report.location), "dim")))
        console.print(_text(f"  {report.title}"))
        for finding in report.findings:
            console.print(_text(f"  - {finding}", style="yellow"))
    console.print(f"{len(reports)} draft(s). Edit each file, set status: reviewed, then kbq ingest.")


def render_feedback(rows: list[dict]) -> None:
    table = Table(box=box.SIMPLE_HEAD, expand=True)
    for column in ("when", "case", "helpful", "query / comment"):
        table.add_column(column, overflow="fold")
    for row in rows:
        note = row["query"] + (f"\n— {row['comment']}" if row.get("comment") else "")
        table.add_row(_text(row["created_at"][:19]), _text(row["case_id"]), Text("yes" if row["helpful"] else "no"), _text(note))
    console.print(table)
    console.print(f"{len(rows)} feedback item(s)")
