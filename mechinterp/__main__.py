"""``python -m mechinterp ...`` is the ``mechinterp`` command (``mechinterp --help``)."""

from mechinterp.cli.app import main

main()
