"""Recipe: write the embedded tones dataset (harmonic tones with known pitch) as a folder + CSV.

    python datasets/tones.py --out data/tones [--n-clips 2000 --sample-rate 8000 --clip-samples 2048
                                               --fmin 110 --fmax 880 --seed 0]

The folder holds ``tone_00000.wav`` ... (float32 WAV) and ``metadata.csv`` (``filename,pitch[Hz]``),
the layout ``build_adapter("audio", source="folder", path=...)`` reads. The synthesis lives in
``sciddpm.data.tones`` (this recipe only calls it), so the audio adapter can build the same data
on first use without importing ``datasets/``; with the same parameters both give identical clips.
"""

from __future__ import annotations

import argparse
import sys

from sciddpm.data.tones import DEFAULTS, describe, write_tones


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="new (or empty) directory to write")
    for key, default in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(default), default=default,
                            help=f"default {default}")
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    try:
        path = write_tones(out, **args)
    except (FileExistsError, ValueError, ImportError) as err:
        parser.error(str(err))
    print(f"wrote {describe(**args)} to {path}")
    print(f"train on it with: sciddpm train data=audio_folder data.kwargs.path={path} "
          f"data.kwargs.clip_samples={args['clip_samples']} name=tones-folder")  # the preset's clip is 16384
    return 0


if __name__ == "__main__":
    sys.exit(main())
