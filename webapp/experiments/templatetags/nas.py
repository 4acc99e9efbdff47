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


@register.filter
def split(value: str) -> list[str]:
    return value.split()


@register.filter
def get(mapping, key):
    return mapping.get(key, "") if hasattr(mapping, "get") else ""


@register.filter
def duration(value) -> str:
    """Seconds as h:mm:ss (an estimate on the review queue)."""
    if value is None:
        return "–"
    minutes, secs = divmod(int(round(float(value))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


@register.filter
def status_label(value: str) -> str:
    """A status as the pages and the JSON both spell it ("pending_review" reads "pending review")."""
    return str(value).replace("_", " ")


@register.filter
def figure(value, experiment) -> str:
    """A trial's figure as its experiment's estimator defines it: a percentage for an accuracy, a number for a
    score."""
    return experiment.figure.format(value)
