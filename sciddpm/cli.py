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

from sciddpm.checks import as_count, parse_number
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
    except KeyboardInterrupt:
        print(f"sciddpm {args.command}: interrupted. Files are only ever complete or absent; the same command "
              "again resumes (train: from its last checkpoint; --cases: the members not yet written)",
              file=sys.stderr)
        return 130
    except Exception as error:  # one readable line for users; SCIDDPM_DEBUG=1 for the traceback
        if os.environ.get("SCIDDPM_DEBUG"):
            raise
        print(f"sciddpm {args.command}{_rank_label()}: error: {error}", file=sys.stderr)
        return 1


def _rank_label() -> str:
    """' [rank 2 of 4]' under torchrun, where every process prints its own error; else ''."""
    world = os.environ.get("WORLD_SIZE", "1")
    return f" [rank {os.environ.get('RANK', '?')} of {world}]" if world.isdigit() and int(world) > 1 else ""


def _is_override(token: str) -> bool:
    """Hydra's ``key=value``, ``+key=value``, ``++key=value`` and ``~key`` (delete; ``~key=value`` too)."""
    return ("=" in token or token.startswith("~")) and not token.startswith("-")


# ------------------------------------------------------------------------------------- commands
def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from sciddpm.config import compose
    from sciddpm.training import train

    path = train(compose(overrides))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, once
        print(f"run directory: {path}")
    return 0


def _sample(args: argparse.Namespace, overrides: list[str]) -> int:
    from sciddpm.api import load
    from sciddpm.cases import read_cases_csv

    settings = _run_overrides(overrides, "sample")
    cond = _parse_cond(args.cond)
    if args.cases is not None:  # the flags are checked before the model loads (and perhaps compiles)
        if args.infill:
            raise ValueError("--cases and --infill do not combine: fill observations, or sample cases")
        if args.out and Path(args.out).suffix != ".zarr":
            raise ValueError(f"--cases writes one zarr store; give --out a path ending in .zarr, got {args.out}")
    elif args.members is not None:
        raise ValueError("--members goes with --cases; for one set of conditions use --n")
    model = load(settings["model"], runs_dir=settings["runs_dir"], device=args.device,
                 bf16=False if args.fp32 else None, compile=args.compile)
    options = dict(steps=args.steps, sampler=args.sampler, seed=args.seed, guidance=args.guidance)
    if args.cases is not None:
        from sciddpm.ensembles import write_ensemble

        out = Path(args.out) if args.out else Path("samples") / model.name / "ensemble.zarr"
        cases = read_cases_csv(args.cases, model.conditions)
        both = sorted(set(cases) & set(cond))
        if both:
            raise ValueError(f"{', '.join(both)} given both as a --cases column and as --cond; give each once")
        cases.update(cond)
        members = as_count(*((args.n, "--n") if args.members is None else (args.members, "--members")))  # 0: refused
        batch_size = 8 if args.batch_size is None else as_count(args.batch_size, "--batch-size")
        summary = write_ensemble(model, cases, members, out, batch_size=batch_size, **options)
        if summary["rank"] == 0:
            print(f"{out} ({summary['items']} members in all; {summary['sampled']} sampled by rank 0 of "
                  f"{summary['world']}, {summary['skipped']} already there)")
        return 0
    if args.infill:
        from sciddpm.data.stores import open_store

        observed = open_store(args.infill, what="--infill observations",
                              hint="give a .zarr store or a netCDF file of the fields with NaN gaps")
        ds = model.infill(observed, args.n, cond or None, batch_size=args.batch_size, **options)
    else:
        ds = model.sample(args.n, cond, batch_size=args.batch_size, **options)
    out = Path(args.out) if args.out else Path("samples") / model.name
    for path in model.write(ds, out):
        print(path)
    return 0


def _evaluate(args: argparse.Namespace, overrides: list[str]) -> int:
    from sciddpm.api import load
    from sciddpm.evaluate import evaluate

    settings = _run_overrides(overrides, "evaluate")
    model = load(settings["model"], runs_dir=settings["runs_dir"], device=args.device,
                 bf16=False if args.fp32 else None, compile=args.compile)
    out = Path(args.out) if args.out else model.path / "evaluation"
    for path in evaluate(model, out, n=args.n, steps=args.steps, sampler=args.sampler, seed=args.seed,
                         guidance=args.guidance, cases=args.cases, members=args.members):
        print(path)
    return 0


