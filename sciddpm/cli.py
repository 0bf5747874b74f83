"""The ``sciddpm`` command: argparse for subcommands and --flags, Hydra for ``key=value`` overrides.

    sciddpm train data=audio trainer=quick             # any number of Hydra overrides
    sciddpm sample model=audio --cond pitch=440 --n 8  # model= is a run name or a run directory
    sciddpm evaluate model=audio

Hydra's own command line rejects ``--flags``, so this front-end separates them: argparse takes the
flags it knows and every leftover ``key=value`` token is an override. No logic lives here: each
subcommand calls ``sciddpm.train`` or ``sciddpm.api`` and prints what was written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from sciddpm.config import GROUPS, options


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args, overrides = parser.parse_known_args(argv)  # leftovers are Hydra's key=value overrides
    unknown = [token for token in overrides if not _is_override(token)]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (overrides are key=value)")
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args, overrides)
    except Exception as error:  # one readable line for users; SCIDDPM_DEBUG=1 for the traceback
        if os.environ.get("SCIDDPM_DEBUG"):
            raise
        print(f"sciddpm {args.command}: error: {error}", file=sys.stderr)
        return 1


def _is_override(token: str) -> bool:
    return "=" in token and not token.startswith("-")


# ------------------------------------------------------------------------------------- commands
def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from sciddpm.config import compose
    from sciddpm.training import train

    path = train(compose(overrides))
    print(f"run directory: {path}")
    return 0


def _sample(args: argparse.Namespace, overrides: list[str]) -> int:
    from sciddpm.api import load

    settings = _run_overrides(overrides, "sample")
    model = load(settings["model"], runs_dir=settings["runs_dir"], device=args.device)
    cond = _parse_cond(args.cond)
    ds = model.sample(args.n, cond, steps=args.steps, sampler=args.sampler, seed=args.seed,
                      guidance=args.guidance, batch_size=args.batch_size)
    out = Path(args.out) if args.out else Path("samples") / model.name
    for path in model.write(ds, out):
        print(path)
    return 0


def _evaluate(args: argparse.Namespace, overrides: list[str]) -> int:
    from sciddpm.api import load
    from sciddpm.evaluate import evaluate

    settings = _run_overrides(overrides, "evaluate")
    model = load(settings["model"], runs_dir=settings["runs_dir"], device=args.device)
    out = Path(args.out) if args.out else model.path / "evaluation"
    for path in evaluate(model, out, n=args.n, steps=args.steps, sampler=args.sampler, seed=args.seed):
        print(path)
    return 0


def _run_overrides(overrides: list[str], command: str) -> dict[str, str]:
    """``model=NAME`` and ``runs_dir=DIR`` are the overrides sample/evaluate understand."""
    settings = {"runs_dir": "runs"}
    for token in overrides:
        key, value = token.split("=", 1)
        if key not in ("model", "runs_dir"):
            raise ValueError(
                f"`sciddpm {command}` takes model=<run name or path> and runs_dir=<dir>, not {key!r}; "
                "sampling options are flags (see `sciddpm sample --help`)")
        settings[key] = value
    if "model" not in settings:
        raise ValueError(f"`sciddpm {command}` needs model=<run name or run directory>, e.g. model=audio")
    return settings


def _parse_cond(items: list[str] | None) -> dict[str, float]:
    cond: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--cond takes name=value (e.g. --cond pitch=440), got {item!r}")
        try:
            cond[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--cond {name}: {value!r} is not a number") from None
    return cond


# --------------------------------------------------------------------------------------- parser
def _parser() -> argparse.ArgumentParser:
    groups = "\n".join(f"  {group:<10} {', '.join(options(group)) or '-'}" for group in GROUPS)
    parser = argparse.ArgumentParser(
        prog="sciddpm",
        description="Train and sample diffusion models on scientific data.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Config groups (choose with group=option, change any value with key.sub=value):\n"
               f"{groups}\n\nExamples:\n  sciddpm train data=audio trainer=quick\n"
               "  sciddpm sample model=audio --cond pitch=440 --n 8\n",
    )
    commands = parser.add_subparsers(dest="command", metavar="{train,sample,evaluate}")

    train = commands.add_parser(
        "train", help="train (or resume) a model: sciddpm train [key=value ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a model; rerunning the same command resumes from the last checkpoint.\n"
                    "Under torchrun (torchrun --nproc_per_node=N -m sciddpm train ...) it trains with DDP.",
        epilog=f"Config groups:\n{groups}\n\nOther keys: name=<run name> runs_dir=<dir> seed=<int>, and any "
               "trainer.*, model.kwargs.*, data.kwargs.*, diffusion.* value.\n"
               "Example: sciddpm train data=audio trainer=quick trainer.steps=500 name=tones-test")
    train.set_defaults(run=_train)

    sample = commands.add_parser(
        "sample", help="sample from a trained run: sciddpm sample model=NAME [--cond k=v ...]",
        description="Sample from a trained run (model=<run name or path>, runs_dir=<dir>) and write "
                    "the modality's files (WAV, netCDF/zarr, PNG); prints the paths.")
    sample.add_argument("--cond", action="append", metavar="NAME=VALUE",
                        help="a condition in the data's units, repeatable (e.g. --cond pitch=440)")
    _sampling_flags(sample, default_n=1)
    sample.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale (1 = plain conditional)")
    sample.add_argument("--batch-size", type=int, default=None, help="members per sampler batch")
    sample.add_argument("--out", default=None,
                        help="output directory, or a .nc / .zarr path (default samples/<run>)")
    sample.set_defaults(run=_sample)

    evaluate = commands.add_parser(
        "evaluate", help="score a run against held-out data: sciddpm evaluate model=NAME",
        description="Sample for held-out conditions and write metrics JSON and plots.")
    _sampling_flags(evaluate, default_n=16)
    evaluate.add_argument("--out", default=None, help="output directory (default <run>/evaluation)")
    evaluate.set_defaults(run=_evaluate)
    return parser


def _sampling_flags(parser: argparse.ArgumentParser, *, default_n: int) -> None:
    parser.add_argument("--n", type=int, default=default_n, help=f"number of samples (default {default_n})")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run's config)")
    parser.add_argument("--sampler", default=None,
                        help="heun, euler, dpmpp_2m, ddim or ddpm (default: the run's config)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")

