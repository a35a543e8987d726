"""``python -m lmscope`` runs the command-line interface."""

from lmscope.cli import main

main()