def _run_overrides(overrides: list[str], command: str) -> dict[str, str]:
    """``model=NAME`` and ``runs_dir=DIR`` are the overrides sample/evaluate understand."""
    settings = {"runs_dir": "runs"}
    for token in overrides:
        key, equals, value = token.partition("=")
        if key not in ("model", "runs_dir") or not equals:
            raise ValueError(
                f"`sciddpm {command}` takes model=<run name or path> and runs_dir=<dir>, not {token!r}; "
                f"sampling options are flags (see `sciddpm {command} --help`)")
        if not value.strip():
            wanted = "run name or run directory" if key == "model" else "dir"
            raise ValueError(f"`sciddpm {command}` got an empty {key}=; give {key}=<{wanted}>")
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
        if name.strip() in cond:
            raise ValueError(f"--cond {name.strip()} is given twice ({cond[name.strip()]:g} and {value}); give it once")
        try:
            cond[name.strip()] = parse_number(value)
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
               "trainer.*, model.kwargs.*, data.kwargs.*, diffusion.*, sampler.* value (sampler.*: what\n"
               "sampling from the run uses by default, e.g. sampler.guidance=3).\n"
               "Example: sciddpm train data=audio trainer=quick trainer.steps=500 name=tones-test")
    train.set_defaults(run=_train)

    sample = commands.add_parser(
        "sample", help="sample from a trained run: sciddpm sample model=NAME [--cond k=v ...]",
        description="Sample from a trained run (model=<run name or path>, runs_dir=<dir>) and write "
                    "the modality's files (WAV, netCDF/zarr, PNG); prints the paths.")
    sample.add_argument("--cond", action="append", metavar="NAME=VALUE",
                        help="a condition in the data's units, repeatable (e.g. --cond pitch=440)")
    _sampling_flags(sample, default_n=1)
    sample.add_argument("--batch-size", type=int, default=None, help="members per sampler batch")
    sample.add_argument("--out", default=None,
                        help="output directory, or a .nc / .zarr path (default samples/<run>)")
    sample.add_argument("--cases", default=None, metavar="CSV",
                        help="ensembles for many cases: a CSV with one column per condition, one row per "
                             "case; writes one zarr store (dims case, member); under torchrun the ranks "
                             "share the work, and rerunning completes an interrupted store")
    sample.add_argument("--members", type=int, default=None, help="members per case with --cases (default --n)")
    sample.add_argument("--infill", default=None, metavar="OBS",
                        help="a .zarr/.nc of observed fields with NaN gaps: --n members that fill the gaps "
                             "consistently with the observed values (kept as given)")
    sample.set_defaults(run=_sample)

    evaluate = commands.add_parser(
        "evaluate", help="score a run against held-out data: sciddpm evaluate model=NAME",
        description="Sample for held-out conditions and write metrics JSON and plots.")
    _sampling_flags(evaluate, default_n=16)
    evaluate.add_argument("--cases", type=int, default=4,
                          help="held-out cases scored as ensembles (CRPS, spread/skill; 0 skips; default 4)")
    evaluate.add_argument("--members", type=int, default=16, help="members per ensemble case (default 16)")
    evaluate.add_argument("--out", default=None, help="output directory (default <run>/evaluation)")
    evaluate.set_defaults(run=_evaluate)
    return parser


def _sampling_flags(parser: argparse.ArgumentParser, *, default_n: int) -> None:
    parser.add_argument("--n", type=int, default=default_n, help=f"number of samples (default {default_n})")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run's config)")
    parser.add_argument("--sampler", default=None,
                        help="heun, euler, dpmpp_2m, ddim, ddpm or a plugin's sampler (default: the run's config)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale (1 = plain conditional; default: the run's config)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed (default 0): the same seed gives the same members, so draw more "
                             "members with another seed, not by repeating the command")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--fp32", action="store_true",
                        help="run the network in float32 (default: bf16 where the device has native bf16, "
                             "unless the run was trained with trainer.bf16=false)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network (on CUDA with CUDA graphs); each batch shape "
                             "compiles once, so it pays for large ensembles - see docs/performance.md")

