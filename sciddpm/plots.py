"""Pictures sciddpm writes (spectrograms, maps, slices, score plots): a figure drawn on its own Agg
canvas, so the caller's matplotlib backend and pyplot state are never touched (a notebook keeps
its inline plots), and saved as a PNG atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sciddpm.files import atomic_path


def new_figure(width: float, height: float) -> Any:
    """A ``matplotlib.figure.Figure`` of ``width`` x ``height`` inches, constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` as a PNG through a temporary beside it; return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
