"""Build plots/template.html: the page `dvc plots show` writes, with vega, vega-lite and vega-embed inline.

    python plots/vendor.py          # needs npm (the npm registry); rewrites template.html and LICENSES/

DVC's own page loads the three libraries from a CDN, so without internet it stays blank.  This page
carries them inline instead: the minified builds of the pinned npm releases below (the versions
DVC's page asks for), each checked against its sha256, with their licences in plots/LICENSES/.
`.dvc/config` points `plots.html_template` here, so `dvc plots show` renders offline.  The page
also makes vega-embed draw SVG (marks in the page, which tests/test_plots.py checks in a browser)
and hides its action menu.  Rebuilding gives the same bytes.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (npm package, version, file in the package, sha256 of that file)
LIBS = [("vega", "5.20.2", "build/vega.min.js",
         "4794d0169cb1f3ebad8117fe98ba5bd652dd725905ec0384e832391dbccb03be"),
        ("vega-lite", "5.2.0", "build/vega-lite.min.js",
         "d73157451b3978015ab31dacd55ff90d986ab8663fc0abed50f97b3cd90002cb"),
        ("vega-embed", "6.18.2", "build/vega-embed.min.js",
         "1ba9826431ddc9805e815ad92acc811c819f2bfd32bda2a128b8c4b5070fab5e")]

HEAD = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- vega 5.20.2, vega-lite 5.2.0, vega-embed 6.18.2 (BSD-3-Clause, University of Washington
         Interactive Data Lab; plots/LICENSES/), inline so that the page renders offline;
         built by plots/vendor.py -->
"""
TAIL = """    <script type="text/javascript">
        // Every plot as SVG, without the action menu: the same spec, marks in the page.
        var vegaEmbedBundled = vegaEmbed;
        vegaEmbed = function (el, spec, opt) {
            return vegaEmbedBundled(el, spec, Object.assign({renderer: "svg", actions: false}, opt || {}));
        };
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def fetch(work: Path, name: str, version: str, member: str, sha256: str) -> tuple[bytes, bytes]:
    """(the file, the package's LICENSE) of an npm release, the file checked against `sha256`."""
    subprocess.run(["npm", "pack", "--silent", f"{name}@{version}"], cwd=work, check=True, capture_output=True)
    with tarfile.open(work / f"{name}-{version}.tgz") as tar:
        data = tar.extractfile(f"package/{member}").read()
        licence = tar.extractfile("package/LICENSE").read()
    if hashlib.sha256(data).hexdigest() != sha256:
        sys.exit(f"error: {name}@{version} {member}: sha256 {hashlib.sha256(data).hexdigest()} is not the pinned "
                 f"{sha256}")
    return data, licence


def main() -> None:
    parts = [HEAD]
    (HERE / "LICENSES").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, version, member, sha256 in LIBS:
            data, licence = fetch(Path(tmp), name, version, member, sha256)
            parts.append(f'    <script type="text/javascript">/* {name}@{version} */\n{data.decode()}\n    </script>\n')
            (HERE / "LICENSES" / f"{name}-{version}.txt").write_bytes(licence)
    parts.append(TAIL)
    (HERE / "template.html").write_text("".join(parts))
    print(f"wrote {HERE / 'template.html'}")


if __name__ == "__main__":
    main()
