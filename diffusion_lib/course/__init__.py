"""Helpers for the chapters: widget callbacks, measurements and exercise checks.

Every widget callback here is a plain function that returns what it shows (a matplotlib
`Figure`, arrays or numbers), so the tests call it directly, without a browser. The
mathematics lives in the rest of `diffusion_lib`; these modules only arrange it for display.
"""
