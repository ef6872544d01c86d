"""Command line: `flowerdemo train | evaluate | predict | experiment` (also `python -m flowerdemo`)."""
