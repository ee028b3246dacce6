"""The GitHub issue bot: when an issue opens, comment the documented cases it matches.

* :mod:`.issue` - an issue reference (``owner/repo#12`` or its URL) and the search text of an issue;
* :mod:`.webhook` - the webhook's signature check and what a delivery asks for;
* :mod:`.comment` - whether kbq is confident enough to comment, and the comment itself;
* :mod:`.rest` - the few GitHub REST calls the bot makes (stdlib ``urllib``, with timeouts);
* :mod:`.answer` - the bot: search, decide, claim, post once, record.

Nothing here knows about HTTP servers or terminals: ``api/github_webhook.py``
and ``cli/github_command.py`` are thin doors onto :class:`.answer.IssueBot`.
"""
