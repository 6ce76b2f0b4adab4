"""``dvc plots`` as a page that draws offline: ``python -m pipeline.plots [show|diff] [REV ...]``
(``make plots``).

DVC's HTML loads Vega, Vega-Lite and Vega-Embed from a CDN, so without a network the page
stays blank. This writes an HTML template whose ``<head>`` holds the three libraries inline
(the bundle that ``vl-convert-python``, a pinned dependency of the ``pipeline`` extra, ships),
hands it to ``dvc plots show|diff --html-template`` and prints where the page is; it opens
nothing. The template has no ``{scripts}`` placeholder, so DVC's CDN tags are left out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

#: The Vega-Lite version of the bundle: DVC's templates are Vega-Lite 5 specs.
VEGA_LITE = "5.21"
DEFAULT_OUT = "dvc_plots"

_PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>DVC plots</title>
<!-- Vega {vega}, Vega-Lite {vega_lite}, Vega-Embed {embed}, inlined by pipeline/plots.py: no network needed -->
<script type="text/javascript">
{bundle}
</script>
<style>
table {{ border-spacing: 15px; }}
</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def offline_template() -> str:
    """The HTML template: DVC's ``{plot_divs}`` placeholder and the libraries inline."""
    import vl_convert as vlc

    bundle = vlc.javascript_bundle(vl_version=VEGA_LITE)
    # Inside <script> the HTML parser only looks for these two; written with an escaped
    # character they mean the same to JavaScript (in strings and regular expressions alike).
    bundle = bundle.replace("</script", "<\\/script").replace("<!--", "<\\!--")
    page = _PAGE.format(
        vega=vlc.get_vega_version(), vega_lite=VEGA_LITE, embed=vlc.get_vega_embed_version(), bundle=bundle
    )
    for placeholder in ("{scripts}", "{refresh_tag}"):
        # DVC substitutes these anywhere in the page: the bundle must not contain them
        if placeholder in bundle:
            raise RuntimeError(f"the Vega bundle contains DVC's placeholder {placeholder}")
    return page


def dvc_executable() -> str:
    """The ``dvc`` of this interpreter's environment (else the one on PATH)."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else (shutil.which("dvc") or "dvc")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.plots", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "command", nargs="?", choices=("diff", "show"), default="diff", help="dvc plots diff (default) or show"
    )
    parser.add_argument("revisions", nargs="*", help="git revisions or experiment names (diff; default: HEAD)")
    parser.add_argument("-o", "--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.command == "show" and args.revisions:
        parser.error("show takes no revisions (use diff)")
    try:
        page = offline_template()
    except ImportError:
        print(
            "plots: error: the vl_convert module (package vl-convert-python) is missing; "
            "expected it from pip install -e '.[pipeline]' (make install)",
            file=sys.stderr,
        )
        return 2
    fd, template = tempfile.mkstemp(prefix="simsc-plots-", suffix=".html")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        cmd = [dvc_executable(), "plots", args.command, *args.revisions, "--html-template", template, "-o", args.out]
        rc = subprocess.run(cmd).returncode
    finally:
        os.unlink(template)
    if rc == 0:
        print(f"plots: {Path(args.out, 'index.html')} (draws offline: Vega inline)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
