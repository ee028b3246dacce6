"""The kbq command-line shell (Typer): see cli.main."""
