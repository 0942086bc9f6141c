"""A reproduction campaign across short GPU windows: its state (state.py), packed as one file
(pack.py), its report (report.py) and its subcommands (cli.py)."""
