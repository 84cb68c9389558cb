"""The layouts onnxprune knows, by the name the CLI, the JSON and the report use."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from onnxprune.common.errors import UserError
from onnxprune.layouts.base import DEFAULT_LEVELS, DENSE, Layout, LayoutOption, is_fast_on
from onnxprune.layouts.block import Block
from onnxprune.layouts.channel import Channel
from onnxprune.layouts.dense import Dense
from onnxprune.layouts.nm import NM
from onnxprune.layouts.structure import StructureLayout
from onnxprune.layouts.unstructured import Unstructured

LAYOUTS: dict[str, type] = {
    "dense": Dense,
    "block": Block,
    "channel": Channel,
    "structure": StructureLayout,
    "nm": NM,
    "unstructured": Unstructured,
}


def get_layout(name: str) -> Layout:
    """A fresh instance of the layout called ``name`` (default settings).

    Raises:
        UserError: no layout has that name; the message lists the available ones.
    """
    try:
        cls = LAYOUTS[name]
    except KeyError:
        raise UserError(f"unknown layout {name!r}; available: {', '.join(LAYOUTS)}") from None
    return cls()


def option_label(option: LayoutOption) -> str:
    """Short human label of ``option``, e.g. ``block 64x64 75%`` or ``nm 2:4``: its layout's own
    words (an option of a layout no longer registered reads ``name level``)."""
    layout = LAYOUTS.get(option.layout)
    if layout is None:
        return f"{option.layout} {option.level:.0%}"
    return layout.label(option)


def layouts_fast_on(provider: str) -> list[str]:
    """Names of the layouts whose materialized form can beat dense on ``provider`` (with dense)."""
    return [name for name, cls in LAYOUTS.items() if is_fast_on(cls, provider)]


def candidate_options(
    candidate, names: Sequence[str], levels: Iterable[float] = DEFAULT_LEVELS
) -> list[LayoutOption]:
    """Dense first, then every option the named layouts offer ``candidate`` at ``levels``.

    This is the menu the latency table times and the allocator chooses from; layouts that cannot
    apply to the candidate simply contribute nothing.
    """
    levels = tuple(levels)
    found = [DENSE]
    for name in names:
        if name != "dense":
            found.extend(get_layout(name).options(candidate, levels)[0])
    return found
