"""What every Spectra page shares: one jinja2 environment (autoescaping on) with the macros in
`templates/macros.html.j2`, the base template (`templates/base.html.j2`: stylesheet, plotly.js,
the toolbar settings and the page's data inline), and the JSON the pages carry.

A page is `render_page("<name>.html.j2", css=[...], app_js=..., data=..., **context)`; its
template extends `base.html.j2`. Nothing a page embeds is fetched: plotly.js is the partial
"cartesian" bundle of plotly's own npm distribution, shipped in `assets/plotly/` with its licence.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib.resources import files
from typing import Any

import jinja2
import plotly.graph_objects as go
from markupsafe import Markup

from spectra_interp.viz.figures import format_number

# The plotly.js toolbar: no button that sends data anywhere (plotly.js 4 shows "Share chart",
# an upload to Chart Studio, unless told not to) and no plotly logo link.
PLOTLY_CONFIG = {
    "responsive": True,
    "displaylogo": False,
    "showSendToCloud": False,
    "showEditInChartStudio": False,
    "modeBarButtonsToRemove": ["sendDataToCloud", "editInChartStudio"],
}
PLOTLY_BUNDLE = "plotly/plotly-cartesian.min.js"


@cache
def template_environment() -> jinja2.Environment:
    """The pages' jinja2 environment: templates in `viz/templates`, autoescaping on, undefined
    names an error, and the `num` filter (`figures.format_number`)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("spectra_interp.viz", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.do"],
    )
    env.filters["num"] = format_number
    return env


def asset(name: str) -> Markup:
    """A template folder file (stylesheet, script) as text to inline."""
    env = template_environment()
    assert env.loader is not None
    return Markup(env.loader.get_source(env, name)[0])


def macros() -> Any:
    """The shared macros (`templates/macros.html.j2`) as callables returning Markup."""
    return template_environment().get_template("macros.html.j2").module


def render_value(value: object) -> Markup:
    """Any JSON value as HTML: nested dicts become nested tables, booleans become flags."""
    return Markup(macros().value(value).strip())


def _bundle_path() -> Any:
    return files("spectra_interp").joinpath(f"assets/{PLOTLY_BUNDLE}")


@cache
def plotly_js() -> str:
    """plotly.js' partial cartesian bundle, safe to inline (no `</script`)."""
    return _bundle_path().read_text(encoding="utf-8").replace("</script", "<\\/script")


def plotly_bundle_version() -> str:
    """The shipped bundle's plotly.js version, from its header."""
    match = re.search(r"plotly\.js \(cartesian - minified\) v(\S+)", plotly_js()[:400])
    if not match:
        raise ValueError("the shipped plotly.js bundle has no version header")
    return match.group(1)


def bundle_trace_types() -> tuple[str, ...]:
    """The trace types the shipped bundle draws, from its package README."""
    readme = files("spectra_interp").joinpath("assets/plotly/README.md").read_text("utf-8")
    line = next(line for line in readme.splitlines() if line.startswith("Contains trace modules"))
    return tuple(re.findall(r"`(\w+)`", line))


def fig_json(fig: go.Figure | None) -> dict | None:
    """A figure as the plain JSON plotly.js takes (arrays as typed-array specs)."""
    return None if fig is None else json.loads(fig.to_json())


def json_for_script(value: object) -> str:
    """JSON that can sit inside a <script> element."""
    return json.dumps(value, ensure_ascii=False).replace("</", "<\\/")


def render_page(template: str, *, css: list[str], app_js: str, data: dict, **context: Any) -> str:
    """A whole page from its template (which extends `base.html.j2`): the named stylesheets
    and script from the template folder, plotly.js, and `data` inline as the JSON element
    `#spectra-data`, with the toolbar settings under `plotly_config` (a page's script passes
    them to every plot)."""
    return (
        template_environment()
        .get_template(template)
        .render(
            css=Markup("\n").join(asset(name) for name in css),
            app_js=asset(app_js),
            plotly_js=Markup(plotly_js()),
            data=Markup(json_for_script({**data, "plotly_config": PLOTLY_CONFIG})),
            **context,
        )
    )
