"""`python -m deploy alertmanager-config`: the Alertmanager config from its template, URLs from the environment.

Alertmanager reads no environment variables, and its receivers' URLs are secrets of a kind (a webhook URL often
carries its token), so they are kept out of the repository and filled in here: each `${NAME}` in the template
is replaced by that environment variable, and a missing one is an error rather than an empty URL.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from deploy.errors import StackError
from deploy.state import ROOT, STACK_DIR

TEMPLATE = ROOT / "deploy" / "alertmanager" / "alertmanager.template.yml"
DEFAULT_OUT = STACK_DIR / "alertmanager.yml"
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def placeholders(template: str) -> set[str]:
    """The environment variables a template names."""
    return set(PLACEHOLDER.findall(template))


def render_config(template: str, env: Mapping[str, str]) -> str:
    """The template with every `${NAME}` replaced by `env[NAME]`; raises naming every variable not set."""
    missing = sorted(name for name in placeholders(template) if not env.get(name))
    if missing:
        raise StackError(f"set {', '.join(missing)} to render the Alertmanager config")
    for name in placeholders(template):
        if any(c in env[name] for c in "\n\"'") or not env[name].startswith(("http://", "https://")):
            raise StackError(f"{name} must be one http(s) URL")
    return PLACEHOLDER.sub(lambda m: env[m.group(1)], template)


def write_config(out: Path, env: Mapping[str, str] | None = None) -> Path:
    """Render the shipped template into `out` (readable by its owner only: it holds the receivers' URLs)."""
    text = render_config(TEMPLATE.read_text(), os.environ if env is None else env)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.touch(mode=0o600, exist_ok=True)
    out.write_text(text)
    return out
