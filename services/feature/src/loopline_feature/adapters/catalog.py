"""The feature views a deployment serves: every ``<dir>/<name>/v<version>.yaml`` file, parsed once at start."""

from __future__ import annotations

from pathlib import Path

import yaml

from loopline_feature.domain.views import FeatureView, ViewError, parse


class UnknownViewError(LookupError):
    pass


class Catalog:
    def __init__(self, views: list[FeatureView]) -> None:
        self.by_ref = {v.ref: v for v in views}
        self.newest: dict[str, FeatureView] = {}
        for v in sorted(views, key=lambda v: v.version):
            self.newest[v.name] = v

    def get(self, name: str) -> FeatureView:
        """A view by ``name`` (its newest version) or ``name:version``."""
        view = self.by_ref.get(name) if ":" in name else self.newest.get(name)
        if view is None:
            raise UnknownViewError(f"no feature view {name[:64]!r} (known: {', '.join(sorted(self.by_ref))})")
        return view

    def for_source(self, dataset: str) -> list[FeatureView]:
        return [v for v in self.by_ref.values() if v.source == dataset]

    def sources(self) -> list[str]:
        return sorted({v.source for v in self.by_ref.values()})


def load(directory: Path) -> Catalog:
    """Parse every view file under ``directory``; a broken one stops the start with its path and reason."""
    views = []
    for path in sorted(directory.glob("*/v*.yaml")):
        try:
            view = parse(yaml.safe_load(path.read_text()))
        except (yaml.YAMLError, ViewError) as exc:
            raise ViewError(f"{path}: {str(exc).splitlines()[0]}") from exc
        if path.parent.name != view.name or path.stem != f"v{view.version}":
            raise ViewError(f"{path}: the file of view {view.ref} must be {view.name}/v{view.version}.yaml")
        views.append(view)
    if not views:
        raise ViewError(f"no feature view files under {directory}")
    return Catalog(views)


def default_dir() -> Path:
    """``features/`` beside the project (a checkout or an image that copies it), else in the working directory."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "features").is_dir() and (parent / "pyproject.toml").is_file():
            return parent / "features"
    return Path.cwd() / "features"
