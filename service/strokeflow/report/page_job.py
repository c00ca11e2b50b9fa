"""The result pages of one analysis, rendered in a helper process while the SEG and SR
are built.

Drawing the pages (matplotlib for the summary page, numpy and Pillow for the slice pages)
and building the SEG and SR (highdicom) share nothing but their inputs, and both hold the
GIL, so on a machine with two cores the summary and lesion pages are drawn by a second
(forked) process: it sends them back through a pipe, while this process builds the SEG
and SR and then draws the map pages (:data:`HELPER_KINDS`: the split that keeps both
processes busy for about as long on the thin-slice study, where the map pages would be
most of what is sent back). The helper inherits matplotlib already imported where
:mod:`strokeflow.report.warm` loaded it during the analysis, and imports it itself
otherwise.
The pages are pure functions of their inputs, so they are the same pixels whichever
process draws them. When no helper process can be started or it fails, the pages are
drawn here, serially.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from strokeflow.analysis.stages import usable_cpus
from strokeflow.analysis.volume import Geometry
from strokeflow.report.helper_process import fork_helper, killed_after
from strokeflow.report.render import MapSpec, Outline, SummaryContent

__all__ = ["PageKind", "PageSet", "RenderedPages", "render_pages", "start_rendering"]

log = logging.getLogger(__name__)

#: The three page series, in the order they are written.
PageKind = Literal["summary", "lesions", "maps"]
PAGE_KINDS: tuple[PageKind, ...] = ("summary", "lesions", "maps")
#: The pages the helper process draws; this process draws the others meanwhile.
HELPER_KINDS: tuple[PageKind, ...] = ("summary", "lesions")


@dataclass(frozen=True)
class PageSet:
    """Everything the pages of one analysis show (what the helper process is sent).

    Attributes
    ----------
    title : str
        E.g. ``"CT perfusion"``; starts each page title.
    summary : SummaryContent or str
        The summary page, its header lines filled in (or why they could not be).
    anatomy_zyx : numpy.ndarray
        Grey-scale anatomy of the lesion pages.
    regions : dict of str to Outline
        Every region's outline, by region key.
    outlined : list of str
        Keys of the regions outlined on the lesion pages, the first on top.
    geometry : Geometry
        Grid of ``anatomy_zyx``, the outlines and (by default) the maps.
    anatomy_window : (float, float)
        Display range of the anatomy.
    anatomy_head_zyx : numpy.ndarray or None
        Mask the lesion panels are cropped to (see
        :func:`~strokeflow.report.panels.render_lesion_pages`).
    maps : list of MapSpec
        One map page each (or more, for many slices).
    """

    title: str
    summary: SummaryContent | str
    anatomy_zyx: np.ndarray
    regions: dict[str, Outline]
    outlined: list[str]
    geometry: Geometry
    anatomy_window: tuple[float, float]
    anatomy_head_zyx: np.ndarray | None
    maps: list[MapSpec]


#: Pages of each kind, or the reason the kind could not be drawn (one kind failing costs
#: only its own series).
RenderedPages = dict[PageKind, list[np.ndarray] | str]


def render_pages(pages: PageSet, kinds: Sequence[PageKind] = PAGE_KINDS) -> RenderedPages:
    """Draw the summary, lesion and map pages of ``pages``.

    Parameters
    ----------
    pages : PageSet
        What the pages show.
    kinds : sequence of {"summary", "lesions", "maps"}
        The page series to draw; all three by default.

    Returns
    -------
    dict
        Each of ``kinds``: a list of ``(rows, columns, 3)`` uint8 pages, or the error
        message when that kind could not be drawn.
    """
    # Imported here: matplotlib and Pillow are needed only where pages are drawn.
    from strokeflow.report.panels import render_lesion_pages, render_map_pages
    from strokeflow.report.render import render_summary_page

    def summary() -> list[np.ndarray]:
        if isinstance(pages.summary, str):
            raise ValueError(pages.summary)
        return [render_summary_page(pages.summary)]

    draw: dict[PageKind, Callable[[], list[np.ndarray]]] = {
        "summary": summary,
        "lesions": lambda: render_lesion_pages(
            pages.anatomy_zyx,
            [pages.regions[key] for key in pages.outlined],
            pages.geometry,
            title=f"{pages.title}: lesions",
            window=pages.anatomy_window,
            head_zyx=pages.anatomy_head_zyx,
        ),
        "maps": lambda: render_map_pages(pages.maps, pages.geometry, title=pages.title),
    }
    out: RenderedPages = {}
    for kind in kinds:
        try:
            out[kind] = draw[kind]()
        except Exception as exc:
            out[kind] = str(exc) or type(exc).__name__
    return out


def _render_in_child(pages: PageSet, write_fd: int) -> None:
    """The forked helper: draw, send the pickled pages, and leave without running any of
    the parent's exit handlers or flushing its buffers."""
    code = 1
    try:
        reply = pickle.dumps(render_pages(pages, HELPER_KINDS), protocol=pickle.HIGHEST_PROTOCOL)
        with os.fdopen(write_fd, "wb") as out:
            out.write(reply)
        code = 0
    finally:
        os._exit(code)


def start_rendering(pages: PageSet, *, parallel: bool = True) -> Callable[[], RenderedPages]:
    """Start drawing ``pages`` and return the function that waits for them.

    Parameters
    ----------
    pages : PageSet
        What the pages show.
    parallel : bool
        Draw them in a forked helper process while the caller goes on (where the
        platform forks and this process may use two CPUs or more); False draws them
        here, when the returned function is called.

    Returns
    -------
    callable
        Returns the :func:`render_pages` result; to call once. With a helper process,
        it draws this process's share of the pages before it waits for the helper's.

    Notes
    -----
    A fork, not a fresh interpreter: the child has the inputs and numpy, SciPy and Pillow
    already (a spawned one spent about 0.7 s more CPU on the 2400-image study,
    importing them again). The child only draws (numpy, Pillow, matplotlib's Agg canvas) and writes
    to its pipe: it takes no lock that another thread of this process may hold (CPython
    re-creates the import and logging locks in a forked child), and a child that hangs
    anyway is killed by the watchdog of :mod:`strokeflow.report.helper_process` and the
    pages drawn here.
    """
    if not parallel or not hasattr(os, "fork") or usable_cpus() < 2:
        # On one CPU the helper would only add its own cost.
        return lambda: render_pages(pages)
    read_fd, write_fd = os.pipe()
    try:
        pid = fork_helper()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        log.info("result pages drawn in this process (no helper process: %s)", exc)
        return lambda: render_pages(pages)
    if pid == 0:
        os.close(read_fd)
        _render_in_child(pages, write_fd)
    os.close(write_fd)

    def wait() -> RenderedPages:
        try:
            here = render_pages(pages, [k for k in PAGE_KINDS if k not in HELPER_KINDS])
        finally:
            # Always collected, even when drawing here failed.
            with killed_after(pid), os.fdopen(read_fd, "rb") as reply_stream:
                reply = reply_stream.read()
                _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            try:
                helped: RenderedPages = pickle.loads(reply)
                return {kind: {**helped, **here}[kind] for kind in PAGE_KINDS}
            except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
                reason = f"unreadable reply ({exc})"
        else:
            reason = f"exit code {code}"
        log.warning("page helper process failed (%s); drawing the pages here", reason)
        return {**render_pages(pages, HELPER_KINDS), **here}

    return wait
