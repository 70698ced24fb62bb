"""Circuit discovery on mechinterp models (graphs, edge patching, algorithms, export).

Nothing is implemented here yet; see the README's "not done yet" section.
"""

__all__: list[str] = []
