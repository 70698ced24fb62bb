"""Load the folders ``write_ours.py`` wrote with SAELens 6.54 and compare to our outputs.

Runs ONLY in the SAELens environment: ``python tests/data/saelens/check_ours.py OUT``.
(For normalising SAEs ``decode`` alone is not compared: SAELens' decode undoes the
normalisation with statistics kept from the last ``encode``, ours stays in the normalised
space; ``forward`` covers the whole.) Exits non-zero if any folder fails to load or differs by more than 1e-5.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from sae_lens import SAE
from safetensors.torch import load_file


@torch.no_grad()
def main(out: Path) -> int:
    failed = 0
    for folder in sorted(p for p in out.iterdir() if (p / "cfg.json").is_file()):
        expected = load_file(str(folder / "expected.safetensors"))
        try:
            sae = SAE.load_from_disk(folder)
            acts = sae.encode(expected["x"])
            checks = {
                "encode": (acts, expected["acts"]),
                "decode": (sae.decode(expected["acts"]), expected["recons"]),
                "forward": (sae(expected["x"]), expected["out"]),
            }
            if sae.cfg.normalize_activations != "none":
                # SAELens' decode undoes the normalisation with statistics kept from the last
                # encode call; ours stays in the normalised space. forward compares the whole.
                del checks["decode"]
            for what, (theirs, ours) in checks.items():
                torch.testing.assert_close(
                    theirs, ours, atol=1e-5, rtol=1e-5, msg=lambda m, w=what: f"{w}: {m}"
                )
            print(f"ok    {folder.name:32s} {type(sae).__name__}")
        except Exception as error:  # report every folder, then fail
            failed += 1
            print(f"FAIL  {folder.name:32s} {type(error).__name__}: {error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
