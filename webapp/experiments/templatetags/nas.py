"""Template filters for figures: accuracies as percentages, large counts with thousands separators."""
from django import template

register = template.Library()


@register.filter
def pct(value, digits: int = 2) -> str:
    if value is None or value == "":
        return "–"
    return f"{100 * float(value):.{int(digits)}f}%"


@register.filter
def count(value) -> str:
    if value is None:
        return "–"
    return f"{int(value):,}"


@register.filter
def seconds(value) -> str:
    if value is None:
        return "–"
    return f"{float(value):.2f} s"
