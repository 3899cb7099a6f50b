"""``moram data prepare NAME... --root DIR``: download benchmark datasets with torchvision's downloaders.

``moram data check NAME... --root DIR`` reads them back and says, per dataset, whether it is complete.
Without network access, or when a download fails (StanfordCars' original URL is gone, so torchvision
refuses it; Caltech101 comes from Google Drive), the command says which dataset and root failed, why,
and how to put the files there by hand, and exits with status 1.
CoOp's split files (Caltech101, EuroSAT and SUN397 need them) are not downloadable this way: the
command says where to put them.

Example::

    moram data prepare cifar100 mnist --root /data
    python -m moram.data.benchmarks.prepare check all --root /data
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from moram.data.benchmarks.registry import BENCHMARKS, get_benchmark
from moram.data.folder import resolve_root
from moram.errors import ConfigError

# Calls that fetch every file a dataset's reader needs (one per torchvision archive).
_CALLS: dict[str, list[dict[str, Any]]] = {
    "cifar100": [{"train": True}, {"train": False}],
    "mnist": [{"train": True}, {"train": False}],
}


def download(name: str, root: Path) -> None:
    """Download dataset ``name`` into ``root`` with its torchvision class (``download=True``)."""
    from torchvision import datasets

    benchmark = get_benchmark(name)
    if benchmark.torchvision is None:
        raise ConfigError(f"torchvision has no downloader for {benchmark.title}")
    cls: Callable[..., Any] = getattr(datasets, benchmark.torchvision)
    root.mkdir(parents=True, exist_ok=True)
    for kwargs in _CALLS.get(name, [{}]):
        cls(str(root), download=True, **kwargs)


def _names(names: Sequence[str]) -> list[str]:
    return list(BENCHMARKS) if "all" in names else list(dict.fromkeys(names))


def prepare(names: Sequence[str], root: Path, fetch: Callable[[str, Path], None] = download) -> int:
    """Download each dataset; report each failure on stderr; return the exit status (0: all succeeded)."""
    status = 0
    for name in _names(names):
        benchmark = get_benchmark(name)
        print(f"moram data prepare: {benchmark.title} -> {root}", flush=True)
        try:
            fetch(name, root)
        except Exception as err:  # network, HTTP, checksum and archive errors all end the same way
            by_hand = (
                benchmark.how_to_get(root).rstrip(".") if name == "stanford_cars"
                else f"put the files in torchvision's layout in '{root / benchmark.folders[0]}' by hand"
            )
            print(
                f"moram data prepare: could not download {benchmark.title} ({name}) into '{root}': "
                f"{type(err).__name__}: {str(err).rstrip('.')}. Check the network connection and run again, "
                f"or {by_hand}; `moram data check {name} --root {root}` says what is still missing.",
                file=sys.stderr,
            )
            status = 1
            continue
        if benchmark.read is None and benchmark.coop_file is not None:
            print(f"moram data prepare: {benchmark.title} also needs CoOp's split: {benchmark.how_to_get(root)}")
    return status


def check(names: Sequence[str], root: Path, image_size: int = 224) -> int:
    """Read each dataset back; print its sizes or why it cannot be read; return 0 if all can."""
    status = 0
    for name in _names(names):
        try:
            task = get_benchmark(name).load(root, image_size)
        except (OSError, ValueError) as err:
            print(f"moram data check: {name}: NOT READY: {err}", file=sys.stderr)
            status = 1
            continue
        print(f"moram data check: {name}: {len(task.train)} train, {len(task.test)} test, "  # type: ignore[arg-type]
              f"{len(task.classnames)} classes")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moram data", description="Download and check the benchmark datasets.")
    commands = parser.add_subparsers(dest="command", required=True)
    choices = [*BENCHMARKS, "all"]
    for command, help_text in (
        ("prepare", "download datasets with torchvision's downloaders"),
        ("check", "read datasets back and report what is missing"),
    ):
        sub = commands.add_parser(command, help=help_text)
        sub.add_argument("names", nargs="+", choices=choices, metavar="NAME", help=f"one or more of {choices}")
        sub.add_argument("--root", default=None, help="data root (default: the MORAM_DATA environment variable)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``moram data <prepare|check> NAME... [--root DIR]``; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        root = resolve_root(args.root)
    except ValueError as err:
        print(f"moram data {args.command}: {err} (or pass --root DIR)", file=sys.stderr)
        return 2
    if args.command == "prepare":
        return prepare(args.names, root)
    return check(args.names, root)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
