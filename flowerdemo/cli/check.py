"""`flowerdemo check --data DIR [--json]`: look for problems in a dataset before training on it.

Exit status: 0 when nothing of severity "error" was found (warnings and notes are printed), 1 when
something was (e.g. the same photo filed under two classes), 2 when the folder cannot be read as a
dataset at all (the message says why; cli/main.py's handling of ValueError/OSError).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from flowerdemo.settings import add_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `check` sub-command to the CLI's sub-parsers."""
    c = sub.add_parser("check", help="look for duplicates, conflicting labels, imbalance and unusable photos in a "
                                     "dataset (exit 1 when an error is found)",
                       description="Check a dataset before training: identical and near-identical photos (within a "
                                   "class, and across classes: conflicting labels), class balance, classes with too "
                                   "few photos, unreadable, tiny and extreme-aspect images. Exit status 0: no errors; "
                                   "1: errors found; 2: the folder cannot be used as a dataset.")
    c.add_argument("--data", type=Path, required=True,
                   help="folder with one sub-folder per class (or train/ and val/), or a .zip of one")
    c.add_argument("--exact-only", action="store_true", help="only identical files, not near-identical photos")
    c.add_argument("--json", action="store_true", help="print one JSON object (findings with paths relative to the "
                                                       "dataset folder, groups, counts, seconds)")
    add_arguments(c, ("cache_dir",))  # where fingerprints are cached: the same cache training reads


def run(args: argparse.Namespace) -> int:
    """Run the check and print it; 1 when a finding has severity "error", else 0."""
    from flowerdemo.data.check import check_dataset
    from flowerdemo.data.dataset import resolve_data

    with tempfile.TemporaryDirectory(prefix="flowerdemo-") as work:
        result = check_dataset(resolve_data(args.data, work), near=not getattr(args, "exact_only", False))
        if args.json:
            text = json.dumps(result.to_dict(), indent=1)
        else:
            text = result.summary()
    sys.stdout.write(text + "\n")
    return 1 if result.errors else 0
