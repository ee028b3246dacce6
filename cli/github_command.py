"""``kbq github answer OWNER/REPO#N [--post]``: the GitHub issue bot, by hand.

Shows the comment the bot would post on an issue (or why it would stay silent),
and with ``--post`` posts it, under the same once-per-issue record the webhook
keeps. Only Typer is imported here; kb's modules load inside the command, so
registering this sub-app costs ``kbq``'s start-up nothing.
"""

from __future__ import annotations

from typing import Callable, ContextManager, Optional

import typer

from cli.conventions import KbqTyper


def github_app(failures: Callable[[], ContextManager[None]], say: Callable[..., None],
               open_kb: Callable[[Optional[str]], object], db_option) -> typer.Typer:
    """The ``github`` sub-app, using the main app's error handling, output and database option."""
    app = KbqTyper(help="The GitHub issue bot: suggest documented cases on an issue.", no_args_is_help=True)

    @app.command("answer")
    def answer_command(
        issue: str = typer.Argument(..., metavar="OWNER/REPO#N",
                                    help="The issue: OWNER/REPO#NUMBER or https://github.com/OWNER/REPO/issues/NUMBER."),
        post: bool = typer.Option(False, "--post", help="Post the comment (needs KBQ_GITHUB_TOKEN); at most once per issue."),
        db: Optional[str] = db_option,
    ) -> None:
        """Print the comment the bot would post on an issue, or why it would not comment.

        Reads the issue from KBQ_GITHUB_API_URL (default https://api.github.com), with
        KBQ_GITHUB_TOKEN when set (needed for private repositories and for --post)."""
        from kb.errors import ConflictError, UsageError
        from kb.githubbot.answer import ALREADY_ANSWERED, IN_PROGRESS, NOT_CONFIDENT, IssueBot, client_from_env
        from kb.githubbot.issue import parse_ref
        from kb.querytext import shown

        with failures():
            ref = parse_ref(issue)
            client = client_from_env()
            if post and client.token is None:
                raise UsageError("--post needs a token: set KBQ_GITHUB_TOKEN to a token allowed to write issues")
            bot = IssueBot(open_kb(db), client)
            found = client.issue(ref)
            if not post:
                suggestion = bot.suggest(found)
                if not suggestion.confident:
                    say(f"kbq: not confident for {ref}, the bot would not comment: {suggestion.reason}")
                    return
                typer.echo(shown(suggestion.body or ""), nl=False)
                earlier = bot.store().answer(ref.full_name, ref.number)
                if earlier is not None and earlier.posted:
                    say(f"kbq: note: {ref} already has kbq's answer: {earlier.comment_url}", err=True)
                return
            result = bot.answer(found)
            if result.status in (ALREADY_ANSWERED, IN_PROGRESS):
                raise ConflictError(f"not posting again: {result.message}")
            if result.status == NOT_CONFIDENT:
                say(f"kbq: {result.message}")
                return
            typer.echo(shown(result.suggestion.body if result.suggestion else ""), nl=False)
            say(f"kbq: {result.message}", err=True)

    return app
