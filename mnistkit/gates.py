"""The export gate's decision and the wording both gates use: a figure shown with the digits that tell it apart."""

from __future__ import annotations


def shown(value: float) -> str:
    """`value` with 4 decimals, or as many more as it takes to show it exactly (up to 10, then all of it).

    0.9913 -> '0.9913', 0.99125 -> '0.99125', 2/3 -> '0.6666666666666666': a verdict never reads
    '0.6667 is below 0.6667'.
    """
    for decimals in range(4, 11):
        text = f"{value:.{decimals}f}"
        if float(text) == value:
            return text
    return repr(value)


def export_verdict(accuracy: float, min_accuracy: float) -> tuple[bool, str]:
    """(whether the model is exported, one Markdown sentence saying why)."""
    if accuracy >= min_accuracy:
        return True, f"**Exported**: test accuracy {shown(accuracy)} reached min_accuracy {shown(min_accuracy)}.\n"
    return False, f"**Not exported**: test accuracy {shown(accuracy)} is below min_accuracy {shown(min_accuracy)}.\n"
