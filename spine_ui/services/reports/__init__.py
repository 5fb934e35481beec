"""Reports for people: the printable PDF of one study and the bundle's metrics in words."""
from spine_ui.services.reports.metrics import metric_lines

__all__ = ["metric_lines"]
