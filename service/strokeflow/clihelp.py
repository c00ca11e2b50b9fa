"""How the command line's help pages look (shared by every Typer app of the package)."""

from __future__ import annotations

from typing import Any


def show_flags_without_metavar() -> None:
    """Show on/off flags as ``--verbose``, not ``--verbose <bool>``: they take no value.

    Typer renders every option's type in the help table, flags included; a flag's type
    column is left empty here (``--help`` is one too).
    """
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_flag_aware", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        if self.is_bool_flag and self.metavar is None:
            return None
        return shown(self, ctx)

    display_type_rich._flag_aware = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]
