"""`dvc plots show` draws every declared plot offline, in a real browser (headless Chromium).

The page is made from the committed plot data with the repo's template (plots/template.html, the
vega libraries inline; .dvc/config points DVC at it), then rendered by Chromium with every host
unresolvable, so nothing can come from a CDN.  Each plot of dvc.yaml must have drawn: an SVG with
marks in its own div.  The screenshot is kept in test-artifacts/plots.png.  CI installs Chromium
(.ci/run); elsewhere the test is skipped without it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_pipeline import run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=15000"]


def declared_plots() -> list[str]:
    return [next(iter(p)) for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Chromium for this test (.ci/run installs Debian's chromium)")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    out = tmp_path_factory.mktemp("plots") / "dvc_plots"
    run(ROOT, "dvc", "plots", "show", "-o", str(out))
    return out / "index.html"


def chromium(page, *args, tmp) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp}", *args, page.as_uri()], capture_output=True,
                          text=True, timeout=180)


def test_the_page_loads_nothing_from_the_network(page):
    html = page.read_text()
    assert not re.search(r"<script[^>]+src=", html), "a script is loaded from somewhere"
    assert "cdn.jsdelivr.net" not in html


def test_the_libraries_are_the_pinned_releases(page):
    """Each inline library is byte for byte the pinned npm release (plots/vendor.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("vendor", ROOT / "plots" / "vendor.py")
    vendor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vendor)
    template = (ROOT / "plots" / "template.html").read_text()
    for name, version, _, sha256 in vendor.LIBS:
        body = template.split(f"/* {name}@{version} */\n", 1)[1].split("\n    </script>", 1)[0]
        assert hashlib.sha256(body.encode()).hexdigest() == sha256, name
        assert (ROOT / "plots" / "LICENSES" / f"{name}-{version}.txt").read_text().startswith("Copyright")


def test_every_declared_plot_draws_in_a_browser(page, tmp_path):
    dom = chromium(page, "--dump-dom", tmp=tmp_path / "profile").stdout
    ARTIFACTS.mkdir(exist_ok=True)
    chromium(page, "--window-size=1300,2200", "--hide-scrollbars", f"--screenshot={ARTIFACTS / 'plots.png'}",
             tmp=tmp_path / "profile2")
    assert (ARTIFACTS / "plots.png").stat().st_size > 10_000
    ids = [re.sub(r"[^A-Za-z0-9-]", "_", name) for name in declared_plots()]
    starts = [dom.find(f'<div id="{i}"') for i in ids]
    assert all(s >= 0 for s in starts), dict(zip(ids, starts))
    bounds = sorted(starts) + [len(dom)]
    for name, start in zip(declared_plots(), starts):
        part = dom[start:bounds[bounds.index(start) + 1]]
        marks = re.findall(r'<g class="mark-[a-z]+ role-mark[^"]*"[^>]*>(.*?)</g>', part, re.S)
        assert "<svg" in part and any(re.search(r"<(path|rect|line|symbol)\b", m) for m in marks), name
