"""Human-readable outputs of an evaluation: the self-contained HTML results page."""

from cxrgen.report.html import (
    DEFAULT_PAGE_SIZE,
    ResultsPageError,
    attach_scores,
    build_results_page,
    page_data,
    write_results_page,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "ResultsPageError",
    "attach_scores",
    "build_results_page",
    "page_data",
    "write_results_page",
]
