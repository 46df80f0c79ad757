"""Reports: the markdown summary and the self-contained HTML report."""

from qkscore.report.summary import summary_markdown, verdict

__all__ = ["summary_markdown", "verdict"]
