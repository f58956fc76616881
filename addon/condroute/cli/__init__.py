"""The command line (main.py): validate, lint, explain, test, schema; and the demo backends."""
