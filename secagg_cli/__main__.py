"""``python -m secagg_cli``: the ``secagg`` command line, for callers that name the interpreter."""

from secagg_cli import main

main()
