"""The ``mechinterp`` command line: run YAML sweep configs into run folders, list and pull
models, export circuits, rebuild reports. Entry point: ``mechinterp.cli.app:main``."""
