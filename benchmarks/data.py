"""Where the benchmarks find the CAA A/B data: ``--data DIR``, by default ``$STEERABLE_CAA_DATA``.

The folder holds CAA's ``generate/<behaviour>/generate_dataset.json`` and
``test/<behaviour>/test_dataset_ab.json`` (on dev machines: ``../shared/data/caa`` next to the
checkout). The data is never copied into the repository.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DATA_ENV = "STEERABLE_CAA_DATA"
DATA_HELP = (
    f"folder of the CAA A/B data (holding generate/ and test/); default ${DATA_ENV}"
    " (dev machines: ../shared/data/caa next to the checkout)"
)


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """``--data DIR``, defaulting to ``$STEERABLE_CAA_DATA``."""
    parser.add_argument("--data", type=Path, metavar="DIR", default=os.environ.get(DATA_ENV) or None, help=DATA_HELP)


def caa_data(data: Path | str | None, *needed: str, prog: str = "benchmark") -> Path:
    """The CAA folder, after checking that it and the ``needed`` files under it exist; else exit with
    one line saying what is missing and how to point at it."""
    if data is None:
        raise SystemExit(f"{prog}: no CAA data folder: pass --data DIR or set {DATA_ENV}")
    folder = Path(data).expanduser()
    missing = [str(folder / n) for n in needed if not (folder / n).exists()]
    if not folder.is_dir() or missing:
        what = missing[0] if folder.is_dir() else str(folder)
        raise SystemExit(f"{prog}: {what} does not exist: pass --data DIR or set {DATA_ENV} to the CAA folder")
    return folder


def behaviour_files(behaviour: str) -> tuple[str, str]:
    """(training file, test file) of a CAA behaviour, relative to the data folder."""
    return f"generate/{behaviour}/generate_dataset.json", f"test/{behaviour}/test_dataset_ab.json"
