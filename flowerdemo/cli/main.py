"""Entry point of the `flowerdemo` command (and `python -m flowerdemo`): parse, run, turn our errors
into a message and an exit status."""

from __future__ import annotations

import logging
import sys

from flowerdemo.cli import check, export
from flowerdemo.cli.commands import run_evaluate, run_experiment, run_predict, run_train
from flowerdemo.cli.parser import build_parser, config_from_args
from flowerdemo.device import configure_process
from flowerdemo.settings import export_cache_dir

log = logging.getLogger("flowerdemo")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    configure_process()  # backend flags: once per process, never per run
    if getattr(args, "cache_dir", None) is not None:  # train --cache-dir: fast mode's feature cache goes there too
        export_cache_dir(args.cache_dir)
    try:
        if args.command == "train":
            return run_train(args, config_from_args(args))
        if args.command == "experiment":
            return run_experiment(args, config_from_args(args))
        if args.command == "evaluate":
            return run_evaluate(args)
        if args.command == "check":
            return check.run(args)
        if args.command == "export":
            return export.run(args)
        return run_predict(args)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except (ValueError, RuntimeError, OSError) as exc:  # our errors say what was wrong and what is accepted
        log.error("%s", exc)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
