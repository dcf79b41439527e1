"""ldfa.figures: experiments and plots that regenerate the paper's figures.

Modules: ``make`` (``ldfa figures``: every figure and table), ``verify`` (``ldfa verify``: each
prediction of the linear theory against simulation, docs/verify.md), ``paper`` (``ldfa paper``:
the manuscript's generated inputs), ``sweep`` (``ldfa sweep``), ``store`` (the results store),
and the figure modules themselves.
"""
