"""``python -m sciddpm ...`` (and so ``torchrun -m sciddpm train ...``): the same as ``sciddpm``."""

from sciddpm.cli import main

raise SystemExit(main())
